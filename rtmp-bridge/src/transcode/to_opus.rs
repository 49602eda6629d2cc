//! AAC or G.711 → Opus, 48 kHz stereo, in 20 ms packets: what WebRTC
//! viewers get when an RTMP publisher or an RTSP camera sends AAC or
//! G.711 (PCMU/PCMA), since viewers are offered Opus whatever the source.
//!
//! The chain: decoder (FFmpeg's `aac` with the AudioSpecificConfig as its
//! extradata, or `pcm_mulaw`/`pcm_alaw` at 8 kHz mono) → swresample to
//! packed f32 at 48 kHz (libopus takes only packed s16 or f32, and
//! WebRTC's Opus is always `opus/48000/2`, its RTP clock 48 kHz), stereo,
//! mono duplicated at full level → a FIFO (AAC frames are 1024 samples at
//! the source rate, G.711 packets any length; Opus packets here are 960)
//! → libopus.
//!
//! libopus runs with `application=lowdelay` (CELT only): at 96 kbit/s
//! `audio` would pick CELT anyway, G.711's 4 kHz of speech needs nothing
//! better than CELT at 32 kbit/s, and `lowdelay` drops the SILK/hybrid
//! modes, their mode switches and 4 ms of extra look-ahead. The encoder's
//! pre-skip (120 samples, 2.5 ms) is not removed: RTP has no way to
//! signal it, so every sample plays 2.5 ms after its timestamp, far below
//! what lip sync notices.
//!
//! Timestamps come from a sample counter anchored at the first input
//! frame's timestamp (converted to 48 kHz), never from per-packet
//! arithmetic, so rounding cannot accumulate. The input's timing is
//! checked against the samples decoded so far (the transcoders' shared
//! `Drift` policy): a gap up to 1 s (loss, undecodable frames) is filled
//! with silence, so the counter stays the timeline and viewers' jitter
//! buffers get a steady packet every 20 ms rather than holes to conceal;
//! an input more than 20 ms early loses its overlap; a jump of more than
//! 1 s either way (a long gap, a source clock jump or reset) ends the
//! segment, its last partial packet padded with silence, and anchors the
//! counter again at the jumping frame. Output timestamps then follow the
//! input's, backwards too: keeping the RTP timeline monotonic is the
//! packetizer's job, as it is for audio that passes through.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::time::Duration;

use bytes::Bytes;
use ffmpeg::codec::{self, Id};
use ffmpeg::format::Sample;
use ffmpeg::format::sample::Type as SampleType;
use ffmpeg::software::resampling;
use ffmpeg::{ChannelLayout, Dictionary, Packet, frame};
use ffmpeg_next as ffmpeg;
use recorder::params::AacConfig;
use tracing::info;

use super::{CpuTimer, Drift, TranscodeError, log_dropped, set_extradata, single_threaded};

/// The output's sample rate, and the clock of [`OpusPacket::timestamp`].
pub const OPUS_SAMPLE_RATE: u32 = 48_000;
const RATE: i64 = OPUS_SAMPLE_RATE as i64;
const CHANNELS: usize = 2;
/// 20 ms, WebRTC's usual packet duration.
const FRAME_SAMPLES: usize = 960;
const FRAME_VALUES: usize = FRAME_SAMPLES * CHANNELS;
/// AAC sources are mostly music and speech from streaming software.
const AAC_BITRATE: usize = 96_000;
/// G.711 carries 4 kHz of audio bandwidth: more bits would buy nothing.
const G711_BITRATE: usize = 32_000;
const G711_RATE: u32 = 8_000;
/// Input rates taken: AAC's lowest to twice its highest (SBR). Outside,
/// a config or stream is broken, and the resampler's output for a frame
/// would be absurdly large.
const RATES_IN: RangeInclusive<u32> = 7_350..=192_000;
/// Room in the resampler's output beyond what the input makes: it holds
/// back the tail of its filter (32 taps at the input rate), which comes
/// out with the next call; without room it would be held longer still.
const RESAMPLE_SLACK: usize = 256;
/// Bounds the resampler's drain loop (each call empties most of it).
const MAX_DRAIN_CALLS: usize = 8;

/// What the transcoder is fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpusSource {
    /// Raw AAC access units (no ADTS header). `config` is the
    /// AudioSpecificConfig (RTMP sequence header, RTSP `config=`).
    Aac { config: Bytes },
    /// G.711 μ-law (PCMU), 8 kHz mono.
    G711u,
    /// G.711 A-law (PCMA), 8 kHz mono.
    G711a,
}

/// One Opus packet: 20 ms, 48 kHz stereo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusPacket {
    pub data: Bytes,
    /// The time of its first sample, in 48 kHz samples; the input's
    /// timestamps rescaled (see the module documentation).
    pub timestamp: i64,
}

/// Counters since the transcoder was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToOpusStats {
    pub frames_in: u64,
    pub packets_out: u64,
    /// Input frames that could not be decoded (or converted): dropped,
    /// the gap they leave is filled with silence like any other.
    pub frames_dropped: u64,
    /// 20 ms frames the Opus encoder refused: their time passes unsent.
    pub encoder_errors: u64,
    /// 48 kHz samples of silence put into gaps of the input.
    pub silence_samples: u64,
    /// 48 kHz samples dropped because their input came early.
    pub trimmed_samples: u64,
    /// Input timestamp jumps of more than 1 s: the output was re-anchored.
    pub reanchors: u64,
}

