#!/usr/bin/env node
// Checks that a stream published from the browser was recorded correctly:
// the catalog lists a complete recording for it, the download serves the
// file, and FFmpeg decodes every frame without an error.
//
//   WHIPCORD_URL     gateway base URL (default http://127.0.0.1:8080)
//   WHIPCORD_STREAM  stream name
//   WHIPCORD_CODEC   video codec that was published (H264, VP8, VP9, AV1)
//   ARTIFACTS_DIR    where the downloaded file is kept
//
// Exit code 0 = pass, 1 = failure (reason printed as "FAIL: ...").
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { commonEnv, failNow as fail, pollUntil } from './lib.mjs';

const { base: BASE, stream: STREAM, codec, artifacts: ARTIFACTS } = commonEnv({ defaultStream: 'x' });
const CODEC = codec.toUpperCase();
const CONTAINER = { H264: 'mp4', H265: 'mp4', AV1: 'mp4', VP8: 'webm', VP9: 'webm' }[CODEC];
const FFPROBE_CODEC = { H264: 'h264', H265: 'hevc', AV1: 'av1', VP8: 'vp8', VP9: 'vp9' }[CODEC];

// The recording is finalised after the publisher leaves, so it may still be in progress.
async function completeRecording() {
  let last = null;
  const done = await pollUntil(async () => {
    const res = await fetch(`${BASE}/api/recordings?stream=${encodeURIComponent(STREAM)}`);
    if (res.status !== 200) fail(`GET /api/recordings answered ${res.status}`);
    last = await res.json();
    return last.items.find((i) => i.state === 'complete');
  }, { timeoutMs: 10_000, intervalMs: 200 });
  if (!done) fail(`no complete recording of ${STREAM}: ${JSON.stringify(last)}`);
  return done;
}

const item = await completeRecording();
if (item.container !== CONTAINER) fail(`${CODEC} recorded as ${item.container}, want ${CONTAINER}`);
if ((item.video_codec || '').toUpperCase() !== CODEC) fail(`catalog video codec ${item.video_codec}`);
if (item.audio_codec !== 'opus') fail(`catalog audio codec ${item.audio_codec}`);
const res = await fetch(`${BASE}${item.download}`);
if (res.status !== 200) fail(`download answered ${res.status}`);
const body = Buffer.from(await res.arrayBuffer());
if (body.length !== item.size_bytes) fail(`downloaded ${body.length} bytes, catalog says ${item.size_bytes}`);
const file = join(ARTIFACTS, item.file_name);
writeFileSync(file, body);

// FFmpeg reports decoding problems on stderr; a clean file prints nothing.
// `-enc_time_base -1` keeps the file's own time base for the null output:
// Chromium ramps its frame rate (20 → 30 fps) while it probes bandwidth,
// and FFmpeg would otherwise round every frame time to 1/20 s (the rate it
// guesses from a WebM file's first frames) and then complain that two
// frames share a tick — a quirk of the null muxer, not of the recording.
const decode = (() => {
  try {
    return execFileSync('sh', ['-c', `ffmpeg -v error -i "$1" -enc_time_base -1 -f null - 2>&1`, 'sh', file], {
      encoding: 'utf8',
      timeout: 60_000,
    }).trim();
  } catch (e) {
    return `ffmpeg failed: ${e.message}`;
  }
})();
if (decode) fail(`FFmpeg reports errors decoding ${file}:\n${decode}`);
const probe = JSON.parse(
  execFileSync(
    'ffprobe',
    ['-v', 'error', '-count_frames', '-show_entries', 'format=duration:stream=codec_type,codec_name,nb_read_frames', '-of', 'json', file],
    { encoding: 'utf8', timeout: 60_000 },
  ),
);
const video = probe.streams.find((s) => s.codec_type === 'video');
const audio = probe.streams.find((s) => s.codec_type === 'audio');
const duration = Number(probe.format.duration);
if (!video || video.codec_name !== FFPROBE_CODEC) fail(`video stream ${JSON.stringify(video)}`);
if (!audio || audio.codec_name !== 'opus') fail(`audio stream ${JSON.stringify(audio)}`);
// The browser test publishes for about 8 s; the fake camera runs at up to
// 30 fps, and Chromium starts lower while it probes bandwidth.
if (!(duration >= 5)) fail(`recording lasts ${duration} s`);
const frames = Number(video.nb_read_frames);
if (!(frames >= duration * 10)) fail(`${frames} video frames in ${duration} s`);
console.log(
  `PASS: ${STREAM} recorded as ${item.file_name} (${CONTAINER}, ${duration.toFixed(2)} s, ${frames} video frames, decodes cleanly)`,
);
