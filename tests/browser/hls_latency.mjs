#!/usr/bin/env node
// Whipcord LL-HLS glass-to-player latency, measured from time-stamped frames.
//
// One headless Chromium, so publisher and player read the same clock:
//  - publisher page (on the gateway's origin): a 640x360 canvas redrawn every animation frame
//    with the current time (performance.timeOrigin + performance.now(), ms) as 2 rows of 24
//    black/white blocks (40 bits of ms + CRC-8), plus a moving ball and the time as text.
//    canvas.captureStream(30) + a WebAudio oscillator are published over WHIP with a plain
//    RTCPeerConnection (H264 preferred via setCodecPreferences, so the stream is HLS-able).
//    The block decoder is self-checked first on the publisher's own canvas (direct, rescaled
//    and JPEG-compressed), so a failure to read stamps later is not a decoder bug.
//  - player page: ${WHIPCORD_URL}/hls/{stream}/ (hls.js, lowLatencyMode). Once
//    whipcordHls.state === 'playing', every ~250 ms (on requestVideoFrameCallback, i.e. on a
//    freshly presented frame) the <video> is drawn into a canvas and the stamp read back;
//    latency = expected display time of that frame − stamp. Decodes failing the CRC (or with a
//    block too close to mid-grey) are rejected. hls.js's own latency() (live edge − playhead)
//    and pdtLatency() (now − PROGRAM-DATE-TIME at the playhead) are sampled alongside.
//
//   WHIPCORD_URL      gateway base URL                              (default http://127.0.0.1:8080)
//   WHIPCORD_STREAM   stream name to publish and play               (default latency)
//   WHIPCORD_TOKEN    bearer token for WHIP and the player           (optional)
//   ARTIFACTS_DIR     report + screenshots                           (default ./artifacts)
//   LATENCY_SECONDS   how long to sample once playing                (default 20)
//   LATENCY_MAX_S     fail when the median glass-to-player latency exceeds this (optional)
//   LATENCY_PREWARM_S request the playlist this many seconds before opening the player, so HLS
//                     is already being produced when hls.js starts (default 0: the player's own
//                     first request starts it, as for a real first viewer)
//
// Writes ${ARTIFACTS_DIR}/hls_latency.json, hls-latency.png (player), hls-latency-publisher.png
// and hls_latency_console.log. Exit 0 = measured (and within LATENCY_MAX_S if set);
// 1 = could not measure (self-check failed, no playback, no valid stamps) or over LATENCY_MAX_S.
//
// Notes: the gateway starts HLS for a stream on its first playlist request and then asks the
// publisher for a keyframe every 2 s (segments start at keyframes), so the player is opened only
// after the publisher is connected, and playback starts a few seconds later.
import {
  BrowserTest, TestFailure, bounded, commonEnv, elapsedS, fail, firstLine, gotoOrFail, log, runTest, sleep,
  waitForHlsPlaying, withToken,
} from './lib.mjs';

const { base: BASE, artifacts: ARTIFACTS, stream: STREAM, token: TOKEN } = commonEnv({ defaultStream: 'latency' });
const SECONDS = Math.max(1, Number(process.env.LATENCY_SECONDS || 20) || 20);
const MAX_S = process.env.LATENCY_MAX_S ? Number(process.env.LATENCY_MAX_S) : null;
const PREWARM_S = Math.min(60, Math.max(0, Number(process.env.LATENCY_PREWARM_S || 0) || 0));
const SAMPLE_MS = 250;
const FPS = 30;
const CONNECT_TIMEOUT_MS = 20_000;  // WHIP POST + ICE/DTLS
const PLAY_TIMEOUT_MS = 60_000;     // player page loaded -> whipcordHls.state === 'playing'
const OVERALL_TIMEOUT_MS = 150_000 + SECONDS * 1000;

// Segment and part requests are many and uninteresting; playlists and WHIP are worth a line.
const session = new BrowserTest({
  artifacts: ARTIFACTS,
  logResponse: (url) => /\/(whip|hls)\//.test(url) && !/\/hls\/[^/]+\/(seg|part)/.test(url),
});
const report = {
  base: BASE, stream: STREAM, seconds: SECONDS, sampleEveryMs: SAMPLE_MS, maxS: MAX_S, ok: false, steps: [],
};

