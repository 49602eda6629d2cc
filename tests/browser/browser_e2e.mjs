#!/usr/bin/env node
// Whipcord end-to-end browser test: publish a fake camera via WHIP (H264) and play it back via WHEP.
//
//   WHIPCORD_URL   gateway base URL      (default http://127.0.0.1:8080)
//   ARTIFACTS_DIR  screenshots + report  (default ./artifacts)
//   WHIPCORD_STREAM stream name          (default x)
//   WHIPCORD_CODEC  video codec          (default H264)
//   WHIPCORD_TOKEN  bearer token         (optional; typed into #token and passed to the player as ?token=)
//
// Exit code 0 = pass, 1 = failure (reason printed as "FAIL: ...").
import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import { resolve, join } from 'node:path';

const BASE = (process.env.WHIPCORD_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const ARTIFACTS = resolve(process.env.ARTIFACTS_DIR || './artifacts');
const STREAM = process.env.WHIPCORD_STREAM || 'x';
const CODEC = process.env.WHIPCORD_CODEC || 'H264';
const TOKEN = process.env.WHIPCORD_TOKEN || '';
const OVERALL_TIMEOUT_MS = 60_000;
const SAMPLE_SECONDS = 5;

const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(5)}s]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
class TestFailure extends Error {}
const fail = (msg) => { throw new TestFailure(msg); };

mkdirSync(ARTIFACTS, { recursive: true });

let browser = null;
const pages = {};
const consoleLines = [];
const report = { base: BASE, stream: STREAM, codec: CODEC, ok: false, steps: [] };

