// Shared plumbing for the headless-Chromium test scripts in this folder (browser_e2e.mjs,
// check_recording.mjs, hls_player.mjs, hls_latency.mjs). Only what they all do the same way
// lives here; what each script checks stays in the script, so its assertions read in one place.
import { mkdirSync, writeFileSync } from 'node:fs';
import { resolve, join } from 'node:path';

// ---- environment -------------------------------------------------------------------------------

/**
 * The variables every script reads the same way. `defaultStream` differs per script (a latency
 * run must not collide with the browser tests' stream). The artifacts folder is created here
 * because every script writes into it, on failure too.
 */
export function commonEnv({ defaultStream }) {
  const env = {
    base: (process.env.WHIPCORD_URL || 'http://127.0.0.1:8080').replace(/\/+$/, ''),
    artifacts: resolve(process.env.ARTIFACTS_DIR || './artifacts'),
    stream: process.env.WHIPCORD_STREAM || defaultStream,
    token: process.env.WHIPCORD_TOKEN || '',
    codec: process.env.WHIPCORD_CODEC || 'H264',
  };
  mkdirSync(env.artifacts, { recursive: true });
  return env;
}

/** `url` with `?token=` appended when there is a token: how the gateway's pages take one. */
export const withToken = (url, token) => url + (token ? `?token=${encodeURIComponent(token)}` : '');

// ---- time, logging, failure ------------------------------------------------------------------------

// Start of the run, for the elapsed-time prefix on every log line and the reports' durationS.
const t0 = Date.now();
/** Seconds since the script started. */
export const elapsedS = () => (Date.now() - t0) / 1000;
/** console.log with a "[  1.2s]" prefix, so a slow step shows in the log without a profiler. */
export const log = (...a) => console.log(`[${elapsedS().toFixed(1).padStart(5)}s]`, ...a);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A failed check, as opposed to a bug in the script: its message alone is the report. */
export class TestFailure extends Error {}
/** Fails the test: thrown, so the runner still takes screenshots and writes the report. */
export const fail = (msg) => { throw new TestFailure(msg); };
/** For scripts with nothing to clean up (no browser): print the reason and exit 1 at once. */
export const failNow = (msg) => {
  console.log(`FAIL: ${msg}`);
  process.exit(1);
};
/** First line of an error: Playwright appends a multi-line call log that drowns the cause. */
export const firstLine = (e) => String(e && e.message ? e.message : e).split('\n')[0];

// ---- bounded waits -------------------------------------------------------------------------------

/** Settle `p` within `ms` or fail with `what`: a page.evaluate() has no timeout of its own. */
export const bounded = (p, ms, what) => Promise.race([
  p, sleep(ms).then(() => fail(`${what}: no answer within ${ms / 1000} s`)),
]);

/**
 * Call `probe` every `intervalMs` until it returns something truthy (returned) or `timeoutMs`
 * has passed (null), for state the gateway reaches asynchronously (e.g. a recording finishing).
 */
export async function pollUntil(probe, { timeoutMs, intervalMs }) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const v = await probe();
    if (v) return v;
    await sleep(intervalMs);
  }
  return null;
}

// ---- the browser -----------------------------------------------------------------------------------