// ---------------------------------------------------------------------------------------------
// In-page stamp codec, installed in both pages (serialised by playwright, so self-contained).
// 48 bits = 40 bits of (ms mod 2^40) + CRC-8 (poly 0x07, init 0xff, xor-out 0x5a: an all-black
// or all-white code area is no valid stamp) of those 5 bytes, MSB first, row-major over
// 2 rows x 24 columns of 24x44 px blocks at (32,16) of a 640x360 frame. Positions are read
// relative to the frame size, so a rescaled stream decodes too.
function installStamp() {
  const W = 640, H = 360, COLS = 24, ROWS = 2, X0 = 32, Y0 = 16, BW = 24, BH = 44;
  const BITS = COLS * ROWS, MOD = 2 ** 40, MIN_MARGIN = 48; // luma must be <= 80 or >= 176
  const crc8 = (bytes) => {
    let c = 0xff;
    for (const b of bytes) {
      c ^= b;
      for (let i = 0; i < 8; i++) c = c & 0x80 ? ((c << 1) ^ 0x07) & 0xff : (c << 1) & 0xff;
    }
    return c ^ 0x5a;
  };
  function encode(ms) {
    const v = Math.floor(ms) % MOD;
    const hi = Math.floor(v / 2 ** 32), lo = v - hi * 2 ** 32;
    const bytes = [hi, Math.floor(lo / 2 ** 24) & 255, Math.floor(lo / 2 ** 16) & 255, Math.floor(lo / 2 ** 8) & 255, lo & 255];
    bytes.push(crc8(bytes));
    const bits = [];
    for (const b of bytes) for (let i = 7; i >= 0; i--) bits.push((b >> i) & 1);
    return bits;
  }
  function draw(ctx, ms, frame) {
    ctx.fillStyle = '#303848';
    ctx.fillRect(0, 0, W, H);
    // moving content (bottom half), so the encoder sees motion outside the code area too
    const ph = (ms % 4000) / 4000;
    ctx.fillStyle = `hsl(${Math.floor(ph * 360)},80%,55%)`;
    ctx.beginPath();
    ctx.arc(40 + (W - 80) * (0.5 + 0.5 * Math.sin(ph * 2 * Math.PI)), 280, 36, 0, 2 * Math.PI);
    ctx.fill();
    ctx.fillStyle = '#c0c040';
    ctx.fillRect(Math.floor(ph * W), 330, 60, 20);
    // quiet zone + blocks
    ctx.fillStyle = '#808080';
    ctx.fillRect(X0 - 8, Y0 - 8, COLS * BW + 16, ROWS * BH + 16);
    const bits = encode(ms);
    for (let i = 0; i < BITS; i++) {
      ctx.fillStyle = bits[i] ? '#ffffff' : '#000000';
      ctx.fillRect(X0 + (i % COLS) * BW, Y0 + Math.floor(i / COLS) * BH, BW, BH);
    }
    ctx.fillStyle = '#ffffff';
    ctx.font = 'bold 26px monospace';
    ctx.fillText(new Date(ms).toISOString().slice(11, 23) + '  #' + frame, X0, Y0 + ROWS * BH + 44);
  }
  /** Decode an ImageData of any size showing a whole frame. */
  function decode(img) {
    const sx = img.width / W, sy = img.height / H, d = img.data;
    const bits = [];
    let minMargin = 255;
    for (let i = 0; i < BITS; i++) {
      // inner half of the block, away from ringing at its edges
      const bx = X0 + (i % COLS) * BW, by = Y0 + Math.floor(i / COLS) * BH;
      const x0 = Math.round((bx + BW * 0.25) * sx), x1 = Math.max(x0 + 1, Math.round((bx + BW * 0.75) * sx));
      const y0 = Math.round((by + BH * 0.25) * sy), y1 = Math.max(y0 + 1, Math.round((by + BH * 0.75) * sy));
      let sum = 0, n = 0;
      for (let y = y0; y < y1; y++) {
        for (let x = x0; x < x1; x++) {
          const o = (y * img.width + x) * 4;
          sum += 0.299 * d[o] + 0.587 * d[o + 1] + 0.114 * d[o + 2];
          n++;
        }
      }
      const l = n ? sum / n : 128;
      minMargin = Math.min(minMargin, Math.abs(l - 128));
      bits.push(l >= 128 ? 1 : 0);
    }
    if (minMargin < MIN_MARGIN) return { ok: false, reason: 'ambiguous block', minMargin };
    const bytes = [];
    for (let b = 0; b < 6; b++) {
      let x = 0;
      for (let i = 0; i < 8; i++) x = (x << 1) | bits[b * 8 + i];
      bytes.push(x);
    }
    if (crc8(bytes.slice(0, 5)) !== bytes[5]) return { ok: false, reason: 'crc mismatch', minMargin };
    const v = bytes[0] * 2 ** 32 + ((bytes[1] << 24) >>> 0) + (bytes[2] << 16) + (bytes[3] << 8) + bytes[4];
    // unwrap (mod 2^40) to the value nearest to now
    const now = performance.timeOrigin + performance.now();
    let diff = (((now - v) % MOD) + MOD) % MOD;
    if (diff > MOD / 2) diff -= MOD;
    return { ok: true, ms: Math.round(now - diff), minMargin };
  }
  window.__stamp = { W, H, draw, decode, encode };
}

