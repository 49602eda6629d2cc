#!/usr/bin/env node
// Whipcord admin panel end to end, in headless Chromium: log in, make a publish key, publish the
// fake camera with it, watch, drive recording, recordings, restreaming, kicking and revoking from
// the panel, and look at every panel page (a full-page screenshot of each).
//
//   WHIPCORD_URL             gateway base URL              (default http://127.0.0.1:8080)
//   WHIPCORD_ADMIN_PASSWORD  the gateway's admin password  (required)
//   ARTIFACTS_DIR            screenshots + report          (default ./artifacts)
//   WHIPCORD_STREAM          stream name                   (default admin-e2e)
//   WHIPCORD_CODEC           video codec to publish        (default H264)
//   RTMP_URL                 rtmp://127.0.0.1:PORT/live of an nginx-rtmp server; without it the
//                            script runs its own nginx (Debian's libnginx-mod-rtmp)
//
// Exit code 0 = pass, 1 = failure (reason printed as "FAIL: ...").
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BrowserTest, commonEnv, elapsedS, fail, failNow, fillPublishForm, firstLine, gotoOrFail, log, pollUntil,
  runTest, sleep, startPublishing,
} from './lib.mjs';

const { base: BASE, artifacts: ARTIFACTS, stream: STREAM, codec: CODEC } = commonEnv({ defaultStream: 'admin-e2e' });
const PASSWORD = process.env.WHIPCORD_ADMIN_PASSWORD || '';
if (!PASSWORD) failNow('WHIPCORD_ADMIN_PASSWORD is not set');
const OVERALL_TIMEOUT_MS = 240_000;
const KEY_NAME = `${STREAM} publish (admin e2e)`;
const TOKEN_NAME = `${STREAM} token (admin e2e)`;
const OUT_NAME = `${STREAM}-out`;

const session = new BrowserTest({
  artifacts: ARTIFACTS,
  logResponse: (url) => /\/(whip|whep)\/|\/api\/v1\/(?!events)|\/admin\/(login|logout)/.test(url),
});
const report = { base: BASE, stream: STREAM, codec: CODEC, ok: false, steps: [], screenshots: [] };
let nginx = null;

// ---- helpers ------------------------------------------------------------------------------------

const tid = (id) => `[data-testid="${id}"]`;
const step = (what) => { log(`step: ${what}`); report.steps.push(what); };

/** Full-page screenshot of `page` into the artifacts; a failure is logged, not fatal. */
async function shot(page, file) {
  try {
    await page.screenshot({ path: join(ARTIFACTS, file), fullPage: true, timeout: 10_000 });
    report.screenshots.push(file);
    log(`screenshot ${join(ARTIFACTS, file)}`);
  } catch (e) {
    log(`screenshot ${file} failed: ${firstLine(e)}`);
  }
}

/** The text of the element with data-testid `id`, or null when there is none. */
const textOf = (page, id) => page.$eval(tid(id), (e) => e.textContent.trim()).catch(() => null);

/** Waits until the text of [data-testid=id] matches `re`; fails with `what` otherwise. */
async function waitText(page, id, re, timeoutMs, what) {
  const got = await page.waitForFunction(([sel, src, flags]) => {
    const el = document.querySelector(sel);
    const t = el ? el.textContent.trim() : null;
    return t !== null && new RegExp(src, flags).test(t) ? t : false;
  }, [tid(id), re.source, re.flags], { timeout: timeoutMs, polling: 250 }).then((h) => h.jsonValue()).catch(() => null);
  if (got === null) {
    const now = await textOf(page, id);
    const banner = await bannerText(page);
    fail(`${what}: [data-testid=${id}] did not match ${re} within ${timeoutMs / 1000} s (text: ${now === null ? 'element missing' : JSON.stringify(now)})${banner ? `; error banner: ${banner}` : ''}`);
  }
  return got;
}

/** Waits for [data-testid=id] to be visible; fails with `what` otherwise. */
async function waitVisible(page, id, timeoutMs, what) {
  await page.waitForSelector(tid(id), { state: 'visible', timeout: timeoutMs }).catch(async () => {
    const banner = await bannerText(page);
    fail(`${what}: [data-testid=${id}] not shown within ${timeoutMs / 1000} s${banner ? `; error banner: ${banner}` : ''}`);
  });
}

/** The panel's error banner, when it shows one: an API error the page reported. */
const bannerText = (page) => page.$eval(tid('error-banner'), (e) => (e.hidden ? '' : e.textContent.trim())).catch(() => '');

