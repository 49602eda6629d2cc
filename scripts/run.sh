#!/usr/bin/env bash
# Builds and runs the gateway on a fresh Debian machine: installs the
# system libraries it links (if missing), then `cargo run --release`.
# Arguments go to whipcord (e.g. scripts/run.sh --config whipcord.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/build-deps.sh
. scripts/build-deps.sh
mapfile -t missing < <(missing_build_deps)
if ((${#missing[@]})); then
  echo "installing build dependencies: ${missing[*]}" >&2
  apt_install "${missing[@]}"
fi
exec cargo run --release -p gateway -- "$@"