// ---------------------------------------------------------------------------------------------
// Publisher page, step 1: decoder self-check, offline (no network, no encoder involved).
async function publisherSelfCheck() {
  const S = window.__stamp;
  const now = () => performance.timeOrigin + performance.now();
  const out = {};
  // round trips: direct, rescaled, lossy (JPEG)
  const scratch = document.createElement('canvas');
  const sctx = scratch.getContext('2d', { willReadFrequently: true });
  const mod40 = (x) => ((x % 2 ** 40) + 2 ** 40) % 2 ** 40;
  const roundTrip = async (ms, how) => {
    const c = document.createElement('canvas');
    c.width = S.W; c.height = S.H;
    S.draw(c.getContext('2d'), ms, 0);
    let src = c, w = S.W, h = S.H;
    if (how === 'half') { w = 320; h = 180; }
    if (how === 'double') { w = 1280; h = 720; }
    if (how === 'jpeg') {
      const img = new Image();
      img.src = c.toDataURL('image/jpeg', 0.4);
      await img.decode();
      src = img;
    }
    scratch.width = w; scratch.height = h;
    sctx.drawImage(src, 0, 0, w, h);
    const d = S.decode(sctx.getImageData(0, 0, w, h));
    // values far from now unwrap to their congruent value nearest to now: compare mod 2^40
    return d.ok && mod40(d.ms) === mod40(Math.floor(ms));
  };
  const values = [Math.floor(now()), 0, 1, 2 ** 40 - 1, 2 ** 39 + 12345];
  for (let i = 0; i < 15; i++) values.push(Math.floor(now() - Math.random() * 1e9));
  for (const how of ['direct', 'half', 'double', 'jpeg']) {
    let pass = 0;
    for (const v of values) if (await roundTrip(v, how).catch(() => false)) pass++;
    out[how] = `${pass}/${values.length}`;
  }
  // ...and rejects a frame with one block flipped (CRC-8 catches every 1-bit error) or no code
  {
    let rejected = 0;
    scratch.width = S.W; scratch.height = S.H;
    for (const v of values) {
      S.draw(sctx, v, 0);
      const i = Math.floor(Math.random() * 48);
      const bit = S.encode(v)[i];
      sctx.fillStyle = bit ? '#000000' : '#ffffff';
      sctx.fillRect(32 + (i % 24) * 24, 16 + Math.floor(i / 24) * 44, 24, 44);
      if (!S.decode(sctx.getImageData(0, 0, S.W, S.H)).ok) rejected++;
    }
    for (const fill of ['#000000', '#ffffff', '#808080']) {
      sctx.fillStyle = fill;
      sctx.fillRect(0, 0, S.W, S.H);
      if (!S.decode(sctx.getImageData(0, 0, S.W, S.H)).ok) rejected++;
    }
    out.rejects = `${rejected}/${values.length + 3}`;
  }
  return out;
}