/// AAC or G.711 → Opus; see the module documentation.
///
/// Synchronous and single-threaded like the other stages: the caller
/// decides which thread it runs on, and [`ToOpus::cpu_time`] is its whole
/// cost.
pub struct ToOpus {
    decoder: codec::decoder::Audio,
    /// Names the decoder in logs.
    decoder_name: &'static str,
    encoder: codec::encoder::audio::Encoder,
    rate_in: u32,
    resampler: Option<Resampler>,
    /// Interleaved stereo samples not yet in a whole Opus frame.
    fifo: Vec<f32>,
    /// `None` until the first decoded frame, and after [`ToOpus::flush`].
    timeline: Option<Timeline>,
    /// Output timestamps of the frames inside the encoder, oldest first
    /// (libopus returns one packet per frame, in order).
    in_encoder: VecDeque<i64>,
    /// The encoder's own clock: monotonic, whatever the timeline does.
    encoder_pts: i64,
    packet: Packet,
    stats: ToOpusStats,
    cpu: Duration,
}

struct Resampler {
    ctx: resampling::Context,
    /// The decoded format it converts: sample format, layout, rate.
    input: (Sample, u64, u32),
    /// Output channels: mono stays mono here and is duplicated into the
    /// FIFO at full level (swresample would mix it 3 dB down into each
    /// side); anything else becomes stereo.
    channels: usize,
    /// Its output, reused; allocated for `room` samples, the most the
    /// resampler writes per call.
    out: frame::Audio,
    room: usize,
}

impl Resampler {
    fn new(
        input: (Sample, u64, u32),
        layout: ChannelLayout,
        channels: u16,
    ) -> Result<Self, ffmpeg::Error> {
        let out_layout = if channels == 1 {
            ChannelLayout::MONO
        } else {
            ChannelLayout::STEREO
        };
        let ctx = resampling::Context::get(
            input.0,
            layout,
            input.2,
            Sample::F32(SampleType::Packed),
            out_layout,
            OPUS_SAMPLE_RATE,
        )?;
        Ok(Self {
            ctx,
            input,
            channels: if channels == 1 { 1 } else { CHANNELS },
            out: frame::Audio::empty(),
            room: 0,
        })
    }

    /// Converts `frame`, or drains the held-back samples with `None`;
    /// returns the output, interleaved.
    fn run(&mut self, frame: Option<&frame::Audio>, room: usize) -> Result<&[f32], ffmpeg::Error> {
        if room > self.room {
            let layout = if self.channels == 1 {
                ChannelLayout::MONO
            } else {
                ChannelLayout::STEREO
            };
            let out = frame::Audio::new(Sample::F32(SampleType::Packed), room, layout);
            // ffmpeg-next ignores allocation failure: a frame without a
            // buffer has no planes.
            if out.planes() != 1 || out.samples() != room {
                return Err(ffmpeg::Error::Other {
                    errno: libc::ENOMEM,
                });
            }
            self.out = out;
            self.room = room;
        }
        // The resampler writes up to `nb_samples` and sets it to what it
        // wrote: the whole room again for each call.
        self.out.set_samples(self.room);
        match frame {
            Some(frame) => self.ctx.run(frame, &mut self.out)?,
            None => self.ctx.flush(&mut self.out)?,
        };
        let n = self.out.samples();
        if n == 0 || self.out.planes() != 1 {
            return Ok(&[]);
        }
        Ok(self
            .out
            .plane::<f32>(0)
            .get(..n * self.channels)
            .unwrap_or_default())
    }
}

/// One segment of the output: its anchor, and how far the input and the
/// output have come since.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    /// 48 kHz timestamp of the segment's first sample.
    anchor: i64,
    /// Where the input placed so far ends, in 48 kHz samples after the
    /// anchor, leaving out `in_samples` (counted at their own rate, so
    /// converting them never rounds more than once).
    placed: i64,
    /// Decoded samples at `in_rate` not yet in `placed`.
    in_samples: i64,
    in_rate: u32,
    /// Output samples still to drop (an early input's overlap).
    skip: usize,
    /// Samples given to the encoder since the anchor: the next frame's
    /// timestamp is `anchor + encoded`.
    encoded: i64,
}

impl Timeline {
    fn new(anchor: i64, in_rate: u32) -> Self {
        Self {
            anchor,
            placed: 0,
            in_samples: 0,
            in_rate,
            skip: 0,
            encoded: 0,
        }
    }

    /// The 48 kHz timestamp just after the input placed so far.
    fn end(&self) -> i64 {
        self.anchor
            .saturating_add(self.placed)
            .saturating_add(rescale(self.in_samples, self.in_rate, RATE))
    }

    fn add_input(&mut self, samples: usize, rate: u32) {
        if rate != self.in_rate {
            // AAC's implicit SBR, or a decoder reconfigured by the stream.
            self.placed += rescale(self.in_samples, self.in_rate, RATE);
            self.in_samples = 0;
            self.in_rate = rate;
        }
        self.in_samples += samples as i64;
    }
}

