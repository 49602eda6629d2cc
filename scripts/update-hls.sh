#!/usr/bin/env bash
# Vendors hls.js (Apache-2.0) from npm into gateway/assets/vendor/, where the
# gateway embeds it into its binary, so the HLS player page needs no CDN and
# `cargo build` needs no npm.
#
#   scripts/update-hls.sh           npm ci in web/ (version pinned by
#                                   web/package-lock.json), then copy
#                                   dist/hls.min.js and LICENSE into
#                                   gateway/assets/vendor/ (commit them)
#   scripts/update-hls.sh --check   npm ci in web/, then compare the sha256 of
#                                   the npm copies with the committed copies;
#                                   exits 1 on any mismatch or missing file
#
# To move to another hls.js version: in web/, run
# `npm install --save-exact hls.js@X.Y.Z`, then this script, and commit
# web/package*.json and gateway/assets/vendor/ together.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=update
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

command -v npm >/dev/null 2>&1 || { echo "update-hls: npm is not installed" >&2; exit 1; }
(cd web && npm ci --no-audit --no-fund --silent)

pkg=web/node_modules/hls.js
version=$(node -p "require('./$pkg/package.json').version")
vendor=gateway/assets/vendor
# npm file -> committed file
files=(
  "$pkg/dist/hls.min.js:$vendor/hls.min.js"
  "$pkg/LICENSE:$vendor/hls.js.LICENSE"
)

sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ "$mode" = update ]; then
  mkdir -p "$vendor"
  for f in "${files[@]}"; do
    src=${f%%:*} dst=${f#*:}
    cp "$src" "$dst"
    echo "$(sha "$dst")  $dst  (hls.js $version)"
  done
  exit 0
fi

bad=0
for f in "${files[@]}"; do
  src=${f%%:*} dst=${f#*:}
  if [ ! -f "$dst" ]; then
    echo "update-hls --check: $dst is missing; run scripts/update-hls.sh" >&2
    bad=1
    continue
  fi
  want=$(sha "$src") have=$(sha "$dst")
  if [ "$want" != "$have" ]; then
    echo "update-hls --check: $dst (sha256 $have) differs from npm hls.js $version $src (sha256 $want); run scripts/update-hls.sh" >&2
    bad=1
  else
    echo "ok  $have  $dst  (= npm hls.js $version)"
  fi
done
exit $bad