// Publisher page, step 2: live canvas (+ check it decodes), oscillator, WHIP publish.
async function publisherMain({ url, token, fps, connectTimeoutMs }) {
  const S = window.__stamp;
  const now = () => performance.timeOrigin + performance.now();
  const out = {};
  document.body.innerHTML = '';
  document.body.style.cssText = 'margin:0;background:#111;color:#ddd;font:14px monospace';
  const canvas = document.createElement('canvas');
  canvas.width = S.W; canvas.height = S.H;
  document.body.append(canvas);
  const status = document.createElement('pre');
  document.body.append(status);
  const ctx = canvas.getContext('2d');

  // ---- live canvas ----
  let frame = 0, lastMs = 0, drawn = [];
  const paint = () => {
    const ms = now();
    S.draw(ctx, ms, frame++);
    lastMs = Math.floor(ms);
    drawn.push(performance.now());
    if (drawn.length > 120) drawn.shift();
  };
  let rafAlive = false;
  const loop = () => { rafAlive = true; paint(); requestAnimationFrame(loop); };
  requestAnimationFrame(loop);
  await new Promise((r) => setTimeout(r, 500));
  if (!rafAlive) setInterval(paint, Math.floor(1000 / 60)); // rAF not running (hidden page?)
  out.drawLoop = rafAlive ? 'requestAnimationFrame' : 'setInterval';
  // live self-check: the visible canvas decodes to what was last drawn
  {
    const scratch = document.createElement('canvas');
    const sctx = scratch.getContext('2d', { willReadFrequently: true });
    scratch.width = S.W; scratch.height = S.H;
    const expect = lastMs;
    sctx.drawImage(canvas, 0, 0);
    const d = S.decode(sctx.getImageData(0, 0, S.W, S.H));
    if (!(d.ok && d.ms === expect)) throw new Error(`stamp self-check on the live canvas failed: ${JSON.stringify(d)}, drew ${expect}`);
    out.liveSelfCheck = 'ok';
  }
  window.__drawFps = () => (drawn.length > 1 ? (drawn.length - 1) * 1000 / (drawn[drawn.length - 1] - drawn[0]) : 0);
  out.drawFps = window.__drawFps();

  // ---- media: canvas video + oscillator audio ----
  const vstream = canvas.captureStream(fps);
  const vtrack = vstream.getVideoTracks()[0];
  try { vtrack.contentHint = 'detail'; } catch (_) { /* ignore */ }
  const ac = new AudioContext();
  const osc = ac.createOscillator();
  const gain = ac.createGain();
  gain.gain.value = 0.1;
  osc.frequency.value = 440;
  const dest = ac.createMediaStreamDestination();
  osc.connect(gain).connect(dest);
  osc.start();
  await Promise.race([ac.resume(), new Promise((r) => setTimeout(r, 2000))]);
  out.audioContext = ac.state;
  const atrack = dest.stream.getAudioTracks()[0];
  const ms = new MediaStream([vtrack, atrack]);

  const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  const vt = pc.addTransceiver(vtrack, { direction: 'sendonly', streams: [ms] });
  pc.addTransceiver(atrack, { direction: 'sendonly', streams: [ms] });
  // H264 first: packetization-mode=1 and constrained baseline (42e0..) preferred
  const caps = (RTCRtpSender.getCapabilities && RTCRtpSender.getCapabilities('video')) || { codecs: [] };
  const rank = (c) => {
    const f = c.sdpFmtpLine || '';
    return (/packetization-mode=1/.test(f) ? 0 : 4) + (/profile-level-id=42e0/i.test(f) ? 0 : 2) + (/profile-level-id=42/i.test(f) ? 0 : 1);
  };
  const h264 = caps.codecs.filter((c) => /^video\/h264$/i.test(c.mimeType)).sort((a, b) => rank(a) - rank(b));
  if (!h264.length) throw new Error('this Chromium cannot send H264');
  const aux = caps.codecs.filter((c) => /^video\/(rtx|red|ulpfec|flexfec-03)$/i.test(c.mimeType));
  vt.setCodecPreferences(h264.concat(aux));

  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((r) => {
    if (pc.iceGatheringState === 'complete') return r();
    const t = setTimeout(r, 2000);
    pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') { clearTimeout(t); r(); } });
  });
  const headers = { 'Content-Type': 'application/sdp' };
  if (token) headers.Authorization = 'Bearer ' + token;
  const res = await fetch(url, {
    method: 'POST', headers, body: pc.localDescription.sdp, cache: 'no-store', signal: AbortSignal.timeout(15000),
  });
  const answer = await res.text();
  if (res.status !== 201) throw new Error(`WHIP POST ${url}: HTTP ${res.status}: ${answer.trim().slice(0, 300)}`);
  const loc = res.headers.get('Location');
  out.resource = loc ? new URL(loc, location.href).href : null;
  await pc.setRemoteDescription({ type: 'answer', sdp: answer });
  const state = await new Promise((r) => {
    const chk = () => {
      if (pc.connectionState === 'connected' || pc.connectionState === 'failed') { clearTimeout(t); r(pc.connectionState); }
    };
    const t = setTimeout(() => r(`timeout (${pc.connectionState})`), connectTimeoutMs);
    pc.addEventListener('connectionstatechange', chk);
    chk();
  });
  out.connectionState = state;
  window.__pub = { pc, resource: out.resource, token, ac };
  // publisher stats, also shown under the canvas
  let prev = null;
  window.__pubStats = async () => {
    const rep = await pc.getStats();
    let v = null, bytes = 0;
    const codecs = new Map();
    rep.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video' && (!v || (s.bytesSent || 0) > (v.bytesSent || 0))) v = s;
      if (s.type === 'outbound-rtp') bytes += s.bytesSent || 0;
      if (s.type === 'codec') codecs.set(s.id, s);
    });
    const t = performance.now();
    const kbps = prev ? Math.round((bytes - prev.bytes) * 8 / (t - prev.t)) : null;
    prev = { bytes, t };
    const c = v && codecs.get(v.codecId);
    const st = {
      codec: c ? `${c.mimeType} ${c.sdpFmtpLine || ''}`.trim() : null,
      encoder: v?.encoderImplementation || null,
      width: v?.frameWidth || 0, height: v?.frameHeight || 0, fps: v?.framesPerSecond || 0,
      framesEncoded: v?.framesEncoded || 0, keyFramesEncoded: v?.keyFramesEncoded || 0,
      pliCount: v?.pliCount || 0, firCount: v?.firCount || 0, nackCount: v?.nackCount || 0,
      qualityLimitationReason: v?.qualityLimitationReason || null, kbpsSinceLast: kbps,
      drawFps: Math.round(window.__drawFps() * 10) / 10,
    };
    status.textContent = JSON.stringify(st, null, 1);
    return st;
  };
  return out;
}