/** In-app navigation through the panel's menu (the SPA router, not a page load). */
async function navTo(page, nav, readyId, what) {
  await page.click(tid(`nav-${nav}`), { timeout: 5000 });
  await waitVisible(page, readyId, 10_000, what);
}

/** A request with the admin page's session cookie (Playwright shares the context's cookies). */
const apiGet = (page, path) => page.request.get(BASE + path, { timeout: 5000, failOnStatusCode: false });

/** Id from a data-testid such as "rec-row-12". */
const idOf = (testid, prefix) => testid.slice(prefix.length);

// ---- nginx with the RTMP module, when the shell gave no RTMP_URL -------------------------------

const freePort = () => new Promise((resolve, reject) => {
  const srv = createServer();
  srv.on('error', reject);
  srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
});

const canConnect = (port) => new Promise((resolve) => {
  const c = createConnection({ host: '127.0.0.1', port }, () => { c.destroy(); resolve(true); });
  c.on('error', () => resolve(false));
});

/** nginx in the foreground with `application live` recording into dir/rec (as tests/src/nginx.rs). */
async function startNginx() {
  const dir = mkdtempSync(join(tmpdir(), 'whipcord-admin-e2e-nginx-'));
  const port = await freePort();
  mkdirSync(join(dir, 'rec'));
  const root = typeof process.getuid === 'function' && process.getuid() === 0;
  writeFileSync(join(dir, 'nginx.conf'), `load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
${root ? 'user root;\n' : ''}worker_processes 1;
error_log ${dir}/error.log info;
pid ${dir}/nginx.pid;
events { worker_connections 64; }
rtmp {
  server {
    listen 127.0.0.1:${port};
    chunk_size 4096;
    application live {
      live on;
      record all;
      record_path ${dir}/rec;
      record_unique off;
    }
  }
}
`);
  const child = spawn('/usr/sbin/nginx', ['-p', dir, '-e', join(dir, 'error.log'), '-c', join(dir, 'nginx.conf'), '-g', 'daemon off; master_process off;'], { stdio: 'ignore' });
  let exited = null;
  child.on('exit', (code) => { exited = code; });
  child.on('error', (e) => { exited = e.message; });
  const up = await pollUntil(async () => exited !== null || await canConnect(port), { timeoutMs: 10_000, intervalMs: 100 });
  if (!up || exited !== null) fail(`nginx (RTMP) did not start on port ${port} (exit ${exited}); see ${dir}/error.log`);
  log(`nginx-rtmp on 127.0.0.1:${port} (${dir})`);
  return { child, dir, url: `rtmp://127.0.0.1:${port}/live` };
}

// ---- the test --------------------------------------------------------------------------------------

