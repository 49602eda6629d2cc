#!/usr/bin/env node
// Whipcord HLS player test: open /hls/{stream}/ (hls.js page) in headless Chromium and check
// that a live stream actually plays: the playhead and the decoded-frame count both advance.
//
//   WHIPCORD_URL      gateway base URL                       (default http://127.0.0.1:8080)
//   WHIPCORD_STREAM   stream name, must be live              (default x)
//   ARTIFACTS_DIR     screenshot + report                    (default ./artifacts)
//   WHIPCORD_TOKEN    bearer token                           (optional; passed to the page as ?token=)
//   WHIPCORD_PUBLISH=1  publish Chromium's fake camera to the stream first via /publish/{stream}
//                     (codec WHIPCORD_CODEC, default H264) and keep it live during the test;
//                     off by default: the caller publishes (browser, ffmpeg, load tool...).
//   WHIPCORD_MEASURE_LATENCY=1  also report the playhead's distance from wall clock, see below.
//
// Writes ${ARTIFACTS_DIR}/hls-player.png (failure-hls-player.png on failure), hls_player.json and
// hls_console.log. Exit code 0 = pass, 1 = failure (reason printed as "FAIL: ...").
//
// Latency. tests/browser/browser_e2e.mjs measures none (it only checks that WHEP frames advance),
// so there is no glass-to-glass approach to reuse. What this test reports:
//  - always: hls.js's `hls.latency` (live edge of the playlist − playhead, in seconds), i.e. the
//    player-side part only;
//  - with WHIPCORD_MEASURE_LATENCY=1: `whipcordHls.pdtLatency()` = now − EXT-X-PROGRAM-DATE-TIME
//    of the frame at the playhead, sampled once a second for 5 s (median reported). The gateway
//    derives PROGRAM-DATE-TIME from the publisher's RTCP sender-report wall clock when it has one
//    (else arrival time), and the publisher, gateway and browser share this machine's clock, so
//    this is capture-to-player latency minus the publisher's capture-to-RTP delay. Report only,
//    no assertion. A true glass-to-glass figure would need the publisher to draw the time into
//    the picture (canvas) and the player to read it back from a decoded frame; not done.
import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import { resolve, join } from 'node:path';