// Flags for a reproducible headless run on a CI machine: no sandbox (root in a container), no
// GPU, plain TCP (no QUIC), and no background traffic or updates to interfere with timing.
const BASE_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
// getUserMedia() without a prompt, answered by Chromium's built-in test camera and microphone.
const FAKE_MEDIA_ARGS = ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream'];
// <video> may play without a click.
const AUTOPLAY_ARGS = ['--autoplay-policy=no-user-gesture-required'];
// Timers and rendering run at full rate in every window, hidden or covered ones included.
const UNTHROTTLED_ARGS = [
  '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];

/**
 * One headless Chromium for a test: launches it, opens labelled pages whose console, errors and
 * failed requests are collected (kept as an artifact and shown on failure), screenshots them, and
 * ends the run with a report. `logResponse(url)` picks the HTTP responses worth a log line.
 */
export class BrowserTest {
  constructor({ artifacts, logResponse }) {
    this.artifacts = artifacts;
    this.logResponse = logResponse;
    this.browser = null;
    this.pages = {};
    this.consoleLines = [];
  }

  /** `fakeMedia`: fake camera for getUserMedia; `unthrottled`: no background throttling. */
  async launch({ fakeMedia = false, unthrottled = false, executablePath = '/usr/bin/chromium' } = {}) {
    // Imported here, not at the top: check_recording.mjs uses this module without a browser.
    const { chromium } = await import('playwright-core');
    this.browser = await chromium.launch({
      executablePath,
      headless: true,
      timeout: 20_000,
      args: [
        ...BASE_ARGS, ...(fakeMedia ? FAKE_MEDIA_ARGS : []), ...AUTOPLAY_ARGS, ...(unthrottled ? UNTHROTTLED_ARGS : []),
      ],
    });
    log(`browser ${this.browser.version()}`);
    return this.browser;
  }

  /** A page in its own context, i.e. its own window, so no page is a throttled background tab. */
  async newPage(label) {
    const ctx = await this.browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    page.setDefaultTimeout(15_000);
    this.attachLogging(page, label);
    this.pages[label] = page;
    return page;
  }

  attachLogging(page, label) {
    const lines = this.consoleLines;
    page.on('console', (m) => lines.push(`[${label}] console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => lines.push(`[${label}] pageerror: ${e.message}`));
    page.on('requestfailed', (r) => lines.push(`[${label}] requestfailed: ${r.method()} ${r.url()} ${r.failure()?.errorText || ''}`));
    page.on('response', (r) => {
      if (this.logResponse(r.url())) lines.push(`[${label}] ${r.request().method()} ${r.url()} -> ${r.status()}`);
    });
  }

  /** Best effort: a missing or hung page must not hide the failure being reported. */
  async screenshot(label, file) {
    const page = this.pages[label];
    if (!page || page.isClosed()) return;
    try {
      await page.screenshot({ path: join(this.artifacts, file), timeout: 5000 });
      log(`screenshot ${join(this.artifacts, file)}`);
    } catch (e) {
      log(`screenshot ${file} failed: ${firstLine(e)}`);
    }
  }

  /**
   * Ends the run: on failure prints the reason, takes `failureShots` ([label, file] pairs) and the
   * last `tailLines` browser log lines; on success prints `passMessage()`. Then writes the report
   * (`reportFile`, also announced on stdout with `announceReport`) and the whole browser log
   * (`consoleFile`), runs `cleanup`, closes the browser (bounded: a hung close must not keep the
   * run alive) and exits with `code`.
   */
  async finish(code, message, {
    report, reportFile, consoleFile, failureShots, tailLines = 60, passMessage, announceReport = false, cleanup,
  }) {
    if (code !== 0) {
      console.error(`\nFAIL: ${message}`);
      for (const [label, file] of failureShots) await this.screenshot(label, file);
      if (this.consoleLines.length) {
        console.error(`--- browser log (last ${tailLines} lines) ---\n` + this.consoleLines.slice(-tailLines).join('\n'));
      }
    } else {
      console.log(`\nPASS: ${passMessage()}`);
    }
    report.error = code ? message : undefined;
    report.durationS = elapsedS();
    try {
      writeFileSync(join(this.artifacts, reportFile), JSON.stringify(report, null, 2));
      writeFileSync(join(this.artifacts, consoleFile), this.consoleLines.join('\n') + '\n');
      if (announceReport) console.log(`report ${join(this.artifacts, reportFile)}`);
    } catch (_) { /* ignore */ }
    if (cleanup) await cleanup();
    if (this.browser) await Promise.race([this.browser.close().catch(() => {}), sleep(5000)]);
    process.exit(code);
  }
}

/**
 * Runs `run()` under an overall timeout, then `finish(0)` or `finish(1, reason)`; a thrown
 * TestFailure is the reason as is, anything else is reported as a script error with its stack.
 * A hard timeout 20 s later exits even if cleanup itself hangs.
 */
export async function runTest({ overallTimeoutMs, run, finish }) {
  let overallTimer;
  const overall = new Promise((_, reject) => {
    overallTimer = setTimeout(() => reject(new TestFailure(`overall timeout of ${overallTimeoutMs / 1000} s exceeded`)), overallTimeoutMs);
  });
  setTimeout(() => { console.error('FAIL: hard timeout, exiting'); process.exit(1); }, overallTimeoutMs + 20_000).unref();

  try {
    await Promise.race([run(), overall]);
    clearTimeout(overallTimer);
    await finish(0);
  } catch (e) {
    clearTimeout(overallTimer);
    const msg = e instanceof TestFailure ? e.message : `unexpected error: ${e && e.stack ? e.stack : e}`;
    await finish(1, msg);
  }
}

// ---- the gateway's pages -------------------------------------------------------------------------

/** Load `url` in `page` or fail, telling a gateway that is down from one that answers an error. */
export async function gotoOrFail(page, url) {
  const r = await page.goto(url, { waitUntil: 'load', timeout: 15_000 })
    .catch((e) => fail(`cannot load ${url} (is the gateway running?): ${firstLine(e)}`));
  if (!r || !r.ok()) fail(`GET ${url} returned HTTP ${r ? r.status() : 'no response'}`);
}

/**
 * Fill in the gateway's /publish/{stream} page (already loaded in `pub`) to send the fake camera
 * with `codec` (and `token`, when set). Nothing is sent until startPublishing().
 */
export async function fillPublishForm(pub, { codec, token }) {
  await pub.selectOption('#mode', 'camera', { timeout: 5000 });
  await pub.selectOption('#codec', codec, { timeout: 5000 });
  if (token) await pub.fill('#token', token, { timeout: 5000 });
}

/**
 * Click Start on the /publish page and wait up to 15 s for its #state to settle. Returns
 * { ok: true }, { ok: false, state, error } (state 'error' or 'failed', error the page's #error
 * text) or { ok: false, timeout } (the first line of the wait's error); callers word the failure.
 */
export async function startPublishing(pub) {
  await pub.click('#start', { timeout: 5000 });
  return pub.waitForFunction(() => {
    const s = document.querySelector('#state')?.dataset.state;
    const err = document.querySelector('#error');
    if (s === 'connected') return { ok: true };
    if (s === 'error' || s === 'failed') return { ok: false, state: s, error: err && !err.hidden ? err.textContent : '' };
    return false;
  }, null, { timeout: 15_000, polling: 200 }).then((h) => h.jsonValue()).catch((e) => ({ ok: false, timeout: firstLine(e) }));
}

/** Whether the /hls/{stream}/ page in `page` reaches whipcordHls.state === 'playing' in time. */
export const waitForHlsPlaying = (page, { timeoutMs, pollingMs }) => page
  .waitForFunction(() => window.whipcordHls.state === 'playing', null, { timeout: timeoutMs, polling: pollingMs })
  .then(() => true).catch(() => false);

/**
 * Waits until the watch page's #video shows a picture; fails with the page's stats and status
 * text when it never does. Returns {w, h}. `context` names the run in the failure ("over HTTPS").
 */
export async function waitForWatchVideo(watch, { timeoutMs = 20_000, context = '' } = {}) {
  log('watch: waiting for videoWidth > 0');
  const dims = await watch.waitForFunction(() => {
    const v = document.querySelector('#video');
    return v && v.videoWidth > 0 ? { w: v.videoWidth, h: v.videoHeight } : false;
  }, null, { timeout: timeoutMs, polling: 200 }).then((h) => h.jsonValue()).catch(() => null);
  if (!dims) {
    const st = await watch.evaluate(() => ({
      stats: window.whipcordStats,
      status: document.querySelector('#status')?.textContent,
      error: document.querySelector('#error')?.textContent,
    })).catch(() => ({}));
    fail(`viewer never received video${context ? ' ' + context : ''} (videoWidth stayed 0 for ${timeoutMs / 1000} s); state=${JSON.stringify(st)}`);
  }
  return dims;
}