// ---------------------------------------------------------------------------------------------
// Player sampler (in page): every ~gapMs read the stamp of a freshly presented frame.
function playerSample({ durationMs, gapMs }) {
  const S = window.__stamp;
  const h = window.whipcordHls;
  const v = document.querySelector('#video');
  const c = document.createElement('canvas');
  c.width = S.W; c.height = S.H;
  const ctx = c.getContext('2d', { willReadFrequently: true });
  const wall = (t) => performance.timeOrigin + t;
  const samples = [];
  const t0 = performance.now();
  const tEnd = t0 + durationMs;
  let last = -1e9, rvfc = 0, done = false;
  const targetOf = () => {
    const m = /\(target ([\d.]+) s\)/.exec(document.querySelector('#stats')?.textContent || '');
    return m ? Number(m[1]) : null;
  };
  const take = (displayAt, via) => {
    const readAt = wall(performance.now());
    let d;
    try {
      ctx.drawImage(v, 0, 0, S.W, S.H);
      d = S.decode(ctx.getImageData(0, 0, S.W, S.H));
    } catch (e) { d = { ok: false, reason: 'read failed: ' + e.message }; }
    let ahead = null;
    for (let i = 0; i < v.buffered.length; i++) {
      if (v.buffered.start(i) <= v.currentTime + 0.1 && v.currentTime <= v.buffered.end(i)) ahead = v.buffered.end(i) - v.currentTime;
    }
    const at = displayAt ?? readAt;
    samples.push({
      t: Math.round(performance.now() - t0), via, ok: d.ok, reason: d.ok ? undefined : d.reason,
      stamp: d.ok ? d.ms : null,
      latencyMs: d.ok ? Math.round(at - d.ms) : null,
      readLatencyMs: d.ok ? Math.round(readAt - d.ms) : null,
      minMargin: d.minMargin === undefined ? null : Math.round(d.minMargin),
      hlsLatency: h.latency(), pdtLatency: h.pdtLatency ? h.pdtLatency() : null, targetLatency: targetOf(),
      rate: v.playbackRate, currentTime: v.currentTime, bufferAhead: ahead,
      state: h.state, width: v.videoWidth, height: v.videoHeight,
    });
  };
  return new Promise((resolve) => {
    const finish = () => {
      if (done) return;
      done = true;
      clearInterval(watchdog);
      resolve({ samples, rvfcCallbacks: rvfc, startedAt: Math.round(t0) });
    };
    if (v.requestVideoFrameCallback) {
      const cb = (_now, md) => {
        if (done) return;
        rvfc++;
        if (performance.now() >= tEnd) return finish();
        if (performance.now() - last >= gapMs) {
          last = performance.now();
          take(wall(md.expectedDisplayTime), 'rvfc');
        }
        v.requestVideoFrameCallback(cb);
      };
      v.requestVideoFrameCallback(cb);
    }
    // no presented frames for a while (stall, or no rVFC): sample anyway, latency vs. now
    const watchdog = setInterval(() => {
      if (performance.now() >= tEnd) return finish();
      if (performance.now() - last >= gapMs * 2) {
        last = performance.now();
        take(null, 'timer');
      }
    }, Math.floor(gapMs / 2));
  });
}

