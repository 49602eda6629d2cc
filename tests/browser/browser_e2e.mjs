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
import {
  BrowserTest, commonEnv, elapsedS, fail, fillPublishForm, firstLine, gotoOrFail, log, runTest, sleep,
  startPublishing, waitForWatchVideo, withToken,
} from './lib.mjs';

const { base: BASE, artifacts: ARTIFACTS, stream: STREAM, codec: CODEC, token: TOKEN } = commonEnv({ defaultStream: 'x' });
const OVERALL_TIMEOUT_MS = 60_000;
const SAMPLE_SECONDS = 5;

const session = new BrowserTest({ artifacts: ARTIFACTS, logResponse: (url) => /\/(whip|whep)\//.test(url) });
const report = { base: BASE, stream: STREAM, codec: CODEC, ok: false, steps: [] };

async function run() {
  log(`gateway ${BASE}, stream "${STREAM}", codec ${CODEC}, artifacts ${ARTIFACTS}`);
  await session.launch({ fakeMedia: true });

  // ---- publisher ----
  const pub = await session.newPage('publish');
  const pubUrl = `${BASE}/publish/${encodeURIComponent(STREAM)}`;
  await gotoOrFail(pub, pubUrl);
  for (const id of ['#mode', '#codec', '#start', '#stop', '#state', '#token']) {
    if (!(await pub.$(id))) fail(`publish page is missing element ${id}`);
  }
  // The page disables, on load, the codecs this browser cannot send.
  const codecDisabled = await pub.$eval('#codec', (s, c) => {
    const o = Array.from(s.options).find((x) => x.value === c);
    return !o ? 'missing' : o.disabled ? 'disabled' : '';
  }, CODEC);
  if (codecDisabled) fail(`codec ${CODEC} is ${codecDisabled} in #codec (browser lacks it?)`);
  await fillPublishForm(pub, { codec: CODEC, token: TOKEN });
  log('publish: clicking #start');
  const pubResult = await startPublishing(pub);
  if (!pubResult.ok) {
    const st = await pub.$eval('#state', (e) => e.textContent).catch(() => '?');
    const error = pubResult.timeout ? `timed out waiting for #state=connected (${pubResult.timeout})` : pubResult.error;
    fail(`publisher did not connect: state=${pubResult.state || st}: ${error || ''}`);
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
  const watch = await session.newPage('watch');
  const watchUrl = withToken(`${BASE}/watch/${encodeURIComponent(STREAM)}`, TOKEN);
  await gotoOrFail(watch, watchUrl);
  if (!(await watch.$('#video'))) fail('watch page is missing #video');

  const dims = await waitForWatchVideo(watch);
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

  await session.screenshot('publish', 'publish.png');
  await session.screenshot('watch', 'watch.png');

  // Best effort: exercise Stop (WHIP DELETE). Not an assertion.
  try {
    await pub.click('#stop', { timeout: 3000 });
    const st = await pub.waitForFunction(() => document.querySelector('#state')?.dataset.state === 'stopped', null, { timeout: 3000 })
      .then(() => 'stopped').catch(() => 'not stopped');
    await sleep(300);
    const err = await pub.$eval('#error', (e) => (e.hidden ? '' : e.textContent)).catch(() => '');
    log(`publish: stop -> ${st}${err ? ` (warning: ${err})` : ''}`);
  } catch (e) {
    log(`publish: stop warning: ${firstLine(e)}`);
  }
  report.ok = true;
}

await runTest({
  overallTimeoutMs: OVERALL_TIMEOUT_MS,
  run,
  finish: (code, message) => session.finish(code, message, {
    report,
    reportFile: 'browser_e2e.json',
    consoleFile: 'browser_console.log',
    failureShots: [['publish', 'failure-publish.png'], ['watch', 'failure-watch.png']],
    passMessage: () => `published ${CODEC} stream "${STREAM}" and played it back via WHEP (${elapsedS().toFixed(1)} s)`,
  }),
});