impl ToOpus {
    pub fn new(source: OpusSource) -> Result<Self, TranscodeError> {
        super::init()?;
        let (decoder, decoder_name, rate_in, bitrate) = match &source {
            OpusSource::Aac { config } => {
                let asc = AacConfig::parse(config)
                    .filter(|asc| RATES_IN.contains(&asc.sample_rate))
                    .ok_or_else(|| TranscodeError::AudioSpecificConfig(config.to_vec()))?;
                // The core's rate: an access unit is 1024 core samples,
                // the clock everything downstream times AAC by.
                (
                    open_aac_decoder(config)?,
                    "AAC decoder",
                    asc.sample_rate,
                    AAC_BITRATE,
                )
            }
            OpusSource::G711u => (
                open_g711_decoder(Id::PCM_MULAW, "G.711 μ-law decoder")?,
                "G.711 μ-law decoder",
                G711_RATE,
                G711_BITRATE,
            ),
            OpusSource::G711a => (
                open_g711_decoder(Id::PCM_ALAW, "G.711 A-law decoder")?,
                "G.711 A-law decoder",
                G711_RATE,
                G711_BITRATE,
            ),
        };
        let encoder = open_encoder(bitrate)?;
        if encoder.frame_size() as usize != FRAME_SAMPLES {
            return Err(TranscodeError::Config {
                what: "Opus encoder",
                message: format!(
                    "frame size {}, expected {FRAME_SAMPLES}",
                    encoder.frame_size()
                ),
            });
        }
        Ok(Self {
            decoder,
            decoder_name,
            encoder,
            rate_in,
            resampler: None,
            fifo: Vec::new(),
            timeline: None,
            in_encoder: VecDeque::new(),
            encoder_pts: 0,
            packet: Packet::empty(),
            stats: ToOpusStats::default(),
            cpu: Duration::ZERO,
        })
    }

    /// The clock of [`ToOpus::push`]'s timestamps: AAC, the core sampling
    /// rate of its AudioSpecificConfig; G.711, 8000.
    pub fn sample_rate_in(&self) -> u32 {
        self.rate_in
    }

    /// Transcodes one input frame (a raw AAC access unit, or G.711 bytes)
    /// whose first sample is at `timestamp` (unwrapped, at
    /// [`ToOpus::sample_rate_in`]); appends the Opus packets that became
    /// complete to `out`. A frame that cannot be decoded is counted in
    /// [`ToOpusStats::frames_dropped`] and logged (rate-limited); the
    /// transcoder goes on with the next.
    pub fn push(&mut self, data: &[u8], timestamp: i64, out: &mut Vec<OpusPacket>) {
        let cpu = CpuTimer::start();
        self.stats.frames_in += 1;
        if let Err(err) = self.transcode(data, timestamp, out) {
            self.stats.frames_dropped += 1;
            log_dropped(self.decoder_name, self.stats.frames_dropped, &err);
        }
        self.cpu += cpu.elapsed();
    }

    /// Ends the current segment: what is buffered comes out, the last
    /// packet padded with silence. The next frame pushed anchors a new
    /// segment at its own timestamp.
    pub fn flush(&mut self, out: &mut Vec<OpusPacket>) {
        let cpu = CpuTimer::start();
        self.close_segment(out);
        self.timeline = None;
        self.cpu += cpu.elapsed();
    }

    pub fn stats(&self) -> ToOpusStats {
        self.stats
    }

    /// Thread CPU time spent in [`ToOpus::push`] and [`ToOpus::flush`].
    pub fn cpu_time(&self) -> Duration {
        self.cpu
    }

    fn transcode(
        &mut self,
        data: &[u8],
        timestamp: i64,
        out: &mut Vec<OpusPacket>,
    ) -> Result<(), ffmpeg::Error> {
        if data.is_empty() {
            // An empty packet means end of stream to FFmpeg: the decoder
            // would take no more.
            return Err(ffmpeg::Error::InvalidData);
        }
        self.decoder.send_packet(&Packet::copy(data))?;
        let mut decoded = frame::Audio::empty();
        let mut first = true;
        loop {
            match self.decoder.receive_frame(&mut decoded) {
                Ok(()) => {}
                Err(ffmpeg::Error::Other {
                    errno: ffmpeg::util::error::EAGAIN,
                })
                | Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(err) => return Err(err),
            }
            let (samples, rate) = (decoded.samples(), decoded.rate());
            if samples == 0 {
                continue;
            }
            if !RATES_IN.contains(&rate) {
                return Err(ffmpeg::Error::InvalidData);
            }
            if first {
                // Only the packet's first frame starts at `timestamp`.
                self.place(timestamp, rate, out);
                first = false;
            }
            self.resample(&mut decoded)?;
            // Counted once converted: a frame that fails leaves a gap,
            // which the next one fills, rather than shifting what follows.
            if let Some(timeline) = self.timeline.as_mut() {
                timeline.add_input(samples, rate);
            }
            self.encode_whole_frames(out);
        }
    }

