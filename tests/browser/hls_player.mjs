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
import {
  BrowserTest, commonEnv, elapsedS, fail, fillPublishForm, firstLine, gotoOrFail, log, runTest, sleep,
  startPublishing, waitForHlsPlaying, withToken,
} from './lib.mjs';

const { base: BASE, artifacts: ARTIFACTS, stream: STREAM, token: TOKEN, codec: CODEC } = commonEnv({ defaultStream: 'x' });
const PUBLISH = process.env.WHIPCORD_PUBLISH === '1';
const MEASURE = process.env.WHIPCORD_MEASURE_LATENCY === '1';
const PLAY_TIMEOUT_MS = 60_000;   // until whipcordHls.state === 'playing'
const SAMPLE_GAP_MS = 3_000;      // the window the playhead is judged over
const MIN_ADVANCE_S = 1.5;        // currentTime must advance at least this much over SAMPLE_GAP_MS
// hls.js may stall once or twice while the first segments are cut (see
// BENCHMARKS.md, LL-HLS latency): the playhead must advance over some
// SAMPLE_GAP_MS window within this long after playback starts.
const ADVANCE_WITHIN_MS = 15_000;
const SAMPLE_EVERY_MS = 1_000;
const OVERALL_TIMEOUT_MS = 120_000;

const session = new BrowserTest({ artifacts: ARTIFACTS, logResponse: (url) => /\/(whip|whep|hls)\//.test(url) });
const report = { base: BASE, stream: STREAM, ok: false, steps: [] };

async function publish() {
  const pub = await session.newPage('publish');
  await gotoOrFail(pub, `${BASE}/publish/${encodeURIComponent(STREAM)}`);
  await fillPublishForm(pub, { codec: CODEC, token: TOKEN });
  const r = await startPublishing(pub);
  if (!r.ok) {
    const err = await pub.$eval('#error', (e) => (e.hidden ? '' : e.textContent)).catch(() => '');
    fail(`publisher did not connect: ${r.timeout ? `timeout (${r.timeout})` : r.state} ${err}`);
  }
  log(`publish: ${CODEC} fake camera connected`);
  report.steps.push('publisher connected');
}

async function run() {
  log(`gateway ${BASE}, stream "${STREAM}", artifacts ${ARTIFACTS}`);
  await session.launch({ fakeMedia: true });

  if (PUBLISH) await publish();

  // ---- player ----
  const page = await session.newPage('hls');
  const url = withToken(`${BASE}/hls/${encodeURIComponent(STREAM)}/`, TOKEN);
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
  const played = await waitForHlsPlaying(page, { timeoutMs: PLAY_TIMEOUT_MS, pollingMs: 250 });
  if (!played) {
    const st = await page.evaluate(() => ({
      state: window.whipcordHls.state, error: window.whipcordHls.error,
      currentTime: window.whipcordHls.currentTime(), decodedFrames: window.whipcordHls.decodedFrames(),
      status: document.querySelector('#status')?.textContent,
    })).catch((e) => ({ evaluate: firstLine(e) }));
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
  const samples = [await sample()];
  const lag = SAMPLE_GAP_MS / SAMPLE_EVERY_MS;
  let a = samples[0];
  let b = samples[0];
  log(`sample 1: t=${a.currentTime.toFixed(2)} frames=${a.decodedFrames} ${a.width}x${a.height} latency=${a.latency}`);
  for (let i = 1; i <= ADVANCE_WITHIN_MS / SAMPLE_EVERY_MS; i++) {
    await sleep(SAMPLE_EVERY_MS);
    const s = await sample();
    samples.push(s);
    log(`sample ${i + 1}: t=${s.currentTime.toFixed(2)} frames=${s.decodedFrames} ${s.width}x${s.height} latency=${s.latency}`);
    if (i < lag) continue;
    a = samples[i - lag];
    b = s;
    if (b.currentTime - a.currentTime > MIN_ADVANCE_S && b.decodedFrames > a.decodedFrames) break;
  }
  report.samples = samples;
  const dt = b.currentTime - a.currentTime;
  if (!(dt > MIN_ADVANCE_S)) fail(`currentTime advanced ${dt.toFixed(2)} s in the last ${SAMPLE_GAP_MS / 1000} s window of ${ADVANCE_WITHIN_MS / 1000} s (need > ${MIN_ADVANCE_S}): ${JSON.stringify(a)} -> ${JSON.stringify(b)}`);
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

  await session.screenshot('hls', 'hls-player.png');
  report.ok = true;
}

await runTest({
  overallTimeoutMs: OVERALL_TIMEOUT_MS,
  run,
  finish: (code, message) => session.finish(code, message, {
    report,
    reportFile: 'hls_player.json',
    consoleFile: 'hls_console.log',
    failureShots: [['hls', 'failure-hls-player.png'], ['publish', 'failure-hls-publish.png']],
    passMessage: () => `played stream "${STREAM}" over HLS with hls.js (${elapsedS().toFixed(1)} s)`,
  }),
});