// ---------------------------------------------------------------------------------------------
const pct = (sorted, p) => {
  if (!sorted.length) return null;
  const i = (sorted.length - 1) * p, lo = Math.floor(i), hi = Math.ceil(i);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (i - lo);
};
const r3 = (x) => (x === null || x === undefined ? null : Math.round(x * 1000) / 1000);
function summary(xs) {
  const s = xs.filter((x) => typeof x === 'number' && isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return { count: 0 };
  return {
    count: s.length, median: r3(pct(s, 0.5)), p10: r3(pct(s, 0.1)), p90: r3(pct(s, 0.9)),
    min: r3(s[0]), max: r3(s[s.length - 1]), mean: r3(s.reduce((a, b) => a + b, 0) / s.length),
  };
}

/** Median of (timeOrigin + now − Date.now()) in a page: its high-res clock vs. the system clock. */
const clockOffset = (page) => page.evaluate(() => {
  const xs = [];
  for (let i = 0; i < 21; i++) xs.push(performance.timeOrigin + performance.now() - Date.now());
  xs.sort((a, b) => a - b);
  return xs[10];
});

async function run() {
  log(`gateway ${BASE}, stream "${STREAM}", ${SECONDS} s of samples, artifacts ${ARTIFACTS}`);
  const browser = await session.launch({ unthrottled: true, executablePath: process.env.CHROMIUM || '/usr/bin/chromium' });
  report.browser = browser.version();

  // ---- publisher: on the gateway's origin so the WHIP POST is same-origin ----
  const pub = await session.newPage('publisher');
  await gotoOrFail(pub, `${BASE}/healthz`);
  await pub.evaluate(installStamp);
  const sc = await bounded(pub.evaluate(publisherSelfCheck), 20_000, 'decoder self-check');
  report.selfCheck = sc;
  log(`stamp decoder self-check: ${Object.entries(sc).map(([k, x]) => `${k} ${x}`).join(', ')}`);
  if (Object.values(sc).some((x) => !/^(\d+)\/\1$/.test(x))) fail(`stamp decoder self-check failed: ${JSON.stringify(sc)}`);
  report.steps.push('decoder self-check passed');
  const whipUrl = `${BASE}/whip/${encodeURIComponent(STREAM)}`;
  let p;
  try {
    p = await bounded(
      pub.evaluate(publisherMain, { url: whipUrl, token: TOKEN, fps: FPS, connectTimeoutMs: CONNECT_TIMEOUT_MS }),
      CONNECT_TIMEOUT_MS + 30_000, 'publisher setup');
  } catch (e) {
    if (e instanceof TestFailure) throw e;
    fail(`publisher failed: ${firstLine(e)}`);
  }
  report.publisher = p;
  report.steps.push('live canvas decodes');
  log(`publisher: draw loop ${p.drawLoop} at ${p.drawFps.toFixed(1)} fps, audio ${p.audioContext}, WHIP ${p.resource || '(no Location)'} -> ${p.connectionState}`);
  if (p.connectionState !== 'connected') fail(`publisher did not connect: ${p.connectionState}`);
  report.steps.push('publisher connected');
  await sleep(1000);
  const ps0 = await bounded(pub.evaluate(() => window.__pubStats()), 5000, 'publisher stats');
  log(`publisher: ${ps0.codec} (${ps0.encoder}), ${ps0.width}x${ps0.height}, ${ps0.framesEncoded} frames encoded`);
  if (!/h264/i.test(ps0.codec || '')) log(`WARNING: publisher is not sending H264 (${ps0.codec}); HLS may refuse it`);

  // ---- player ----
  const page = await session.newPage('player');
  await page.addInitScript(installStamp);
  // stalls and resumes of the <video>, from page load (media events do not bubble: capture them)
  await page.addInitScript(() => {
    window.__mediaEvents = [];
    for (const ev of ['waiting', 'playing', 'stalled', 'seeking']) {
      document.addEventListener(ev, (e) => {
        if (e.target instanceof HTMLMediaElement) window.__mediaEvents.push({ ev, at: Math.round(performance.now()), t: e.target.currentTime });
      }, true);
    }
  });
  if (PREWARM_S > 0) {
    const pl = `${BASE}/hls/${encodeURIComponent(STREAM)}/index.m3u8`;
    const r = await fetch(pl, { headers: TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {}, signal: AbortSignal.timeout(10_000) })
      .catch((e) => ({ status: firstLine(e) }));
    log(`prewarm: GET ${pl} -> ${r.status}; opening the player in ${PREWARM_S} s`);
    await sleep(PREWARM_S * 1000);
    report.prewarmS = PREWARM_S;
  }
  const url = withToken(`${BASE}/hls/${encodeURIComponent(STREAM)}/`, TOKEN);
  const tOpen = Date.now();
  await gotoOrFail(page, url);
  const info = await page.evaluate(() => ({
    api: typeof window.whipcordHls === 'object' && window.whipcordHls !== null,
    hlsVersion: typeof window.Hls === 'function' ? window.Hls.version : null,
    engine: window.whipcordHls?.engine ?? null,
    stamp: typeof window.__stamp === 'object',
  }));
  report.player = info;
  if (!info.api) fail(`${url} does not expose window.whipcordHls`);
  if (!info.stamp) fail('stamp decoder not installed in the player page');
  log(`player: hls.js ${info.hlsVersion}, engine ${info.engine}; waiting up to ${PLAY_TIMEOUT_MS / 1000} s for 'playing'`);
  const played = await waitForHlsPlaying(page, { timeoutMs: PLAY_TIMEOUT_MS, pollingMs: 100 });
  if (!played) {
    const st = await page.evaluate(() => ({ state: window.whipcordHls.state, error: window.whipcordHls.error }))
      .catch((e) => ({ evaluate: firstLine(e) }));
    fail(`HLS player did not reach 'playing' within ${PLAY_TIMEOUT_MS / 1000} s: ${JSON.stringify(st)}`);
  }
  report.startupS = (Date.now() - tOpen) / 1000;
  log(`player: playing after ${report.startupS.toFixed(1)} s`);
  report.steps.push('player playing');

  // clocks: both pages' performance.timeOrigin + now() against the system clock
  const [offPub, offPlay] = await Promise.all([clockOffset(pub), clockOffset(page)]);
  report.clock = { publisherOffsetMs: r3(offPub), playerOffsetMs: r3(offPlay), skewMs: r3(offPub - offPlay) };
  log(`clock: performance.timeOrigin+now − Date.now(): publisher ${offPub.toFixed(2)} ms, player ${offPlay.toFixed(2)} ms`);

  log(`sampling for ${SECONDS} s (every ~${SAMPLE_MS} ms)…`);
  const res = await bounded(page.evaluate(playerSample, { durationMs: SECONDS * 1000, gapMs: SAMPLE_MS }),
    SECONDS * 1000 + 15_000, 'player sampler');
  const psEnd = await bounded(pub.evaluate(() => window.__pubStats()), 5000, 'publisher stats').catch(() => null);
  report.publisherStats = { atStart: ps0, atEnd: psEnd };

  const samples = res.samples;
  const good = samples.filter((s) => s.ok);
  const rejected = samples.length - good.length;
  const reasons = {};
  for (const s of samples) if (!s.ok) reasons[s.reason] = (reasons[s.reason] || 0) + 1;
  report.rvfcCallbacks = res.rvfcCallbacks;
  // media events since the player page loaded, with times relative to the start of sampling
  report.mediaEvents = await page.evaluate(() => window.__mediaEvents).catch(() => []);
  report.samplingStartedAtMs = res.startedAt;
  const stallsDuring = report.mediaEvents.filter((e) => e.ev === 'waiting' && e.at >= res.startedAt).length;
  report.stallsDuringSampling = stallsDuring;
  report.samplesTaken = samples.length;
  report.rejected = { count: rejected, reasons };
  report.glassToPlayerS = summary(good.map((s) => s.latencyMs / 1000));
  report.glassToReadS = summary(good.map((s) => s.readLatencyMs / 1000));
  report.hlsJsLatencyS = summary(samples.map((s) => s.hlsLatency));
  report.pdtLatencyS = summary(samples.map((s) => s.pdtLatency));
  report.targetLatencyS = summary(samples.map((s) => s.targetLatency));
  report.playbackRate = summary(samples.map((s) => s.rate));
  report.bufferAheadS = summary(samples.map((s) => s.bufferAhead));
  // settling: per 5-second window
  const windows = [];
  for (let w = 0; w * 5000 < SECONDS * 1000; w++) {
    const inW = samples.filter((s) => s.t >= w * 5000 && s.t < (w + 1) * 5000);
    const g = summary(inW.filter((s) => s.ok).map((s) => s.latencyMs / 1000));
    windows.push({
      fromS: w * 5, toS: Math.min((w + 1) * 5, SECONDS), count: g.count, glassMedianS: g.median ?? null,
      hlsJsMedianS: summary(inW.map((s) => s.hlsLatency)).median ?? null,
      pdtMedianS: summary(inW.map((s) => s.pdtLatency)).median ?? null,
      maxRate: inW.length ? Math.max(...inW.map((s) => s.rate)) : null,
    });
  }
  report.windows = windows;
  report.samples = samples;

  const g = report.glassToPlayerS;
  log(`samples: ${samples.length} taken, ${good.length} valid, ${rejected} rejected ${JSON.stringify(reasons)}; rVFC callbacks ${res.rvfcCallbacks}; stalls ('waiting') while sampling: ${stallsDuring}`);
  const fmt = (x, u = ' s') => (x && x.count ? `median ${x.median.toFixed(3)}${u}, p10 ${x.p10.toFixed(3)}, p90 ${x.p90.toFixed(3)}, min ${x.min.toFixed(3)}, max ${x.max.toFixed(3)} (n=${x.count})` : 'none');
  log(`glass-to-player latency:          ${fmt(g)}`);
  log(`hls.js latency (edge − playhead): ${fmt(report.hlsJsLatencyS)}`);
  log(`now − PROGRAM-DATE-TIME:          ${fmt(report.pdtLatencyS)}`);
  log(`hls.js target latency:            ${fmt(report.targetLatencyS)}`);
  log(`playback rate:                    ${fmt(report.playbackRate, '×')}`);
  for (const w of windows) {
    log(`  ${String(w.fromS).padStart(3)}-${String(w.toS).padEnd(3)} s: glass ${w.glassMedianS ?? '–'} s, hls.js ${w.hlsJsMedianS ?? '–'} s, pdt ${w.pdtMedianS ?? '–'} s, max rate ${w.maxRate} (n=${w.count})`);
  }
  log(`publisher at end: ${psEnd ? `${psEnd.width}x${psEnd.height} ${psEnd.fps} fps, ${psEnd.kbpsSinceLast} kbit/s, ${psEnd.keyFramesEncoded} keyframes, ${psEnd.pliCount} PLI, limited by ${psEnd.qualityLimitationReason}` : '?'}`);

  await session.screenshot('player', 'hls-latency.png');
  await session.screenshot('publisher', 'hls-latency-publisher.png');
  if (!good.length) fail(`no valid stamps read from the player in ${SECONDS} s (${samples.length} samples, ${JSON.stringify(reasons)})`);
  if (MAX_S !== null && isFinite(MAX_S) && g.median > MAX_S) fail(`median glass-to-player latency ${g.median.toFixed(3)} s exceeds LATENCY_MAX_S=${MAX_S}`);
  report.ok = true;
}

async function cleanup() {
  const pub = session.pages.publisher;
  if (pub && !pub.isClosed()) {
    await Promise.race([pub.evaluate(async () => {
      const p = window.__pub;
      if (!p) return;
      p.pc.close();
      if (p.resource) {
        await fetch(p.resource, { method: 'DELETE', headers: p.token ? { Authorization: 'Bearer ' + p.token } : {} }).catch(() => {});
      }
    }).catch(() => {}), sleep(3000)]);
  }
}

await runTest({
  overallTimeoutMs: OVERALL_TIMEOUT_MS,
  run,
  finish: (code, message) => session.finish(code, message, {
    report,
    reportFile: 'hls_latency.json',
    consoleFile: 'hls_latency_console.log',
    failureShots: [['player', 'failure-hls-latency.png'], ['publisher', 'failure-hls-latency-publisher.png']],
    tailLines: 40,
    passMessage: () => {
      const g = report.glassToPlayerS;
      return `glass-to-player latency over LL-HLS: median ${g.median.toFixed(3)} s, p90 ${g.p90.toFixed(3)} s (n=${g.count}, ${elapsedS().toFixed(1)} s)`;
    },
    announceReport: true,
    cleanup,
  }),
});