    /// Fits a frame starting at `timestamp` (input clock) onto the
    /// timeline: anchors the first, fills a gap before it, re-anchors
    /// after a jump, or marks the overlap of an early one for dropping.
    fn place(&mut self, timestamp: i64, rate: u32, out: &mut Vec<OpusPacket>) {
        let at = rescale(timestamp, self.rate_in, RATE);
        let Some(timeline) = self.timeline.as_mut() else {
            self.timeline = Some(Timeline::new(at, rate));
            return;
        };
        let drift = at.saturating_sub(timeline.end());
        match Drift::of(drift, RATE) {
            Drift::OnTime => {}
            Drift::Gap(gap) => {
                timeline.placed += gap;
                // The resampler's held-back tail belongs before the
                // silence; draining it also ends its filter as if the
                // input had gone quiet, which it had.
                self.drain_resampler();
                let gap = usize::try_from(gap).unwrap_or(0);
                self.fifo.resize(self.fifo.len() + gap * CHANNELS, 0.0);
                self.stats.silence_samples += gap as u64;
            }
            Drift::Early(early) => {
                timeline.placed -= early;
                timeline.skip += usize::try_from(early).unwrap_or(0);
            }
            Drift::Reanchor => {
                self.close_segment(out);
                self.stats.reanchors += 1;
                let count = self.stats.reanchors;
                if count == 1 || count.is_multiple_of(500) {
                    info!(
                        "{}: input time jumped by {drift} samples at 48 kHz: Opus timestamps anchored again ({count} so far)",
                        self.decoder_name
                    );
                }
                self.timeline = Some(Timeline::new(at, rate));
            }
        }
    }

    /// Converts a decoded frame into the FIFO, (re)making the resampler
    /// when the decoded format changes.
    fn resample(&mut self, decoded: &mut frame::Audio) -> Result<(), ffmpeg::Error> {
        let channels = decoded.channels();
        if channels == 0 {
            return Err(ffmpeg::Error::InvalidData);
        }
        let mut layout = decoded.channel_layout();
        if layout.bits() == 0 || layout.channels() != i32::from(channels) {
            // A decoder that gives only a channel count: the resampler
            // needs a layout, and checks the frame against its own.
            layout = ChannelLayout::default(i32::from(channels));
            decoded.set_channel_layout(layout);
        }
        let input = (decoded.format(), layout.bits(), decoded.rate());
        if self.resampler.as_ref().is_none_or(|r| r.input != input) {
            self.drain_resampler();
            self.resampler = Some(Resampler::new(input, layout, channels)?);
        }
        let room = decoded.samples() * OPUS_SAMPLE_RATE as usize / input.2 as usize;
        self.convert(Some(decoded), room + RESAMPLE_SLACK)?;
        Ok(())
    }

    /// Runs the resampler (`None`: drains it) into the FIFO, less any
    /// overlap still to drop; returns how many samples it gave.
    fn convert(
        &mut self,
        frame: Option<&frame::Audio>,
        room: usize,
    ) -> Result<usize, ffmpeg::Error> {
        let Some(resampler) = self.resampler.as_mut() else {
            return Ok(0);
        };
        let channels = resampler.channels;
        let values = resampler.run(frame, room)?;
        let n = values.len() / channels;
        let skip = self.timeline.as_ref().map_or(0, |t| t.skip).min(n);
        let values = values.get(skip * channels..).unwrap_or_default();
        if channels == 1 {
            self.fifo.extend(values.iter().flat_map(|v| [*v, *v]));
        } else {
            self.fifo.extend_from_slice(values);
        }
        if let Some(timeline) = self.timeline.as_mut() {
            timeline.skip -= skip;
        }
        self.stats.trimmed_samples += skip as u64;
        Ok(n)
    }

    /// Empties the resampler's held-back samples into the FIFO and drops
    /// it; the next frame makes a fresh one.
    fn drain_resampler(&mut self) {
        for _ in 0..MAX_DRAIN_CALLS {
            match self.convert(None, RESAMPLE_SLACK) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => {
                    log_dropped("resampler flush", 1, &err);
                    break;
                }
            }
        }
        self.resampler = None;
    }

    /// Ends a segment on a packet boundary: the resampler's tail, then
    /// silence up to a whole packet, all encoded.
    fn close_segment(&mut self, out: &mut Vec<OpusPacket>) {
        self.drain_resampler();
        let partial = self.fifo.len() % FRAME_VALUES;
        if partial != 0 {
            self.fifo
                .resize(self.fifo.len() + FRAME_VALUES - partial, 0.0);
        }
        self.encode_whole_frames(out);
    }

    fn encode_whole_frames(&mut self, out: &mut Vec<OpusPacket>) {
        while self.fifo.len() >= FRAME_VALUES {
            let Some(timeline) = self.timeline.as_mut() else {
                // Samples only come in with a timeline; without one they
                // have no time to be sent at.
                self.fifo.clear();
                return;
            };
            let timestamp = timeline.anchor.saturating_add(timeline.encoded);
            timeline.encoded += FRAME_SAMPLES as i64;
            // A fresh frame each time: the encoder may keep a reference
            // to the last one it was given.
            let mut frame = frame::Audio::new(
                Sample::F32(SampleType::Packed),
                FRAME_SAMPLES,
                ChannelLayout::STEREO,
            );
            frame.set_rate(OPUS_SAMPLE_RATE);
            frame.set_pts(Some(self.encoder_pts));
            self.encoder_pts += FRAME_SAMPLES as i64;
            let filled = frame.planes() == 1
                && frame.samples() == FRAME_SAMPLES
                && frame
                    .plane_mut::<f32>(0)
                    .get_mut(..FRAME_VALUES)
                    .map(|dst| dst.copy_from_slice(&self.fifo[..FRAME_VALUES]))
                    .is_some();
            self.fifo.drain(..FRAME_VALUES);
            let sent = if filled {
                self.encoder.send_frame(&frame)
            } else {
                Err(ffmpeg::Error::Bug)
            };
            match sent {
                Ok(()) => self.in_encoder.push_back(timestamp),
                Err(err) => {
                    self.stats.encoder_errors += 1;
                    log_dropped("Opus encoder", self.stats.encoder_errors, &err);
                    continue;
                }
            }
            self.receive_packets(out);
        }
    }

    fn receive_packets(&mut self, out: &mut Vec<OpusPacket>) {
        while self.encoder.receive_packet(&mut self.packet).is_ok() {
            let Some(timestamp) = self.in_encoder.pop_front() else {
                continue;
            };
            let Some(data) = self.packet.data() else {
                continue;
            };
            out.push(OpusPacket {
                data: Bytes::copy_from_slice(data),
                timestamp,
            });
            self.stats.packets_out += 1;
        }
    }
}