const BASE = (process.env.WHIPCORD_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const ARTIFACTS = resolve(process.env.ARTIFACTS_DIR || './artifacts');
const STREAM = process.env.WHIPCORD_STREAM || 'x';
const TOKEN = process.env.WHIPCORD_TOKEN || '';
const PUBLISH = process.env.WHIPCORD_PUBLISH === '1';
const CODEC = process.env.WHIPCORD_CODEC || 'H264';
const MEASURE = process.env.WHIPCORD_MEASURE_LATENCY === '1';
const PLAY_TIMEOUT_MS = 60_000;   // until whipcordHls.state === 'playing'
const SAMPLE_GAP_MS = 3_000;      // between the two samples
const MIN_ADVANCE_S = 1.5;        // currentTime must advance at least this much over SAMPLE_GAP_MS
const OVERALL_TIMEOUT_MS = 120_000;

const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
class TestFailure extends Error {}
const fail = (msg) => { throw new TestFailure(msg); };
const first = (e) => String(e && e.message ? e.message : e).split('\n')[0];

mkdirSync(ARTIFACTS, { recursive: true });

let browser = null;
const pages = {};
const consoleLines = [];
const report = { base: BASE, stream: STREAM, ok: false, steps: [] };

function attachLogging(page, label) {
  page.on('console', (m) => consoleLines.push(`[${label}] console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[${label}] pageerror: ${e.message}`));
  page.on('requestfailed', (r) => consoleLines.push(`[${label}] requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText || ''}`));
  page.on('response', (r) => {
    if (/\/(whip|whep|hls)\//.test(r.url())) consoleLines.push(`[${label}] ${r.request().method()} ${r.url()} -> ${r.status()}`);
  });
}

async function screenshot(label, file) {
  const page = pages[label];
  if (!page || page.isClosed()) return;
  try {
    await page.screenshot({ path: join(ARTIFACTS, file), timeout: 5000 });
    log(`screenshot ${join(ARTIFACTS, file)}`);
  } catch (e) {
    log(`screenshot ${file} failed: ${first(e)}`);
  }
}

async function gotoOrFail(page, url) {
  const r = await page.goto(url, { waitUntil: 'load', timeout: 15_000 })
    .catch((e) => fail(`cannot load ${url} (is the gateway running?): ${first(e)}`));
  if (!r || !r.ok()) fail(`GET ${url} returned HTTP ${r ? r.status() : 'no response'}`);
}

async function publish(newPage) {
  const pub = await newPage('publish');
  await gotoOrFail(pub, `${BASE}/publish/${encodeURIComponent(STREAM)}`);
  await pub.selectOption('#mode', 'camera', { timeout: 5000 });
  await pub.selectOption('#codec', CODEC, { timeout: 5000 });
  if (TOKEN) await pub.fill('#token', TOKEN, { timeout: 5000 });
  await pub.click('#start', { timeout: 5000 });
  const ok = await pub.waitForFunction(() => {
    const s = document.querySelector('#state')?.dataset.state;
    return s === 'connected' ? true : (s === 'error' || s === 'failed') ? s : false;
  }, null, { timeout: 15_000, polling: 200 }).then((h) => h.jsonValue()).catch((e) => `timeout (${first(e)})`);
  if (ok !== true) {
    const err = await pub.$eval('#error', (e) => (e.hidden ? '' : e.textContent)).catch(() => '');
    fail(`publisher did not connect: ${ok} ${err}`);
  }
  log(`publish: ${CODEC} fake camera connected`);
  report.steps.push('publisher connected');
}

async function run() {
  log(`gateway ${BASE}, stream "${STREAM}", artifacts ${ARTIFACTS}`);
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    timeout: 20_000,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  log(`browser ${browser.version()}`);

  // Separate contexts -> separate windows, so no page is a throttled background tab.
  const newPage = async (label) => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    page.setDefaultTimeout(15_000);
    attachLogging(page, label);
    pages[label] = page;
    return page;
  };

  if (PUBLISH) await publish(newPage);

  // ---- player ----
  const page = await newPage('hls');
  const url = `${BASE}/hls/${encodeURIComponent(STREAM)}/` + (TOKEN ? `?token=${encodeURIComponent(TOKEN)}` : '');
  await gotoOrFail(page, url);
  const info = await page.evaluate(() => ({
    api: typeof window.whipcordHls === 'object' && window.whipcordHls !== null,
    hlsVersion: typeof window.Hls === 'function' ? window.Hls.version : null,
    mse: typeof window.Hls === 'function' ? window.Hls.isSupported() : false,
    engine: window.whipcordHls?.engine ?? null,
    src: window.whipcordHls?.src ?? null,
  }));
  report.page = info;
  if (!info.api) fail(`${url} does not expose window.whipcordHls`);
  if (!info.hlsVersion) fail('hls.js did not load (window.Hls missing: is /assets/vendor/hls.min.js served?)');
  log(`page: hls.js ${info.hlsVersion}, MSE ${info.mse ? 'yes' : 'no'}, engine ${info.engine}, src ${info.src}`);
  if (info.engine !== 'hls.js') fail(`player did not use hls.js (engine=${info.engine}); Chromium should support MSE`);

  log(`player: waiting up to ${PLAY_TIMEOUT_MS / 1000} s for whipcordHls.state === 'playing'`);
  const played = await page.waitForFunction(() => window.whipcordHls.state === 'playing', null, { timeout: PLAY_TIMEOUT_MS, polling: 250 })
    .then(() => true).catch(() => false);
  if (!played) {
    const st = await page.evaluate(() => ({
      state: window.whipcordHls.state, error: window.whipcordHls.error,
      currentTime: window.whipcordHls.currentTime(), decodedFrames: window.whipcordHls.decodedFrames(),
      status: document.querySelector('#status')?.textContent,
    })).catch((e) => ({ evaluate: first(e) }));
    fail(`HLS player did not reach state 'playing' within ${PLAY_TIMEOUT_MS / 1000} s: ${JSON.stringify(st)}`);
  }
  log('player: playing');
  report.steps.push('player playing');

  // ---- playhead and decoded frames must advance ----
  const sample = () => page.evaluate(() => {
    const h = window.whipcordHls;
    const v = document.querySelector('#video');
    return {
      state: h.state, error: h.error, currentTime: h.currentTime(), decodedFrames: h.decodedFrames(),
      latency: h.latency(), pdtLatency: h.pdtLatency ? h.pdtLatency() : null,
      width: v.videoWidth, height: v.videoHeight, paused: v.paused, playbackRate: v.playbackRate,
    };
  });
  const a = await sample();
  log(`sample 1: t=${a.currentTime.toFixed(2)} frames=${a.decodedFrames} ${a.width}x${a.height} latency=${a.latency}`);
  await sleep(SAMPLE_GAP_MS);
  const b = await sample();
  log(`sample 2: t=${b.currentTime.toFixed(2)} frames=${b.decodedFrames} ${b.width}x${b.height} latency=${b.latency}`);
  report.samples = [a, b];
  const dt = b.currentTime - a.currentTime;
  if (!(dt > MIN_ADVANCE_S)) fail(`currentTime advanced ${dt.toFixed(2)} s in ${SAMPLE_GAP_MS / 1000} s (need > ${MIN_ADVANCE_S}): ${JSON.stringify(a)} -> ${JSON.stringify(b)}`);
  if (!(b.decodedFrames > a.decodedFrames)) fail(`decoded frames did not advance: ${a.decodedFrames} -> ${b.decodedFrames}`);
  if (!(b.width > 0)) fail('videoWidth is 0 while playing');
  report.steps.push(`currentTime +${dt.toFixed(2)} s, frames +${b.decodedFrames - a.decodedFrames} in ${SAMPLE_GAP_MS / 1000} s`);
  report.latencyS = b.latency;
  log(`latency (hls.js, live edge − playhead): ${b.latency === null ? 'unknown' : b.latency.toFixed(2) + ' s'}`);

  if (MEASURE) {
    const xs = [];
    for (let i = 0; i < 5; i++) {
      const x = await page.evaluate(() => window.whipcordHls.pdtLatency());
      if (typeof x === 'number') xs.push(x);
      await sleep(1000);
    }
    xs.sort((p, q) => p - q);
    const med = xs.length ? xs[Math.floor(xs.length / 2)] : null;
    report.pdtLatencyS = { median: med, samples: xs };
    log(`latency (wall clock − PROGRAM-DATE-TIME at playhead): ${med === null ? 'unknown (no PROGRAM-DATE-TIME?)' : `median ${med.toFixed(2)} s of ${xs.map((x) => x.toFixed(2)).join(', ')}`}`);
  }

  await screenshot('hls', 'hls-player.png');
  report.ok = true;
}

async function finish(code, message) {
  if (code !== 0) {
    console.error(`\nFAIL: ${message}`);
    await screenshot('hls', 'failure-hls-player.png');
    await screenshot('publish', 'failure-hls-publish.png');
    if (consoleLines.length) console.error('--- browser log (last 60 lines) ---\n' + consoleLines.slice(-60).join('\n'));
  } else {
    console.log(`\nPASS: played stream "${STREAM}" over HLS with hls.js (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  }
  report.error = code ? message : undefined;
  report.durationS = (Date.now() - t0) / 1000;
  try {
    writeFileSync(join(ARTIFACTS, 'hls_player.json'), JSON.stringify(report, null, 2));
    writeFileSync(join(ARTIFACTS, 'hls_console.log'), consoleLines.join('\n') + '\n');
  } catch (_) { /* ignore */ }
  if (browser) await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
  process.exit(code);
}

let overallTimer;
const overall = new Promise((_, reject) => {
  overallTimer = setTimeout(() => reject(new TestFailure(`overall timeout of ${OVERALL_TIMEOUT_MS / 1000} s exceeded`)), OVERALL_TIMEOUT_MS);
});
// Hard stop in case cleanup itself hangs.
setTimeout(() => { console.error('FAIL: hard timeout, exiting'); process.exit(1); }, OVERALL_TIMEOUT_MS + 20_000).unref();

try {
  await Promise.race([run(), overall]);
  clearTimeout(overallTimer);
  await finish(0);
} catch (e) {
  clearTimeout(overallTimer);
  const msg = e instanceof TestFailure ? e.message : `unexpected error: ${e && e.stack ? e.stack : e}`;
  await finish(1, msg);
}