function attachLogging(page, label) {
  page.on('console', (m) => consoleLines.push(`[${label}] console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[${label}] pageerror: ${e.message}`));
  page.on('requestfailed', (r) => consoleLines.push(`[${label}] requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText || ''}`));
  page.on('response', (r) => {
    if (/\/(whip|whep)\//.test(r.url())) consoleLines.push(`[${label}] ${r.request().method()} ${r.url()} -> ${r.status()}`);
  });
}

async function screenshot(label, file) {
  const page = pages[label];
  if (!page || page.isClosed()) return;
  try {
    await page.screenshot({ path: join(ARTIFACTS, file), timeout: 5000 });
    log(`screenshot ${join(ARTIFACTS, file)}`);
  } catch (e) {
    log(`screenshot ${file} failed: ${e.message}`);
  }
}

async function gotoOrFail(page, url) {
  const r = await page.goto(url, { waitUntil: 'load', timeout: 15_000 })
    .catch((e) => fail(`cannot load ${url} (is the gateway running?): ${e.message.split('\n')[0]}`));
  if (!r || !r.ok()) fail(`GET ${url} returned HTTP ${r ? r.status() : 'no response'}`);
}

async function run() {
  log(`gateway ${BASE}, stream "${STREAM}", codec ${CODEC}, artifacts ${ARTIFACTS}`);
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

  // Separate contexts -> separate windows, so neither page is a throttled background tab.
  const newPage = async (label) => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    page.setDefaultTimeout(15_000);
    attachLogging(page, label);
    pages[label] = page;
    return page;
  };

  // ---- publisher ----
  const pub = await newPage('publish');
  const pubUrl = `${BASE}/publish/${encodeURIComponent(STREAM)}`;
  await gotoOrFail(pub, pubUrl);
  for (const id of ['#mode', '#codec', '#start', '#stop', '#state', '#token']) {
    if (!(await pub.$(id))) fail(`publish page is missing element ${id}`);
  }
  await pub.selectOption('#mode', 'camera', { timeout: 5000 });
  const codecDisabled = await pub.$eval('#codec', (s, c) => {
    const o = Array.from(s.options).find((x) => x.value === c);
    return !o ? 'missing' : o.disabled ? 'disabled' : '';
  }, CODEC);
  if (codecDisabled) fail(`codec ${CODEC} is ${codecDisabled} in #codec (browser lacks it?)`);
  await pub.selectOption('#codec', CODEC, { timeout: 5000 });
  if (TOKEN) await pub.fill('#token', TOKEN, { timeout: 5000 });
  log('publish: clicking #start');
  await pub.click('#start', { timeout: 5000 });

  const pubResult = await pub.waitForFunction(() => {
    const s = document.querySelector('#state')?.dataset.state;
    const err = document.querySelector('#error');
    if (s === 'connected') return { ok: true };
    if (s === 'error' || s === 'failed') return { ok: false, state: s, error: err && !err.hidden ? err.textContent : '' };
    return false;
  }, null, { timeout: 15_000, polling: 200 }).then((h) => h.jsonValue()).catch((e) => ({ ok: false, error: `timed out waiting for #state=connected (${e.message.split('\n')[0]})` }));
  if (!pubResult.ok) {
    const st = await pub.$eval('#state', (e) => e.textContent).catch(() => '?');
    fail(`publisher did not connect: state=${pubResult.state || st}: ${pubResult.error || ''}`);
  }
  report.steps.push('publisher connected');
  log('publish: connected');

  // Let the encoder produce a few frames so the gateway has a keyframe/codec info.
  await pub.waitForFunction(() => (window.whipcordPublishStats?.framesEncoded || 0) > 0, null, { timeout: 5000, polling: 250 })
    .catch(() => log('publish: warning: no framesEncoded reported yet'));
  const pubStats = await pub.evaluate(() => window.whipcordPublishStats).catch(() => null);
  log('publish stats:', JSON.stringify(pubStats));
  report.publishStats = pubStats;

  // ---- viewer ----
  const watch = await newPage('watch');
  const watchUrl = `${BASE}/watch/${encodeURIComponent(STREAM)}` + (TOKEN ? `?token=${encodeURIComponent(TOKEN)}` : '');
  await gotoOrFail(watch, watchUrl);
  if (!(await watch.$('#video'))) fail('watch page is missing #video');

  log('watch: waiting for videoWidth > 0');
  const dims = await watch.waitForFunction(() => {
    const v = document.querySelector('#video');
    return v && v.videoWidth > 0 ? { w: v.videoWidth, h: v.videoHeight } : false;
  }, null, { timeout: 20_000, polling: 200 }).then((h) => h.jsonValue()).catch(() => null);
  if (!dims) {
    const st = await watch.evaluate(() => ({
      stats: window.whipcordStats,
      status: document.querySelector('#status')?.textContent,
      error: document.querySelector('#error')?.textContent,
    })).catch(() => ({}));
    fail(`viewer never received video (videoWidth stayed 0 for 20 s); state=${JSON.stringify(st)}`);
  }
  log(`watch: video ${dims.w}x${dims.h}`);
  report.steps.push(`viewer video ${dims.w}x${dims.h}`);

  // ---- frames must advance every second for SAMPLE_SECONDS ----
  const sample = () => watch.evaluate(() => {
    const v = document.querySelector('#video');
    const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
    const s = window.whipcordStats || {};
    return {
      totalVideoFrames: q ? q.totalVideoFrames : 0,
      framesDecoded: s.framesDecoded || 0,
      width: v.videoWidth, height: v.videoHeight, paused: v.paused,
      state: s.state, fps: s.fps, bitrate: s.bitrate,
    };
  });
  const samples = [await sample()];
  for (let i = 1; i <= SAMPLE_SECONDS; i++) {
    await sleep(1000);
    const cur = await sample();
    const prev = samples[samples.length - 1];
    samples.push(cur);
    log(`sample ${i}: totalVideoFrames=${cur.totalVideoFrames} framesDecoded=${cur.framesDecoded} ${cur.width}x${cur.height} state=${cur.state}`);
    const advanced = cur.totalVideoFrames > prev.totalVideoFrames || cur.framesDecoded > prev.framesDecoded;
    if (!advanced) {
      report.samples = samples;
      fail(`video frames stopped advancing at sample ${i}: ${JSON.stringify(prev)} -> ${JSON.stringify(cur)}`);
    }
    if (cur.width <= 0) fail(`videoWidth dropped to 0 at sample ${i}`);
  }
  report.samples = samples;
  report.steps.push(`frames advanced for ${SAMPLE_SECONDS} s`);
  const watchStats = await watch.evaluate(() => window.whipcordStats).catch(() => null);
  log('watch stats:', JSON.stringify(watchStats));
  report.watchStats = watchStats;
  // Passthrough: the viewer decodes exactly the codec the publisher sent.
  const watchedCodec = String(watchStats?.codec || '');
  if (!watchedCodec.toUpperCase().startsWith(CODEC.toUpperCase())) {
    fail(`viewer decoded "${watchedCodec}", expected ${CODEC}`);
  }

  await screenshot('publish', 'publish.png');
  await screenshot('watch', 'watch.png');

  // Best effort: exercise Stop (WHIP DELETE). Not an assertion.
  try {
    await pub.click('#stop', { timeout: 3000 });
    const st = await pub.waitForFunction(() => document.querySelector('#state')?.dataset.state === 'stopped', null, { timeout: 3000 })
      .then(() => 'stopped').catch(() => 'not stopped');
    await sleep(300);
    const err = await pub.$eval('#error', (e) => (e.hidden ? '' : e.textContent)).catch(() => '');
    log(`publish: stop -> ${st}${err ? ` (warning: ${err})` : ''}`);
  } catch (e) {
    log(`publish: stop warning: ${e.message.split('\n')[0]}`);
  }
  report.ok = true;
}

async function finish(code, message) {
  if (code !== 0) {
    console.error(`\nFAIL: ${message}`);
    await screenshot('publish', 'failure-publish.png');
    await screenshot('watch', 'failure-watch.png');
    if (consoleLines.length) console.error('--- browser log (last 60 lines) ---\n' + consoleLines.slice(-60).join('\n'));
  } else {
    console.log(`\nPASS: published ${CODEC} stream "${STREAM}" and played it back via WHEP (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  }
  report.error = code ? message : undefined;
  report.durationS = (Date.now() - t0) / 1000;
  try {
    writeFileSync(join(ARTIFACTS, 'browser_e2e.json'), JSON.stringify(report, null, 2));
    writeFileSync(join(ARTIFACTS, 'browser_console.log'), consoleLines.join('\n') + '\n');
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