fn open_aac_decoder(config: &[u8]) -> Result<codec::decoder::Audio, TranscodeError> {
    const WHAT: &str = "AAC decoder";
    let codec = codec::decoder::find(Id::AAC).ok_or(TranscodeError::Missing(WHAT))?;
    let mut ctx = codec::Context::new_with_codec(codec);
    single_threaded(&mut ctx);
    // Raw access units carry no configuration of their own (ADTS would).
    set_extradata(&mut ctx, config)?;
    ctx.decoder()
        .open_as(codec)
        .and_then(|d| d.audio())
        .map_err(|e| TranscodeError::open(WHAT, e))
}

fn open_g711_decoder(id: Id, what: &'static str) -> Result<codec::decoder::Audio, TranscodeError> {
    let codec = codec::decoder::find(id).ok_or(TranscodeError::Missing(what))?;
    let mut ctx = codec::Context::new_with_codec(codec);
    single_threaded(&mut ctx);
    // G.711 bytes say nothing about rate or channels: RTP's PCMU/PCMA
    // without parameters are 8 kHz mono.
    let mut options = Dictionary::new();
    options.set("ch_layout", "mono");
    options.set("ar", &G711_RATE.to_string());
    ctx.decoder()
        .open_as_with(codec, options)
        .and_then(|d| d.audio())
        .map_err(|e| TranscodeError::open(what, e))
}

fn open_encoder(bitrate: usize) -> Result<codec::encoder::audio::Encoder, TranscodeError> {
    const WHAT: &str = "Opus encoder (libopus)";
    // libopus, not FFmpeg's own `opus` encoder: that one is experimental.
    let codec = codec::encoder::find_by_name("libopus").ok_or(TranscodeError::Missing(WHAT))?;
    let mut ctx = codec::Context::new_with_codec(codec);
    single_threaded(&mut ctx);
    let mut encoder = ctx
        .encoder()
        .audio()
        .map_err(|e| TranscodeError::open(WHAT, e))?;
    encoder.set_rate(OPUS_SAMPLE_RATE as i32);
    encoder.set_channel_layout(ChannelLayout::STEREO);
    encoder.set_format(Sample::F32(SampleType::Packed));
    encoder.set_bit_rate(bitrate);
    encoder.set_time_base((1, OPUS_SAMPLE_RATE as i32));
    let mut options = Dictionary::new();
    options.set("application", "lowdelay");
    options.set("frame_duration", "20");
    encoder
        .open_as_with(codec, options)
        .map_err(|e| TranscodeError::open(WHAT, e))
}

