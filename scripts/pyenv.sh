#!/usr/bin/env bash
# Creates (idempotently) the Python virtual environment the end-to-end tests
# use to check the gateway's output with reference implementations:
# openapi-spec-validator for /api/v1/openapi.json, prometheus-client's
# parser for /metrics. It lives at target/pyenv; the tests find it there
# (or at $WHIPCORD_PYTHON). Run it directly or source it: either way it
# exports WHIPCORD_PYTHON.
#
# The packages are pinned so a new release cannot change what the tests
# accept from one run to the next.

pyenv_main() {
  local root venv py want
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  venv=$root/target/pyenv
  py=$venv/bin/python
  want=(openapi-spec-validator==0.9.0 prometheus-client==0.26.0)

  # Already there with exactly these versions: nothing to do (no network).
  if [ -x "$py" ] && "$py" - "${want[@]}" <<'EOF' 2>/dev/null; then
import sys
from importlib.metadata import version
sys.exit(0 if all(version(n) == v for n, v in (a.split("==") for a in sys.argv[1:])) else 1)
EOF
    export WHIPCORD_PYTHON=$py
    return 0
  fi

  local base
  base=$(command -v python3) || {
    echo "pyenv.sh: python3 not found" >&2
    return 1
  }
  if [ ! -x "$py" ]; then
    echo "pyenv.sh: creating $venv"
    if ! "$base" -m venv "$venv" 2>/dev/null; then
      # Debian's own python3 keeps venv (ensurepip) in a separate package.
      rm -rf "$venv"
      local sudo=""
      [ "$(id -u)" -eq 0 ] || sudo=sudo
      $sudo apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv &&
        "$base" -m venv "$venv" || {
        echo "pyenv.sh: could not create a venv with $base" >&2
        return 1
      }
    fi
  fi
  echo "pyenv.sh: installing ${want[*]}"
  "$py" -m pip install --quiet --disable-pip-version-check "${want[@]}" || {
    echo "pyenv.sh: pip install failed" >&2
    return 1
  }
  export WHIPCORD_PYTHON=$py
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  pyenv_main
else
  pyenv_main
fi