async function run() {
  log(`gateway ${BASE}, stream "${STREAM}", codec ${CODEC}, artifacts ${ARTIFACTS}`);
  let rtmpBase = (process.env.RTMP_URL || '').replace(/\/+$/, '');
  if (!rtmpBase) {
    nginx = await startNginx();
    rtmpBase = nginx.url;
  }
  report.rtmp = rtmpBase;
  await session.launch({ fakeMedia: true, unthrottled: true });

  // 1. The panel asks for a login; a wrong password is refused, the right one lands on the dashboard.
  const admin = await session.newPage('admin');
  admin.on('dialog', (d) => d.accept().catch(() => {})); // confirm() before destructive actions
  await gotoOrFail(admin, `${BASE}/admin/`);
  const loginUrl = new URL(admin.url());
  if (loginUrl.pathname !== '/admin/login') fail(`GET /admin/ without a session landed on ${admin.url()}, expected /admin/login`);
  if (loginUrl.searchParams.get('next') !== '/admin/') fail(`login page's next is ${JSON.stringify(loginUrl.searchParams.get('next'))}, expected "/admin/"`);
  if ((await admin.inputValue(tid('login-next'))) !== '/admin/') fail('login form did not copy ?next= into its hidden field');
  await admin.fill(tid('login-password'), `wrong-${Date.now()}`);
  await Promise.all([
    admin.waitForURL((u) => u.searchParams.get('error') === 'invalid', { timeout: 10_000 })
      .catch(() => fail(`a wrong password did not come back to /admin/login?error=invalid (at ${admin.url()})`)),
    admin.click(tid('login-submit')),
  ]);
  await waitText(admin, 'login-error', /wrong password/i, 5000, 'wrong password');
  await shot(admin, 'login.png');
  await admin.fill(tid('login-password'), PASSWORD);
  await Promise.all([
    admin.waitForURL((u) => u.pathname === '/admin/', { timeout: 10_000 })
      .catch(() => fail(`the right password did not land on /admin/ (at ${admin.url()})`)),
    admin.click(tid('login-submit')),
  ]);
  await waitText(admin, 'server-cpu', /%/, 10_000, 'dashboard server figures');
  step('login: redirect, wrong password refused, dashboard reached');

  // 1b. A camera added on the dashboard is listed without its password (an
  // unreachable loopback port: it retries), then removed.
  await admin.fill(tid('source-stream'), 'door-cam');
  await admin.fill(tid('source-url'), 'rtsp://cam:pa55word-x@127.0.0.1:9/none');
  await admin.click(tid('source-add'));
  await waitVisible(admin, 'source-row-door-cam', 10_000, 'the added camera');
  const camRow = await admin.$eval(tid('source-row-door-cam'), (e) => e.textContent);
  if (camRow.includes('pa55word-x')) fail(`the camera row shows its password: ${camRow}`);
  if (!camRow.includes('rtsp://127.0.0.1:9/none')) fail(`the camera row lacks its URL: ${camRow}`);
  await waitText(admin, 'source-state-door-cam', /^(connecting|retrying)$/, 10_000, 'camera state');
  await admin.click(tid('source-remove-door-cam'));
  await admin.waitForSelector(tid('source-row-door-cam'), { state: 'detached', timeout: 10_000 })
    .catch(() => fail('the camera is still listed 10 s after Remove'));
  step('camera added on the dashboard (password hidden) and removed');

  // 2. A publish key for exactly this stream, made on the Stream keys page.
  await navTo(admin, 'keys', 'key-name', 'Stream keys page');
  await admin.fill(tid('key-name'), KEY_NAME);
  await admin.fill(tid('key-pattern'), STREAM);
  await admin.selectOption(tid('key-action'), 'publish');
  await admin.click(tid('key-create'));
  await waitVisible(admin, 'key-secret', 10_000, 'new key secret');
  const secret = (await textOf(admin, 'key-secret')) || '';
  if (secret.length < 16) fail(`key secret looks wrong: ${JSON.stringify(secret)}`);
  const keyRow = admin.locator('tr[data-testid^="key-row-"]', { hasText: KEY_NAME }).first();
  await keyRow.waitFor({ timeout: 5000 }).catch(() => fail(`the new key "${KEY_NAME}" is not listed`));
  const keyId = idOf(await keyRow.getAttribute('data-testid'), 'key-row-');
  report.keyId = keyId;
  step(`publish key ${keyId} created`);

  // 3. Publish the fake camera with the key.
  const pub = await session.newPage('publish');
  await gotoOrFail(pub, `${BASE}/publish/${encodeURIComponent(STREAM)}?token=${encodeURIComponent(secret)}`);
  await fillPublishForm(pub, { codec: CODEC, token: secret }); // the page reads its token from #token
  const published = await startPublishing(pub);
  if (!published.ok) fail(`publishing with the new key failed: ${published.error || published.timeout || published.state}`);
  await pub.waitForFunction(() => (window.whipcordPublishStats?.framesEncoded || 0) > 0, null, { timeout: 5000, polling: 250 })
    .catch(() => log('publish: warning: no frames encoded yet'));
  step('publishing with the key');

  // 4. The dashboard shows the stream, its codecs and 0 viewers, then 1 with a player open.
  await navTo(admin, 'dashboard', 'server-cpu', 'dashboard');
  await waitVisible(admin, `stream-row-${STREAM}`, 15_000, 'live stream on the dashboard');
  const codecs = await waitText(admin, `codecs-${STREAM}`, /\b(H264|H265|VP8|VP9|AV1)\b/i, 10_000, 'stream codecs');
  report.codecs = codecs;
  await waitText(admin, `viewer-count-${STREAM}`, /^0$/, 5000, 'viewer count before watching');
  const watch = await session.newPage('watch');
  await gotoOrFail(watch, `${BASE}/watch/${encodeURIComponent(STREAM)}`);
  await watch.waitForFunction(() => (document.querySelector('#video')?.videoWidth || 0) > 0, null, { timeout: 20_000, polling: 200 })
    .catch(async () => fail(`the player got no video in 20 s (status ${JSON.stringify(await watch.textContent('#status').catch(() => '?'))})`));
  await waitText(admin, `viewer-count-${STREAM}`, /^1$/, 15_000, 'viewer count while watching');
  await waitText(admin, `bitrate-${STREAM}`, /[1-9]/, 10_000, 'bit rate in');
  await shot(admin, 'dashboard.png');
  await admin.setViewportSize({ width: 390, height: 844 });
  await shot(admin, 'dashboard-mobile.png');
  await admin.setViewportSize({ width: 1280, height: 800 });
  step(`dashboard: ${codecs}, viewers 0 then 1`);

  // 5. Recording control on the stream page: stop, start, record ~3 s, stop.
  await admin.click(tid(`stream-link-${STREAM}`));
  await waitText(admin, 'stream-status', /^live$/, 10_000, 'stream page');
  await waitText(admin, 'recording-state', /recording/, 5000, 'recording state');
  await admin.click(tid('recording-stop'));
  await waitText(admin, 'recording-state', /^not recording$/, 10_000, 'recording after Stop');
  await admin.click(tid('recording-start'));
  await waitText(admin, 'recording-state', /^recording$/, 10_000, 'recording after Start');
  await sleep(3500);
  await admin.click(tid('recording-stop'));
  await waitText(admin, 'recording-state', /^not recording$/, 10_000, 'recording after the second Stop');
  step('recording stopped, started, stopped');

  // 6. The recording is listed; it plays and downloads.
  await navTo(admin, 'recordings', 'rec-stream', 'Recordings page');
  await admin.fill(tid('rec-stream'), STREAM);
  await admin.click(tid('rec-filter'));
  await admin.waitForURL((u) => u.searchParams.get('stream') === STREAM, { timeout: 5000 });
  // Finishing the file takes a moment after Stop; the list is reloaded until it shows.
  const recId = await pollUntil(async () => {
    const id = await admin.evaluate(() => {
      const row = Array.from(document.querySelectorAll('tr[data-testid^="rec-row-"]'))
        .find((r) => r.querySelector('[data-testid^="rec-state-"]')?.textContent.trim() === 'complete');
      return row ? row.dataset.testid.slice('rec-row-'.length) : null;
    });
    if (id) return id;
    await admin.click(tid('rec-filter'));
    return null;
  }, { timeoutMs: 15_000, intervalMs: 1000 });
  if (!recId) fail(`no complete recording of ${STREAM} listed within 15 s (banner: ${await bannerText(admin)})`);
  report.recordingId = recId;
  await admin.click(tid(`rec-play-${recId}`));
  await waitVisible(admin, 'rec-video', 5000, 'recording player');
  const played = await admin.waitForFunction(() => {
    const v = document.querySelector('[data-testid="rec-video"]');
    if (!v) return false;
    if (v.error) return { error: v.error.code + ' ' + (v.error.message || '') };
    return v.readyState >= 2 && v.duration > 0 ? { readyState: v.readyState, duration: v.duration, currentTime: v.currentTime } : false;
  }, null, { timeout: 15_000, polling: 250 }).then((h) => h.jsonValue()).catch(() => null);
  if (!played || played.error) fail(`the recording did not play (${played ? played.error : 'readyState stayed below 2 for 15 s'})`);
  await sleep(1000);
  played.advancedTo = await admin.$eval(tid('rec-video'), (v) => v.currentTime).catch(() => null);
  report.playback = played;
  await shot(admin, 'recordings.png');
  const [download] = await Promise.all([
    admin.waitForEvent('download', { timeout: 15_000 }).catch(() => fail('clicking Download started no download')),
    admin.click(tid(`rec-download-${recId}`)),
  ]);
  const file = await download.path().catch((e) => fail(`download failed: ${firstLine(e)}`));
  const size = statSync(file).size;
  if (!(size > 0)) fail(`downloaded recording ${download.suggestedFilename()} is empty`);
  report.download = { name: download.suggestedFilename(), bytes: size };
  step(`recording ${recId} played (readyState ${played.readyState}) and downloaded (${size} bytes)`);

  // 7. A restream target added on the stream page goes live, then is removed.
  await gotoOrFail(admin, `${BASE}/admin/streams/${encodeURIComponent(STREAM)}`); // a direct load of a panel path
  await waitText(admin, 'stream-status', /^live$/, 10_000, 'stream page (direct load)');
  await admin.fill(tid('restream-url'), `${rtmpBase}/${OUT_NAME}`);
  await admin.click(tid('restream-add'));
  const rRow = admin.locator('tr[data-testid^="restream-row-"]').first();
  await rRow.waitFor({ timeout: 10_000 }).catch(async () => fail(`the restream target is not listed (banner: ${await bannerText(admin)})`));
  const restreamId = idOf(await rRow.getAttribute('data-testid'), 'restream-row-');
  report.restreamId = restreamId;
  await waitText(admin, `restream-state-${restreamId}`, /^live$/, 20_000, 'restream target state');
  await sleep(2000); // let nginx record a little
  await shot(admin, 'stream.png');
  await admin.click(tid(`restream-remove-${restreamId}`));
  await admin.waitForSelector(tid(`restream-row-${restreamId}`), { state: 'detached', timeout: 10_000 })
    .catch(() => fail(`restream target ${restreamId} still listed 10 s after Remove`));
  if (nginx) {
    const flv = join(nginx.dir, 'rec', `${OUT_NAME}.flv`);
    const bytes = await pollUntil(() => { try { return statSync(flv).size || null; } catch (_) { return null; } }, { timeoutMs: 5000, intervalMs: 250 });
    if (!bytes) fail(`nginx recorded nothing of the restream (${flv})`);
    report.restreamBytes = bytes;
  }
  step(`restream ${restreamId} went live and was removed`);

  // 8. Kicking the viewer ends its session for good.
  const kick = admin.locator('[data-testid^="kick-"]');
  await kick.first().waitFor({ timeout: 10_000 }).catch(() => fail('no viewer listed on the stream page'));
  const kicks = await kick.count();
  if (kicks !== 1) fail(`expected 1 viewer on the stream page, found ${kicks}`);
  await kick.first().click();
  const ended = await watch.waitForFunction(() => /ended/i.test(document.querySelector('#status')?.textContent || ''), null, { timeout: 10_000, polling: 200 })
    .then(() => true).catch(() => false);
  if (!ended) fail(`the kicked player's #status does not say "ended" after 10 s: ${JSON.stringify(await watch.textContent('#status').catch(() => '?'))}`);
  await waitText(admin, `viewer-count-${STREAM}`, /^0$/, 10_000, 'viewer count after the kick');
  await sleep(3000); // a kicked player must not come back by itself
  const after = await textOf(admin, `viewer-count-${STREAM}`);
  if (after !== '0') fail(`the kicked viewer came back (viewer count ${after})`);
  await session.screenshot('watch', 'watch-kicked.png');
  step('viewer kicked; player says ended and stays out');

  // 9. Revoking the key with "end sessions" ends the publisher, and the key no longer publishes.
  await navTo(admin, 'keys', `key-revoke-${keyId}`, 'Stream keys page');
  await admin.check(tid(`key-end-sessions-${keyId}`));
  await admin.click(tid(`key-revoke-${keyId}`));
  await waitText(admin, `key-status-${keyId}`, /^revoked$/, 10_000, 'revoked key status');
  const gone = await pollUntil(async () => (await apiGet(admin, `/api/v1/streams/${encodeURIComponent(STREAM)}`)).status() === 404,
    { timeoutMs: 10_000, intervalMs: 500 });
  if (!gone) fail('the stream is still live 10 s after revoking its key with end_sessions=true');
  const pubEnded = await pub.waitForFunction(() => document.querySelector('#state')?.dataset.state !== 'connected', null, { timeout: 20_000, polling: 250 })
    .then(() => true).catch(() => false);
  if (!pubEnded) fail('the publish page still says connected 20 s after its key was revoked with its sessions');
  await shot(admin, 'keys.png');
  await gotoOrFail(pub, `${BASE}/publish/${encodeURIComponent(STREAM)}?token=${encodeURIComponent(secret)}`);
  await fillPublishForm(pub, { codec: CODEC, token: secret });
  const again = await startPublishing(pub);
  if (again.ok) fail('publishing with the revoked key succeeded');
  report.revokedPublish = again;
  const whip = await fetch(`${BASE}/whip/${encodeURIComponent(STREAM)}`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${secret}`, 'Content-Type': 'application/sdp' },
    body: 'v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=rtpmap:96 H264/90000\r\n',
    signal: AbortSignal.timeout(5000),
  }).catch((e) => fail(`POST /whip/${STREAM}: ${e.message}`));
  if (whip.status !== 401) fail(`POST /whip/${STREAM} with the revoked key answered ${whip.status}, expected 401: ${(await whip.text()).slice(0, 200)}`);
  step(`key ${keyId} revoked: publisher ended, publish page refused (${again.error || again.state || again.timeout}), WHIP 401`);

  // 10. API tokens, the audit log and the API docs.
  await navTo(admin, 'tokens', 'token-name', 'API tokens page');
  await admin.fill(tid('token-name'), TOKEN_NAME);
  await admin.click(tid('token-create'));
  await waitVisible(admin, 'token-secret', 10_000, 'new token secret');
  const apiToken = (await textOf(admin, 'token-secret')) || '';
  const withToken = () => fetch(`${BASE}/api/v1/stats`, { headers: { Authorization: `Bearer ${apiToken}` }, signal: AbortSignal.timeout(5000) });
  const okStatus = (await withToken()).status;
  if (okStatus !== 200) fail(`GET /api/v1/stats with the new API token answered ${okStatus}`);
  await shot(admin, 'tokens.png');
  const tokenRow = admin.locator('tr[data-testid^="token-row-"]', { hasText: TOKEN_NAME }).first();
  const tokenId = idOf(await tokenRow.getAttribute('data-testid', { timeout: 5000 }), 'token-row-');
  await admin.click(tid(`token-revoke-${tokenId}`));
  await waitText(admin, `token-status-${tokenId}`, /^revoked$/, 10_000, 'revoked token status');
  const revokedStatus = (await withToken()).status;
  if (revokedStatus !== 401) fail(`GET /api/v1/stats with a revoked API token answered ${revokedStatus}, expected 401`);
  step(`API token ${tokenId} created (200), revoked (401)`);

  await navTo(admin, 'audit', 'audit-table', 'Audit log page');
  await admin.waitForSelector('tr[data-testid^="audit-row-"]', { timeout: 10_000 }).catch(() => fail('the audit log is empty'));
  const actions = await admin.$$eval('tr[data-testid^="audit-row-"] td[data-col="action"]', (tds) => tds.map((t) => t.textContent.trim()));
  report.auditActions = actions;
  for (const [what, re] of [['login', /^login$/], ['key create', /key.?creat/i], ['kick', /kick/i], ['key revoke', /key.?revok/i]]) {
    if (!actions.some((a) => re.test(a))) fail(`the audit log has no ${what} entry (actions: ${actions.join(', ')})`);
  }
  await shot(admin, 'audit.png');
  step('audit log has login, key create, kick, key revoke');

  await gotoOrFail(admin, `${BASE}/api/v1/docs`);
  await admin.waitForSelector(tid('docs-op'), { timeout: 10_000 })
    .catch(async () => fail(`the API docs page rendered no operation: ${await textOf(admin, 'docs-error') || ''}`));
  const ops = await admin.$$eval(tid('docs-op'), (els) => els.map((e) => `${e.dataset.method} ${e.dataset.path}`));
  report.docsOperations = ops.length;
  for (const want of ['GET /api/v1/streams', 'POST /api/v1/keys', 'DELETE /api/v1/streams/{name}/viewers/{session}']) {
    if (!ops.includes(want)) fail(`the API docs lack ${want} (${ops.length} operations shown)`);
  }
  await shot(admin, 'docs.png');
  step(`API docs show ${ops.length} operations`);

  // Logging out ends the session: the panel asks for a login again.
  await gotoOrFail(admin, `${BASE}/admin/audit`);
  await waitVisible(admin, 'logout', 10_000, 'panel');
  await Promise.all([
    admin.waitForURL((u) => u.pathname === '/admin/login', { timeout: 10_000 }).catch(() => fail(`Log out did not reach the login page (at ${admin.url()})`)),
    admin.click(tid('logout')),
  ]);
  await gotoOrFail(admin, `${BASE}/admin/`);
  if (new URL(admin.url()).pathname !== '/admin/login') fail(`after logging out, /admin/ showed ${admin.url()}`);
  step('logged out');
  report.ok = true;
}

await runTest({
  overallTimeoutMs: OVERALL_TIMEOUT_MS,
  run,
  finish: (code, message) => session.finish(code, message, {
    report,
    reportFile: 'admin_e2e.json',
    consoleFile: 'admin_console.log',
    failureShots: [['admin', 'failure-admin.png'], ['publish', 'failure-publish.png'], ['watch', 'failure-watch.png']],
    passMessage: () => `admin panel drove stream "${STREAM}" end to end (${elapsedS().toFixed(1)} s)`,
    announceReport: true,
    cleanup: async () => { if (nginx) nginx.child.kill('SIGTERM'); },
  }),
});
