#!/usr/bin/env node
// Whipcord over HTTPS in a real browser: Chromium, trusting the test CA that signed the gateway's
// certificate the way a user would (added to a fresh NSS database under a temporary HOME; no
// "ignore certificate errors" flag), publishes its fake camera from
// https://localhost:PORT/publish/{stream} and plays it back at /watch/{stream}, WHIP and WHEP over
// the same HTTPS origin. First it checks that the same Chromium without the CA refuses the page,
// so the trust is what makes the rest work.
//
//   WHIPCORD_URL      gateway base URL, https  (default https://localhost:18680)
//   WHIPCORD_CA_FILE  PEM of the CA that signed the gateway's certificate (required)
//   ARTIFACTS_DIR     screenshots + report     (default ./artifacts)
//   WHIPCORD_STREAM   stream name              (default https)
//   WHIPCORD_CODEC    video codec              (default H264)
//
// Needs certutil (Debian: libnss3-tools; scripts/test.sh installs it).
// Exit code 0 = pass, 1 = failure (reason printed as "FAIL: ...").
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BrowserTest, commonEnv, elapsedS, fail, failNow, fillPublishForm, firstLine, log, runTest, sleep,
  startPublishing, waitForWatchVideo,
} from './lib.mjs';

if (!process.env.WHIPCORD_URL) process.env.WHIPCORD_URL = 'https://localhost:18680';
const { base: BASE, artifacts: ARTIFACTS, stream: STREAM, codec: CODEC } = commonEnv({ defaultStream: 'https' });
const CA_FILE = process.env.WHIPCORD_CA_FILE || '';
const OVERALL_TIMEOUT_MS = 90_000;
const SAMPLE_SECONDS = 3;

if (!BASE.startsWith('https://')) failNow(`WHIPCORD_URL must be an https:// URL, not ${BASE}`);
if (!CA_FILE) failNow('WHIPCORD_CA_FILE (the PEM of the CA that signed the gateway certificate) is required');
try {
  readFileSync(CA_FILE);
} catch (e) {
  failNow(`cannot read WHIPCORD_CA_FILE ${CA_FILE}: ${firstLine(e)}`);
}

const session = new BrowserTest({ artifacts: ARTIFACTS, logResponse: (url) => /\/(whip|whep)\//.test(url) });
const report = { base: BASE, stream: STREAM, codec: CODEC, ok: false, steps: [] };
// Chromium on Linux reads user-trusted roots from $HOME/.pki/nssdb; each run gets its own HOME.
const homes = [];
const tempHome = (what) => {
  const dir = mkdtempSync(join(tmpdir(), `whipcord-https-${what}-`));
  homes.push(dir);
  return dir;
};

/** A HOME whose NSS database trusts `caFile` for TLS servers. */
function homeTrusting(caFile) {
  const home = tempHome('trust');
  const db = join(home, '.pki', 'nssdb');
  mkdirSync(db, { recursive: true });
  const certutil = (args) => {
    try {
      execFileSync('certutil', ['-d', `sql:${db}`, ...args], { stdio: 'pipe', timeout: 10_000 });
    } catch (e) {
      if (e.code === 'ENOENT') fail('certutil is missing: apt-get install libnss3-tools (scripts/test.sh does)');
      fail(`certutil ${args.join(' ')} failed: ${e.stderr ? e.stderr.toString() : firstLine(e)}`);
    }
  };
  certutil(['-N', '--empty-password']);
  certutil(['-A', '-t', 'C,,', '-n', 'whipcord-test', '-i', caFile]);
  return home;
}

/** Chromium with an empty NSS database must refuse the gateway's certificate. */
async function checkUntrustedRefused() {
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    timeout: 20_000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run'],
    env: { ...process.env, HOME: tempHome('empty') },
  });
  try {
    const page = await browser.newPage();
    const outcome = await page.goto(`${BASE}/healthz`, { timeout: 15_000 })
      .then((r) => `HTTP ${r ? r.status() : 'no response'}`, (e) => firstLine(e));
    log(`without the CA: ${outcome}`);
    if (!/ERR_CERT_/.test(outcome)) fail(`Chromium without the test CA was not refused: ${outcome}`);
    report.steps.push('untrusted browser refused');
  } finally {
    await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
  }
}

