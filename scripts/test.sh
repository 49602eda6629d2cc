#!/usr/bin/env bash
# Runs Whipcord's whole test suite on a fresh Debian machine: installs what
# the tests need (idempotently), builds once in release mode, runs formatting
# and lint checks, unit tests, end-to-end tests against the real binary, the
# headless-Chromium browser test and a load-tool smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ARTIFACTS=${ARTIFACTS_DIR:-$ROOT/artifacts}
mkdir -p "$ARTIFACTS"
export CARGO_TERM_COLOR=never

step() { printf '\n==== %s (%ss)\n' "$*" "$SECONDS"; }

# --- system packages the tests use --------------------------------------------
need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# nginx with the RTMP module (and the stream module for TLS in front of it):
# the real RTMP server rtmp-bridge's tests publish to.
{ [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1; } || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] || need+=(libnginx-mod-rtmp)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
# HTTPS tests: pebble (ACME test server), certutil (a browser NSS database
# trusting the test CA), openssl (the browser test's CA and certificate).
[ -x /usr/bin/pebble ] || need+=(pebble)
command -v certutil >/dev/null 2>&1 || need+=(libnss3-tools)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# RTSP ingest tests: a real RTSP server (GStreamer's, through its Python
# bindings, run with the system python3) serving H264/H265 + AAC cameras.
for pkg in gir1.2-gst-rtsp-server-1.0 python3-gst-1.0 gstreamer1.0-plugins-base \
  gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