/// `value` at rate `from` in units of rate `to`, rounded to the nearest,
/// saturating.
fn rescale(value: i64, from: u32, to: i64) -> i64 {
    let from = i128::from(from.max(1));
    let scaled = (i128::from(value) * i128::from(to) * 2 + from).div_euclid(2 * from);
    i64::try_from(scaled).unwrap_or(if scaled < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::super::audio::{append_stereo, open_decoder as open_opus_decoder};
    use super::super::extradata;
    use super::*;

    const TONE_HZ: f64 = 1000.0;

    /// `seconds` of a 1 kHz sine at `rate`, planar, `channels` equal ones.
    fn sine(rate: u32, channels: usize, seconds: f64) -> Vec<Vec<f32>> {
        let n = (f64::from(rate) * seconds) as usize;
        let wave: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f64 / f64::from(rate);
                (0.5 * (2.0 * std::f64::consts::PI * TONE_HZ * t).sin()) as f32
            })
            .collect();
        vec![wave; channels]
    }

    /// Encodes planar f32 with FFmpeg's `aac`: (AudioSpecificConfig, raw
    /// access units).
    fn encode_aac(rate: u32, planes: &[Vec<f32>]) -> (Bytes, Vec<Bytes>) {
        crate::transcode::init().expect("FFmpeg");
        let layout = ChannelLayout::default(planes.len() as i32);
        let codec = codec::encoder::find(Id::AAC).expect("aac encoder");
        let mut ctx = codec::Context::new_with_codec(codec);
        ctx.set_flags(codec::Flags::GLOBAL_HEADER);
        let mut encoder = ctx.encoder().audio().expect("audio encoder");
        encoder.set_rate(rate as i32);
        encoder.set_channel_layout(layout);
        encoder.set_format(Sample::F32(SampleType::Planar));
        encoder.set_bit_rate(128_000);
        encoder.set_time_base((1, rate as i32));
        let mut encoder = encoder.open_as(codec).expect("open aac");
        let asc = Bytes::copy_from_slice(extradata(&encoder));
        let frame_size = encoder.frame_size() as usize;
        let mut aus = Vec::new();
        let mut packet = Packet::empty();
        let total = planes[0].len();
        let mut pos = 0;
        while pos < total {
            let n = frame_size.min(total - pos);
            let mut frame = frame::Audio::new(Sample::F32(SampleType::Planar), n, layout);
            frame.set_rate(rate);
            frame.set_pts(Some(pos as i64));
            for (c, plane) in planes.iter().enumerate() {
                frame.plane_mut::<f32>(c)[..n].copy_from_slice(&plane[pos..pos + n]);
            }
            encoder.send_frame(&frame).expect("send");
            while encoder.receive_packet(&mut packet).is_ok() {
                aus.push(Bytes::copy_from_slice(packet.data().expect("data")));
            }
            pos += n;
        }
        encoder.send_eof().expect("eof");
        while encoder.receive_packet(&mut packet).is_ok() {
            aus.push(Bytes::copy_from_slice(packet.data().expect("data")));
        }
        (asc, aus)
    }

    /// G.711 μ-law bytes of a mono signal, by FFmpeg's `pcm_mulaw`.
    fn encode_mulaw(wave: &[f32]) -> Vec<u8> {
        crate::transcode::init().expect("FFmpeg");
        let codec = codec::encoder::find(Id::PCM_MULAW).expect("pcm_mulaw");
        let ctx = codec::Context::new_with_codec(codec);
        let mut encoder = ctx.encoder().audio().expect("audio encoder");
        encoder.set_rate(G711_RATE as i32);
        encoder.set_channel_layout(ChannelLayout::MONO);
        encoder.set_format(Sample::I16(SampleType::Packed));
        encoder.set_time_base((1, G711_RATE as i32));
        let mut encoder = encoder.open_as(codec).expect("open pcm_mulaw");
        let mut frame = frame::Audio::new(
            Sample::I16(SampleType::Packed),
            wave.len(),
            ChannelLayout::MONO,
        );
        frame.set_rate(G711_RATE);
        frame.set_pts(Some(0));
        for (dst, src) in frame.plane_mut::<i16>(0).iter_mut().zip(wave) {
            *dst = (src * 32767.0) as i16;
        }
        encoder.send_frame(&frame).expect("send");
        let mut packet = Packet::empty();
        let mut bytes = Vec::new();
        while encoder.receive_packet(&mut packet).is_ok() {
            bytes.extend_from_slice(packet.data().expect("data"));
        }
        assert_eq!(bytes.len(), wave.len());
        bytes
    }

    /// Decodes Opus packets (stereo, 48 kHz) with FFmpeg's decoder.
    fn decode_opus(packets: &[OpusPacket]) -> [Vec<f32>; 2] {
        let mut decoder = open_opus_decoder().expect("opus decoder");
        let mut decoded = frame::Audio::empty();
        let mut out = [Vec::new(), Vec::new()];
        for p in packets {
            decoder.send_packet(&Packet::copy(&p.data)).expect("decode");
            while decoder.receive_frame(&mut decoded).is_ok() {
                append_stereo(&decoded, &mut out).expect("stereo");
            }
        }
        out
    }

    /// Share of `x`'s energy at 1 kHz (Goertzel): about 1 for a pure tone.
    fn tone_share(x: &[f32]) -> f64 {
        let w = 2.0 * std::f64::consts::PI * TONE_HZ / f64::from(OPUS_SAMPLE_RATE);
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s0 = f64::from(v) + coeff * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        let energy: f64 = x.iter().map(|v| f64::from(*v).powi(2)).sum();
        if energy == 0.0 {
            return 0.0;
        }
        2.0 * power / (x.len() as f64 * energy)
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
    }

    /// Positive-going zero crossings per second: the tone's frequency.
    fn crossings_per_second(x: &[f32]) -> f64 {
        let n = x.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        n as f64 * f64::from(OPUS_SAMPLE_RATE) / x.len() as f64
    }

    /// The decoded audio is the tone, away from the edges.
    fn assert_tone(packets: &[OpusPacket]) {
        let decoded = decode_opus(packets);
        for channel in &decoded {
            let edge = RATE as usize / 10;
            assert!(channel.len() > 4 * edge, "{} samples", channel.len());
            let middle = &channel[edge..channel.len() - edge];
            let share = tone_share(middle);
            let level = rms(middle);
            let freq = crossings_per_second(middle);
            assert!(share > 0.95, "1 kHz share {share}");
            // The tone's level (0.35): mono is not mixed 3 dB down.
            assert!(level > 0.3, "rms {level}");
            assert!((freq - TONE_HZ).abs() < 10.0, "{freq} crossings/s");
        }
    }

    fn assert_continuous(packets: &[OpusPacket], first: i64) {
        assert_eq!(packets.first().map(|p| p.timestamp), Some(first));
        for w in packets.windows(2) {
            assert_eq!(w[1].timestamp - w[0].timestamp, FRAME_SAMPLES as i64);
        }
    }

    fn aac_round_trip(rate: u32, channels: usize) {
        let (asc, aus) = encode_aac(rate, &sine(rate, channels, 2.0));
        let mut stage = ToOpus::new(OpusSource::Aac { config: asc }).expect("ToOpus");
        assert_eq!(stage.sample_rate_in(), rate);
        // Not zero: the anchor is the first timestamp, converted.
        let base = 7 * i64::from(rate);
        let mut out = Vec::new();
        for (n, au) in aus.iter().enumerate() {
            stage.push(au, base + n as i64 * 1024, &mut out);
        }
        stage.flush(&mut out);
        let stats = stage.stats();
        assert_eq!(stats.frames_dropped, 0);
        assert_eq!(stats.silence_samples, 0);
        assert_eq!(stats.reanchors, 0);
        assert_continuous(&out, 7 * RATE);
        let input = rescale(aus.len() as i64 * 1024, rate, RATE);
        let output = (out.len() * FRAME_SAMPLES) as i64;
        assert!((output - input).abs() <= RATE / 25, "{output} vs {input}");
        assert_tone(&out);
    }

    #[test]
    fn to_opus_aac_44100_stereo() {
        aac_round_trip(44_100, 2);
    }

    #[test]
    fn to_opus_aac_48000_mono() {
        aac_round_trip(48_000, 1);
    }

    #[test]
    fn to_opus_g711_mulaw() {
        let wave = &sine(G711_RATE, 1, 2.0)[0];
        let bytes = encode_mulaw(wave);
        let mut stage = ToOpus::new(OpusSource::G711u).expect("ToOpus");
        assert_eq!(stage.sample_rate_in(), G711_RATE);
        let mut out = Vec::new();
        let base = 123_456;
        for (n, chunk) in bytes.chunks(160).enumerate() {
            stage.push(chunk, base + n as i64 * 160, &mut out);
        }
        stage.flush(&mut out);
        assert_eq!(stage.stats().frames_dropped, 0);
        assert_continuous(&out, base * 6);
        let output = (out.len() * FRAME_SAMPLES) as i64;
        assert!((output - 2 * RATE).abs() <= RATE / 25, "{output}");
        assert_tone(&out);
    }

    #[test]
    fn to_opus_g711_alaw_opens() {
        let mut stage = ToOpus::new(OpusSource::G711a).expect("ToOpus");
        let mut out = Vec::new();
        for n in 0..10 {
            stage.push(&[0xd5; 160], n * 160, &mut out);
        }
        assert_eq!(stage.stats().frames_dropped, 0);
        assert!(out.len() >= 7, "{} packets", out.len());
    }

    /// Segments of consecutive timestamps: (first timestamp, packets).
    fn segments(packets: &[OpusPacket]) -> Vec<(i64, usize)> {
        let mut segments: Vec<(i64, usize)> = Vec::new();
        let mut next = None;
        for p in packets {
            match segments.last_mut() {
                Some(last) if next == Some(p.timestamp) => last.1 += 1,
                _ => segments.push((p.timestamp, 1)),
            }
            next = Some(p.timestamp + FRAME_SAMPLES as i64);
        }
        segments
    }

    #[test]
    fn to_opus_jumps_reanchor() {
        let bytes = encode_mulaw(&sine(G711_RATE, 1, 1.0)[0]);
        let mut stage = ToOpus::new(OpusSource::G711u).expect("ToOpus");
        let mut out = Vec::new();
        // One second each: from 0, then 10 s later than expected, then
        // the source clock reset to 0.
        for base in [0, 11 * 8_000, 0] {
            for (n, chunk) in bytes.chunks(160).enumerate() {
                stage.push(chunk, base + n as i64 * 160, &mut out);
            }
        }
        stage.flush(&mut out);
        let stats = stage.stats();
        assert_eq!(stats.reanchors, 2);
        assert_eq!(stats.silence_samples, 0);
        let segments = segments(&out);
        assert_eq!(segments.len(), 3, "{segments:?}");
        assert_eq!(segments[0].0, 0);
        assert_eq!(segments[1].0, 11 * RATE);
        assert_eq!(segments[2].0, 0);
        for (_, packets) in segments {
            // 1 s is 50 packets; the last may be padded.
            assert!((50..=51).contains(&packets), "{packets} packets");
        }
    }

    #[test]
    fn to_opus_short_gap_is_filled() {
        let bytes = encode_mulaw(&sine(G711_RATE, 1, 2.0)[0]);
        let mut stage = ToOpus::new(OpusSource::G711u).expect("ToOpus");
        let mut out = Vec::new();
        for (n, chunk) in bytes.chunks(160).enumerate() {
            // 200 ms missing in the middle (loss, or a DTX-like pause).
            if (40..50).contains(&n) {
                continue;
            }
            stage.push(chunk, n as i64 * 160, &mut out);
        }
        stage.flush(&mut out);
        let stats = stage.stats();
        assert_eq!(stats.reanchors, 0);
        assert_eq!(stats.silence_samples, 9_600);
        assert_continuous(&out, 0);
        let output = (out.len() * FRAME_SAMPLES) as i64;
        assert!((output - 2 * RATE).abs() <= RATE / 25, "{output}");
    }

    #[test]
    fn to_opus_early_input_is_trimmed() {
        let bytes = encode_mulaw(&sine(G711_RATE, 1, 2.0)[0]);
        let mut stage = ToOpus::new(OpusSource::G711u).expect("ToOpus");
        let mut out = Vec::new();
        for (n, chunk) in bytes.chunks(160).enumerate() {
            // From the 50th packet on, timestamps are 100 ms earlier: a
            // source sending more audio than its clock says.
            let early = if n >= 50 { 800 } else { 0 };
            stage.push(chunk, n as i64 * 160 - early, &mut out);
        }
        stage.flush(&mut out);
        let stats = stage.stats();
        assert_eq!(stats.reanchors, 0);
        assert_eq!(stats.trimmed_samples, 4_800);
        assert_continuous(&out, 0);
        let output = (out.len() * FRAME_SAMPLES) as i64;
        let expected = 2 * RATE - 4_800;
        assert!((output - expected).abs() <= RATE / 25, "{output}");
    }

    #[test]
    fn to_opus_survives_garbage_aac() {
        let (asc, aus) = encode_aac(44_100, &sine(44_100, 2, 2.0));
        let mut stage = ToOpus::new(OpusSource::Aac { config: asc }).expect("ToOpus");
        let mut out = Vec::new();
        // A deterministic xorshift: garbage of many lengths, and nothing.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut n = 0i64;
        for len in [0usize, 1, 2, 7, 64, 300, 1500, 5000]
            .into_iter()
            .cycle()
            .take(40)
        {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            stage.push(&garbage, n * 1024, &mut out);
            n += 1;
        }
        let dropped = stage.stats().frames_dropped;
        assert!(dropped >= 5, "{dropped} dropped");
        // Valid frames go on where the garbage left the timeline.
        let before = out.len();
        for au in &aus {
            stage.push(au, n * 1024, &mut out);
            n += 1;
        }
        stage.flush(&mut out);
        assert_eq!(stage.stats().frames_dropped, dropped);
        let good = &out[before..];
        assert!(good.len() >= 90, "{} packets after the garbage", good.len());
        assert_tone(good);
    }

    #[test]
    fn to_opus_rejects_unreadable_config() {
        // Object type 0; then AAC-LC stereo at an explicit 1 Hz.
        for config in [&[0x00][..], &[0x17, 0x80, 0x00, 0x00, 0x90]] {
            let err = ToOpus::new(OpusSource::Aac {
                config: Bytes::copy_from_slice(config),
            });
            assert!(matches!(err, Err(TranscodeError::AudioSpecificConfig(_))));
        }
    }

    #[test]
    fn to_opus_rescale_rounds_and_saturates() {
        assert_eq!(rescale(1024, 44_100, RATE), 1115);
        assert_eq!(rescale(160, 8_000, RATE), 960);
        assert_eq!(rescale(-160, 8_000, RATE), -960);
        assert_eq!(rescale(i64::MAX, 8_000, RATE), i64::MAX);
        assert_eq!(rescale(i64::MIN, 8_000, RATE), i64::MIN);
    }

    /// CPU cost: 60 s of 44.1 kHz stereo AAC (tones and noise) to Opus.
    /// `cargo test --release -p rtmp-bridge to_opus_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn to_opus_cost() {
        let rate = 44_100u32;
        let mut noise = 1u32;
        let wave: Vec<f32> = (0..rate as usize * 60)
            .map(|i| {
                let t = i as f32 / rate as f32;
                noise = noise.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let n = (noise >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                    + 0.2 * (2.0 * std::f32::consts::PI * 3_300.0 * t * (1.0 + 0.1 * t.sin())).sin()
                    + 0.1 * n
            })
            .collect();
        let (asc, aus) = encode_aac(rate, &[wave.clone(), wave]);
        let mut stage = ToOpus::new(OpusSource::Aac { config: asc }).expect("ToOpus");
        let mut out = Vec::new();
        let wall = std::time::Instant::now();
        for (n, au) in aus.iter().enumerate() {
            stage.push(au, n as i64 * 1024, &mut out);
        }
        stage.flush(&mut out);
        let cpu = stage.cpu_time();
        let bytes: usize = out.iter().map(|p| p.data.len()).sum();
        println!(
            "60 s AAC 44.1 kHz stereo → Opus: cpu {:?} ({:.2}% of real time, {:.0}× faster), wall {:?}, {} packets, {:.1} kbit/s",
            cpu,
            cpu.as_secs_f64() / 60.0 * 100.0,
            60.0 / cpu.as_secs_f64(),
            wall.elapsed(),
            out.len(),
            bytes as f64 * 8.0 / 60.0 / 1000.0,
        );
    }
}