/** Load `url` over HTTPS and check the connection: a 2xx answer, certificate from our CA. */
async function gotoSecure(page, url) {
  const r = await page.goto(url, { waitUntil: 'load', timeout: 15_000 })
    .catch((e) => fail(`cannot load ${url}: ${firstLine(e)}`));
  if (!r || !r.ok()) fail(`GET ${url} returned HTTP ${r ? r.status() : 'no response'}`);
  const tls = await r.securityDetails();
  if (!tls) fail(`${url} was not loaded over TLS`);
  const secure = await page.evaluate(() => window.isSecureContext && location.protocol === 'https:');
  if (!secure) fail(`${url} is not a secure https: context`);
  return { protocol: tls.protocol, issuer: tls.issuer, subject: tls.subjectName };
}

async function run() {
  log(`gateway ${BASE}, CA ${CA_FILE}, stream "${STREAM}", codec ${CODEC}, artifacts ${ARTIFACTS}`);
  await checkUntrustedRefused();

  // Playwright passes process.env on to Chromium: from here on it trusts the test CA.
  process.env.HOME = homeTrusting(CA_FILE);
  await session.launch({ fakeMedia: true });

  // ---- publisher ----
  const pub = await session.newPage('publish');
  const pubTls = await gotoSecure(pub, `${BASE}/publish/${encodeURIComponent(STREAM)}`);
  log(`publish page over ${pubTls.protocol}, certificate ${pubTls.subject} issued by ${pubTls.issuer}`);
  report.tls = pubTls;
  await fillPublishForm(pub, { codec: CODEC, token: '' });
  log('publish: clicking #start');
  const pubResult = await startPublishing(pub);
  if (!pubResult.ok) {
    const error = pubResult.timeout ? `timed out waiting for #state=connected (${pubResult.timeout})` : pubResult.error;
    fail(`publisher did not connect over HTTPS: state=${pubResult.state || '?'}: ${error || ''}`);
  }
  report.steps.push('publisher connected (WHIP over HTTPS)');
  log('publish: connected');

  // ---- viewer ----
  const watch = await session.newPage('watch');
  await gotoSecure(watch, `${BASE}/watch/${encodeURIComponent(STREAM)}`);
  const dims = await waitForWatchVideo(watch, { context: 'over HTTPS' });
  log(`watch: video ${dims.w}x${dims.h}`);
  report.steps.push(`viewer video ${dims.w}x${dims.h} (WHEP over HTTPS)`);

  // Frames keep coming: the stream plays, it did not just start.
  const frames = () => watch.evaluate(() => {
    const v = document.querySelector('#video');
    const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
    return Math.max(q ? q.totalVideoFrames : 0, window.whipcordStats?.framesDecoded || 0);
  });
  let last = await frames();
  for (let i = 1; i <= SAMPLE_SECONDS; i++) {
    await sleep(1000);
    const now = await frames();
    log(`sample ${i}: frames=${now}`);
    if (now <= last) fail(`video frames stopped advancing at sample ${i} (${last} -> ${now})`);
    last = now;
  }
  report.steps.push(`frames advanced for ${SAMPLE_SECONDS} s`);
  await session.screenshot('publish', 'https-publish.png');
  await session.screenshot('watch', 'https-watch.png');
  report.ok = true;
}

await runTest({
  overallTimeoutMs: OVERALL_TIMEOUT_MS,
  run,
  finish: (code, message) => session.finish(code, message, {
    report,
    reportFile: 'https_e2e.json',
    consoleFile: 'https_console.log',
    failureShots: [['publish', 'failure-https-publish.png'], ['watch', 'failure-https-watch.png']],
    passMessage: () => `published "${STREAM}" and watched it over HTTPS with Chromium trusting the test CA (${elapsedS().toFixed(1)} s)`,
    cleanup: async () => {
      for (const home of homes) rmSync(home, { recursive: true, force: true });
    },
  }),
});