# The libraries the gateway links (FFmpeg for the transcoder).
. scripts/build-deps.sh
mapfile -t -O "${#need[@]}" need < <(missing_build_deps)
if ((${#need[@]})); then
  step "apt-get install ${need[*]}"
  apt_install "${need[@]}"
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
  step "cargo install cargo-nextest"
  cargo install --locked cargo-nextest
fi

# --- static checks -------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check

# The bundled hls.js is byte-for-byte the pinned npm release.
step "hls.js bundle matches npm"
scripts/update-hls.sh --check

step "cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings

# --- one release build, then every test against it -------------------------------
step "cargo build (release)"
cargo build --release --workspace --all-targets
export WHIPCORD_BIN=$ROOT/target/release/whipcord

step "Python venv for the API checks (target/pyenv)"
. scripts/pyenv.sh

step "unit and end-to-end tests"
cargo nextest run --release --workspace --no-fail-fast

step "browser test (headless Chromium)"
(cd tests/browser && npm ci --no-audit --no-fund --silent)
BROWSER_LOG=$ARTIFACTS/browser-gateway.log
# An RTSP camera (GStreamer's server, H264 + AAC) the gateway pulls.
/usr/bin/python3 tests/rtsp/rtsp_server.py 18454 >"$ARTIFACTS/rtsp-server.log" 2>&1 &
RTSP=$!
for _ in $(seq 1 100); do
  grep -q READY "$ARTIFACTS/rtsp-server.log" 2>/dev/null && break
  sleep 0.1
done
"$WHIPCORD_BIN" --http-listen 127.0.0.1:18480 --media-listen 127.0.0.1:18489 \
  --rtmp-listen 127.0.0.1:18435 --pull browser-rtsp=rtsp://127.0.0.1:18454/cam \
  --data-dir "$(mktemp -d)" >"$BROWSER_LOG" 2>&1 &
GW=$!
trap 'kill $GW $RTSP 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:18480/healthz >/dev/null 2>&1 && break
  sleep 0.1
done
# Every codec a browser can send passes through untouched...
for codec in H264 VP8 VP9 AV1; do
  WHIPCORD_URL=http://127.0.0.1:18480 ARTIFACTS_DIR=$ARTIFACTS/browser-$codec \
    WHIPCORD_STREAM=browser-$codec WHIPCORD_CODEC=$codec \
    timeout 120 node tests/browser/browser_e2e.mjs
  # ...and is recorded: MP4 or WebM by codec, decoding cleanly.
  WHIPCORD_URL=http://127.0.0.1:18480 ARTIFACTS_DIR=$ARTIFACTS/browser-$codec \
    WHIPCORD_STREAM=browser-$codec WHIPCORD_CODEC=$codec \
    timeout 120 node tests/browser/check_recording.mjs
done
# LL-HLS in a real browser: Chromium publishes its fake camera over WHIP
# and plays /hls/{stream}/ with the bundled hls.js (screenshot kept).
WHIPCORD_URL=http://127.0.0.1:18480 ARTIFACTS_DIR=$ARTIFACTS/browser-hls \
  WHIPCORD_STREAM=browser-hls WHIPCORD_PUBLISH=1 WHIPCORD_MEASURE_LATENCY=1 \
  timeout 150 node tests/browser/hls_player.mjs
# RTMP ingest watched in Chromium: FFmpeg publishes H264 + AAC like an
# encoder; the browser decodes the video and the gateway's Opus transcode.
ffmpeg -hide_banner -nostdin -loglevel error -re -f lavfi -i testsrc=size=640x360:rate=30 \
  -re -f lavfi -i "aevalsrc='if(lt(mod(t\,1)\,0.05)\,0.5*sin(2*PI*1000*t)\,0)':s=44100:c=stereo" \
  -t 45 -c:v libx264 -preset veryfast -tune zerolatency -bf 0 -g 60 -pix_fmt yuv420p \
  -c:a aac -b:a 128k -f flv rtmp://127.0.0.1:18435/live/browser-rtmp \
  >"$ARTIFACTS/rtmp-ffmpeg.log" 2>&1 &
FF=$!
WHIPCORD_URL=http://127.0.0.1:18480 ARTIFACTS_DIR=$ARTIFACTS/browser-rtmp \
  WHIPCORD_STREAM=browser-rtmp WHIPCORD_CODEC=H264 \
  timeout 90 node tests/browser/watch_ingest.mjs
kill $FF 2>/dev/null || true; wait $FF 2>/dev/null || true
# An RTSP camera watched in Chromium the same way.
WHIPCORD_URL=http://127.0.0.1:18480 ARTIFACTS_DIR=$ARTIFACTS/browser-rtsp \
  WHIPCORD_STREAM=browser-rtsp WHIPCORD_CODEC=H264 \
  timeout 90 node tests/browser/watch_ingest.mjs
kill $GW $RTSP; wait $GW $RTSP 2>/dev/null || true
trap - EXIT

step "admin panel browser test (Playwright: login, streams, viewers, recordings, restreams, keys)"
# A gateway of its own: the test creates a publish key, which closes its
# stream to anonymous publishers. It starts its own nginx-rtmp.
ADMIN_LOG=$ARTIFACTS/admin-gateway.log
"$WHIPCORD_BIN" --http-listen 127.0.0.1:18580 --media-listen 127.0.0.1:18589 --rtmp false \
  --data-dir "$(mktemp -d)" --admin-password admin-e2e-secret >"$ADMIN_LOG" 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:18580/healthz >/dev/null 2>&1 && break
  sleep 0.1
done
WHIPCORD_URL=http://127.0.0.1:18580 WHIPCORD_ADMIN_PASSWORD=admin-e2e-secret \
  ARTIFACTS_DIR=$ARTIFACTS/browser-admin timeout 300 node tests/browser/admin_e2e.mjs
kill $GW; wait $GW 2>/dev/null || true
trap - EXIT

step "HTTPS browser test (headless Chromium trusting a test CA)"
# A test CA and a certificate for localhost, the gateway serving it on its
# HTTP port; Chromium trusts the CA through its NSS database and publishes
# and watches over https://localhost.
TLS_DIR=$(mktemp -d)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=Whipcord browser test CA" -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null
openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
  -CAcreateserial -days 2 -out "$TLS_DIR/server.pem" 2>/dev/null -extfile <(printf '%s\n' \
  'subjectAltName=DNS:localhost,IP:127.0.0.1' 'extendedKeyUsage=serverAuth' 'basicConstraints=critical,CA:FALSE')
HTTPS_LOG=$ARTIFACTS/https-gateway.log
"$WHIPCORD_BIN" --http-listen 127.0.0.1:18680 --media-listen 127.0.0.1:18689 --rtmp false \
  --data-dir "$TLS_DIR/data" --tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server.key" \
  >"$HTTPS_LOG" 2>&1 &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf --cacert "$TLS_DIR/ca.pem" https://localhost:18680/healthz >/dev/null 2>&1 && break
  sleep 0.1
done
WHIPCORD_URL=https://localhost:18680 WHIPCORD_CA_FILE=$TLS_DIR/ca.pem \
  ARTIFACTS_DIR=$ARTIFACTS/browser-https WHIPCORD_STREAM=browser-https \
  timeout 150 node tests/browser/https_e2e.mjs
kill $GW; wait $GW 2>/dev/null || true
trap - EXIT
rm -rf "$TLS_DIR"

step "load tool smoke test (5 viewers)"
target/release/load --spawn --viewers 5 --duration 8

# Only that it runs end to end and its recordings check out: speed is
# measured by the full benchmark (BENCHMARKS.md), never by a timed test.
step "recording benchmark smoke test (2 streams)"
target/release/record_bench --streams 2 --seconds 3 --warmup 2 --target-pct 100

# The restream benchmark end to end (RTMP push with Opus→AAC, VP8→H264
# transcode, nginx-rtmp): that it runs and its figures come out, not a
# timing gate (BENCHMARKS.md, "Restreaming and HLS").
step "restream benchmark smoke test (1 stream)"
target/release/restream_bench --streams 1 --seconds 3 --warmup 3 --target-pct 100

step "done"
echo "all test stages passed in ${SECONDS}s"
