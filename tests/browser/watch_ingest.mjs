#!/usr/bin/env node
// Headless Chromium watches a stream that arrives by RTMP or RTSP (published by FFmpeg or pulled
// from a camera, started by the caller): the picture must decode and advance, and the audio (the
// gateway's Opus transcode of the source's AAC) must decode.
//
//   WHIPCORD_URL     gateway base URL (default http://127.0.0.1:8080)
//   WHIPCORD_STREAM  stream name
//   WHIPCORD_CODEC   the video codec the viewer must decode (default H264)
//   ARTIFACTS_DIR    screenshot + report
//
// Exit code 0 = pass, 1 = failure (reason printed as "FAIL: ...").
import {
  BrowserTest, commonEnv, elapsedS, fail, gotoOrFail, log, pollUntil, runTest, sleep, waitForWatchVideo,
} from './lib.mjs';

const { base: BASE, artifacts: ARTIFACTS, stream: STREAM, codec: CODEC } = commonEnv({ defaultStream: 'cam' });
const OVERALL_TIMEOUT_MS = 60_000;
const SAMPLE_SECONDS = 5;

const session = new BrowserTest({ artifacts: ARTIFACTS, logResponse: (url) => /\/whep\//.test(url) });
const report = { base: BASE, stream: STREAM, codec: CODEC, ok: false, samples: [] };

async function run() {
  log(`gateway ${BASE}, stream "${STREAM}", artifacts ${ARTIFACTS}`);
  const live = await pollUntil(async () => {
    const res = await fetch(`${BASE}/api/streams`).catch(() => null);
    if (!res || res.status !== 200) return null;
    const list = await res.json();
    return (list.streams || []).find((s) => s.name === STREAM);
  }, { timeoutMs: 20_000, intervalMs: 250 });
  if (!live) fail(`stream ${STREAM} never went live`);
  log(`live: ${JSON.stringify(live.codecs)}`);

  await session.launch({ fakeMedia: false });
  const watch = await session.newPage('watch');
  await gotoOrFail(watch, `${BASE}/watch/${encodeURIComponent(STREAM)}`);
  const dims = await waitForWatchVideo(watch);
  log(`watch: video ${dims.w}x${dims.h}`);

  const sample = () => watch.evaluate(() => {
    const s = window.whipcordStats || {};
    return {
      framesDecoded: s.framesDecoded || 0, audioSamples: s.audioSamples || 0,
      audioEnergy: s.audioEnergy || 0, codec: s.codec || '', width: s.width,
    };
  });
  let prev = await sample();
  report.samples.push(prev);
  for (let i = 1; i <= SAMPLE_SECONDS; i++) {
    await sleep(1000);
    const cur = await sample();
    report.samples.push(cur);
    log(`sample ${i}: frames=${cur.framesDecoded} audioSamples=${cur.audioSamples} energy=${cur.audioEnergy.toFixed(4)} codec=${cur.codec}`);
    if (cur.framesDecoded <= prev.framesDecoded) fail(`video stopped decoding at sample ${i}`);
    if (cur.audioSamples <= prev.audioSamples) fail(`audio stopped decoding at sample ${i}`);
    prev = cur;
  }
  const codecs = prev.codec.toLowerCase();
  if (!codecs.includes(CODEC.toLowerCase())) fail(`viewer decoded "${prev.codec}", expected ${CODEC}`);
  if (!codecs.includes('opus')) fail(`viewer audio is "${prev.codec}", expected Opus`);
  // Headless Chromium has no audio output, and its totalAudioEnergy stays 0 even for sound;
  // the transcode's content is checked by rtmp-bridge's to_opus tests (a 1 kHz tone survives).
  report.audioEnergy = prev.audioEnergy;
  await session.screenshot('watch', 'watch.png');
  report.ok = true;
}

await runTest({
  overallTimeoutMs: OVERALL_TIMEOUT_MS,
  run,
  finish: (code, message) => session.finish(code, message, {
    report,
    reportFile: 'watch_ingest.json',
    consoleFile: 'watch_console.log',
    failureShots: [['watch', 'failure-watch.png']],
    passMessage: () => `watched ${STREAM} (${CODEC} + Opus) in Chromium (${elapsedS().toFixed(1)} s)`,
  }),
});
