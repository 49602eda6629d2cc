#!/usr/bin/env bash
# Installs (with apt-get, idempotently) the system libraries the gateway
# links: FFmpeg's libraries for the in-process Opus→AAC and video
# transcoder (ffmpeg-next binds them through bindgen, which needs libclang).
# Sourced by scripts/run.sh and scripts/test.sh; adds to the caller's
# `need` array when it has one, else installs at once.
build_deps=(libavcodec-dev libavformat-dev libavutil-dev libswresample-dev libswscale-dev
  clang libclang-dev pkg-config)
missing_build_deps() {
  local pkg
  for pkg in "${build_deps[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || echo "$pkg"
  done
}
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}
