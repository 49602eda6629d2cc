//! Opus → AAC-LC, 48 kHz stereo, with each AAC frame placed at the time
//! of its first sample.
//!
//! AAC frames are 1024 samples and Opus packets usually 960, so samples
//! go through a FIFO; their times come from a sample counter anchored on
//! the first Opus frame's time, never from per-packet arithmetic, so
//! rounding cannot accumulate. Gaps in the input (DTX, loss) up to 1 s are
//! filled with silence: AAC has no way to say "nothing here", and a player
//! that sees audio time jump assumes a broken stream. A longer gap starts a
//! new timeline segment (the counter is anchored again at the next frame).

use std::collections::VecDeque;

use bytes::Bytes;
use ffmpeg::codec::{self, Id};
use ffmpeg::format::Sample;
use ffmpeg::format::sample::Type as SampleType;
use ffmpeg::{ChannelLayout, Dictionary, Packet, frame};
use ffmpeg_next as ffmpeg;
use recorder::codec::Codec;
use recorder::rtp::Frame;

use super::{Drift, TranscodeError, TranscodeStats, extradata, log_dropped, single_threaded};

/// Opus always decodes at 48 kHz, and AAC keeps that rate: no resampling.
pub const AAC_SAMPLE_RATE: u32 = 48_000;
/// Mono Opus is upmixed: WebRTC signals Opus as stereo anyway, and one
/// fixed AudioSpecificConfig per run survives a publisher that switches.
pub const AAC_CHANNELS: u32 = 2;
const RATE: i64 = AAC_SAMPLE_RATE as i64;
const CHANNELS: usize = AAC_CHANNELS as usize;
const NS_PER_SECOND: i64 = 1_000_000_000;

/// A stretch of the encoder's sample timeline anchored at one time.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Encoder sample position (pts) where the segment starts.
    pts: i64,
    /// Run time of that sample.
    time_ns: i64,
    /// `Frame::timestamp` of that sample.
    timestamp: i64,
}

pub(crate) struct OpusToAac {
    decoder: codec::decoder::Audio,
    encoder: codec::encoder::audio::Encoder,
    frame_size: usize,
    /// Samples (planar, per channel) waiting for a whole AAC frame.
    fifo: [Vec<f32>; CHANNELS],
    /// One decoded Opus packet, converted to planar stereo.
    scratch: [Vec<f32>; CHANNELS],
    decoded: frame::Audio,
    packet: Packet,
    /// Encoder position of the next sample to enter the FIFO.
    queued: i64,
    /// Encoder position of the next AAC packet to come out.
    next_out: i64,
    /// Oldest first; the front one covers `next_out`.
    segments: VecDeque<Segment>,
    /// The first anchor's time: `Frame::timestamp` counts from it.
    origin_ns: Option<i64>,
    dropped: u64,
}

impl OpusToAac {
    pub(crate) fn new(bitrate: u32) -> Result<Self, TranscodeError> {
        super::init()?;
        let decoder = open_decoder()?;
        let encoder = open_encoder(bitrate)?;
        let frame_size = encoder.frame_size() as usize;
        if frame_size == 0 {
            return Err(TranscodeError::Config {
                what: "AAC encoder",
                message: "no frame size".into(),
            });
        }
        let expected = crate::flv::aac_lc_audio_specific_config(AAC_SAMPLE_RATE, CHANNELS as u8);
        let extradata = extradata(&encoder);
        if expected.is_none_or(|asc| !extradata.starts_with(&asc)) {
            // The sinks announce `aac_lc_audio_specific_config`; frames
            // from a differently configured encoder would not match it.
            return Err(TranscodeError::Config {
                what: "AAC encoder",
                message: format!("AudioSpecificConfig {extradata:02x?}, expected {expected:02x?}"),
            });
        }
        Ok(Self {
            decoder,
            encoder,
            frame_size,
            fifo: Default::default(),
            scratch: Default::default(),
            decoded: frame::Audio::empty(),
            packet: Packet::empty(),
            queued: 0,
            next_out: 0,
            segments: VecDeque::new(),
            origin_ns: None,
            dropped: 0,
        })
    }

    /// Decodes one Opus packet at `time_ns` and appends the AAC frames
    /// that became complete to `out`.
    pub(crate) fn push(
        &mut self,
        time_ns: i64,
        data: &[u8],
        out: &mut Vec<(i64, Frame)>,
        stats: &mut TranscodeStats,
    ) {
        stats.opus_frames_in += 1;
        if let Err(err) = self.decode(data) {
            self.dropped += 1;
            stats.audio_frames_dropped += 1;
            log_dropped("Opus decoder", self.dropped, &err);
            // The gap this leaves is filled when the next packet comes.
            return;
        }
        if self.scratch[0].is_empty() {
            return;
        }
        let skip = self.place(time_ns, out, stats);
        for (fifo, decoded) in self.fifo.iter_mut().zip(&self.scratch) {
            fifo.extend_from_slice(decoded.get(skip..).unwrap_or_default());
        }
        self.queued += self.scratch[0].len().saturating_sub(skip) as i64;
        self.encode_whole_frames(out, stats);
    }

    /// Flushes: the last partial frame (padded with silence), then the
    /// encoder's delayed frames.
    pub(crate) fn finish(&mut self, out: &mut Vec<(i64, Frame)>, stats: &mut TranscodeStats) {
        self.pad_to_frame();
        self.encode_whole_frames(out, stats);
        if let Err(err) = self.encoder.send_eof() {
            log_dropped("AAC encoder flush", 1, &err);
        }
        self.receive_packets(out, stats);
    }

    /// The time of the oldest sample taken in but not yet out as AAC; the
    /// transcoder holds back other outputs until then.
    pub(crate) fn pending_since(&self) -> Option<i64> {
        (self.queued > self.next_out).then(|| self.time_of(self.next_out))
    }

    /// Fits a decoded packet starting at `time_ns` onto the timeline: fills
    /// a gap before it, re-anchors after a long one, or says how many of
    /// its first samples overlap what is already there.
    fn place(
        &mut self,
        time_ns: i64,
        out: &mut Vec<(i64, Frame)>,
        stats: &mut TranscodeStats,
    ) -> usize {
        let Some(origin) = self.origin_ns else {
            self.origin_ns = Some(time_ns);
            self.segments.push_back(Segment {
                pts: self.queued,
                time_ns,
                timestamp: 0,
            });
            return 0;
        };
        let drift = time_ns.saturating_sub(self.time_of(self.queued));
        match Drift::of(drift, NS_PER_SECOND) {
            Drift::Reanchor => {
                // Close the current segment on a frame boundary, so the
                // next frame starts exactly at the new anchor.
                self.pad_to_frame();
                self.encode_whole_frames(out, stats);
                stats.audio_reanchors += 1;
                let timestamp = ns_to_samples(time_ns.saturating_sub(origin));
                self.segments.push_back(Segment {
                    pts: self.queued,
                    time_ns,
                    timestamp,
                });
                0
            }
            Drift::Gap(gap) => {
                let silence = ns_to_samples(gap).max(0) as usize;
                for fifo in &mut self.fifo {
                    fifo.resize(fifo.len() + silence, 0.0);
                }
                self.queued += silence as i64;
                stats.silence_samples += silence as u64;
                self.encode_whole_frames(out, stats);
                0
            }
            Drift::Early(early) => {
                let overlap = ns_to_samples(early).max(0) as usize;
                stats.trimmed_samples += overlap.min(self.scratch[0].len()) as u64;
                overlap
            }
            Drift::OnTime => 0,
        }
    }

    /// Decodes into `scratch` as planar stereo f32.
    fn decode(&mut self, data: &[u8]) -> Result<(), ffmpeg::Error> {
        for s in &mut self.scratch {
            s.clear();
        }
        let packet = Packet::copy(data);
        self.decoder.send_packet(&packet)?;
        loop {
            match self.decoder.receive_frame(&mut self.decoded) {
                Ok(()) => append_stereo(&self.decoded, &mut self.scratch)?,
                Err(ffmpeg::Error::Other {
                    errno: ffmpeg::util::error::EAGAIN,
                })
                | Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(err) => return Err(err),
            }
        }
    }

    fn pad_to_frame(&mut self) {
        let partial = self.fifo[0].len() % self.frame_size;
        if partial == 0 {
            return;
        }
        let silence = self.frame_size - partial;
        for fifo in &mut self.fifo {
            fifo.resize(fifo.len() + silence, 0.0);
        }
        self.queued += silence as i64;
    }

    fn encode_whole_frames(&mut self, out: &mut Vec<(i64, Frame)>, stats: &mut TranscodeStats) {
        let n = self.frame_size;
        while self.fifo[0].len() >= n {
            // A fresh frame each time: the encoder may keep a reference to
            // the last one it was given.
            let mut frame =
                frame::Audio::new(Sample::F32(SampleType::Planar), n, ChannelLayout::STEREO);
            frame.set_rate(AAC_SAMPLE_RATE);
            let pts = self.queued - self.fifo[0].len() as i64;
            frame.set_pts(Some(pts));
            let filled = frame.planes() == CHANNELS && frame.samples() == n;
            if filled {
                for (c, fifo) in self.fifo.iter().enumerate() {
                    frame.plane_mut::<f32>(c)[..n].copy_from_slice(&fifo[..n]);
                }
            }
            for fifo in &mut self.fifo {
                fifo.drain(..n);
            }
            let sent = if filled {
                self.encoder.send_frame(&frame)
            } else {
                Err(ffmpeg::Error::Bug)
            };
            if let Err(err) = sent {
                // The frame's time still passes: the next packet's pts
                // leaves a hole the sinks see as a gap.
                self.dropped += 1;
                stats.audio_frames_dropped += 1;
                log_dropped("AAC encoder", self.dropped, &err);
                continue;
            }
            self.receive_packets(out, stats);
        }
    }

    fn receive_packets(&mut self, out: &mut Vec<(i64, Frame)>, stats: &mut TranscodeStats) {
        while self.encoder.receive_packet(&mut self.packet).is_ok() {
            let Some(pts) = self.packet.pts() else {
                continue;
            };
            let duration = match self.packet.duration() {
                d if d > 0 => d,
                _ => self.frame_size as i64,
            };
            // The native encoder's first packet (pts -1024) holds its
            // priming samples; FLV cannot signal priming, so drop it and
            // every real sample plays at its own time.
            if pts < 0 {
                continue;
            }
            let Some(data) = self.packet.data() else {
                continue;
            };
            let segment = self.segment_of(pts);
            let time_ns = segment.time_ns + samples_to_ns(pts - segment.pts);
            let frame = Frame {
                codec: Codec::Aac,
                timestamp: segment.timestamp + (pts - segment.pts),
                keyframe: true,
                data: Bytes::copy_from_slice(data),
                composition_offset: 0,
            };
            out.push((time_ns, frame));
            stats.aac_frames_out += 1;
            self.next_out = self.next_out.max(pts + duration);
            while self.segments.len() > 1 && self.segments[1].pts <= self.next_out {
                self.segments.pop_front();
            }
        }
    }

    fn segment_of(&self, pts: i64) -> Segment {
        let fallback = Segment {
            pts: 0,
            time_ns: self.origin_ns.unwrap_or(0),
            timestamp: 0,
        };
        self.segments
            .iter()
            .rev()
            .find(|s| s.pts <= pts)
            .or(self.segments.front())
            .copied()
            .unwrap_or(fallback)
    }

    fn time_of(&self, pts: i64) -> i64 {
        let segment = self.segment_of(pts);
        segment.time_ns + samples_to_ns(pts - segment.pts)
    }
}

pub(super) fn open_decoder() -> Result<codec::decoder::Audio, TranscodeError> {
    const WHAT: &str = "Opus decoder";
    // The native decoder: it outputs planar float, what the AAC encoder
    // takes, so no conversion is needed in the common case.
    let codec = codec::decoder::find(Id::OPUS).ok_or(TranscodeError::Missing(WHAT))?;
    let mut ctx = codec::Context::new_with_codec(codec);
    single_threaded(&mut ctx);
    // Without an OpusHead the decoder assumes mono unless told the channel
    // count; stereo decodes mono packets as two equal channels.
    let mut options = Dictionary::new();
    options.set("ch_layout", "stereo");
    ctx.decoder()
        .open_as_with(codec, options)
        .and_then(|d| d.audio())
        .map_err(|e| TranscodeError::open(WHAT, e))
}

fn open_encoder(bitrate: u32) -> Result<codec::encoder::audio::Encoder, TranscodeError> {
    const WHAT: &str = "AAC encoder";
    let codec = codec::encoder::find(Id::AAC).ok_or(TranscodeError::Missing(WHAT))?;
    let mut ctx = codec::Context::new_with_codec(codec);
    single_threaded(&mut ctx);
    // The AudioSpecificConfig in extradata, not in every frame (ADTS):
    // FLV and MP4 carry it once, in the sequence header / sample entry.
    ctx.set_flags(codec::Flags::GLOBAL_HEADER);
    let mut encoder = ctx
        .encoder()
        .audio()
        .map_err(|e| TranscodeError::open(WHAT, e))?;
    encoder.set_rate(AAC_SAMPLE_RATE as i32);
    encoder.set_channel_layout(ChannelLayout::STEREO);
    encoder.set_format(Sample::F32(SampleType::Planar));
    encoder.set_bit_rate(bitrate as usize);
    encoder.set_time_base((1, AAC_SAMPLE_RATE as i32));
    // The "fast" coder instead of the default "twoloop" search: about half
    // the CPU (BENCHMARKS.md, "Restreaming"), and at 128 kbit/s stereo for
    // live speech and music the difference is not audible.
    let mut options = Dictionary::new();
    options.set("aac_coder", "fast");
    encoder
        .open_as_with(codec, options)
        .map_err(|e| TranscodeError::open(WHAT, e))
}

/// Appends one decoded frame to `out` as planar stereo f32, whatever of
/// the decoders' usual layouts it comes in (mono is duplicated).
pub(super) fn append_stereo(
    frame: &frame::Audio,
    out: &mut [Vec<f32>; CHANNELS],
) -> Result<(), ffmpeg::Error> {
    let n = frame.samples();
    let channels = usize::from(frame.channels());
    if n == 0 {
        return Ok(());
    }
    if channels == 0 || channels > CHANNELS {
        return Err(ffmpeg::Error::PatchWelcome);
    }
    match frame.format() {
        Sample::F32(SampleType::Planar) if frame.planes() == channels => {
            for (c, o) in out.iter_mut().enumerate() {
                let plane = frame.plane::<f32>(c.min(channels - 1));
                o.extend_from_slice(plane.get(..n).ok_or(ffmpeg::Error::InvalidData)?);
            }
        }
        Sample::F32(SampleType::Packed) if frame.planes() == 1 => {
            let plane = frame.plane::<f32>(0);
            let samples = plane
                .get(..n * channels)
                .ok_or(ffmpeg::Error::InvalidData)?;
            for chunk in samples.chunks_exact(channels) {
                out[0].push(chunk[0]);
                out[1].push(chunk[channels - 1]);
            }
        }
        Sample::I16(SampleType::Packed) if frame.planes() == 1 => {
            let plane = frame.plane::<i16>(0);
            let samples = plane
                .get(..n * channels)
                .ok_or(ffmpeg::Error::InvalidData)?;
            for chunk in samples.chunks_exact(channels) {
                out[0].push(f32::from(chunk[0]) / 32768.0);
                out[1].push(f32::from(chunk[channels - 1]) / 32768.0);
            }
        }
        _ => return Err(ffmpeg::Error::PatchWelcome),
    }
    Ok(())
}

/// Whole samples in `ns`, rounded to the nearest.
fn ns_to_samples(ns: i64) -> i64 {
    ((i128::from(ns) * i128::from(RATE) + 500_000_000) / 1_000_000_000) as i64
}

/// The time of `samples`, rounded to the nearest nanosecond.
fn samples_to_ns(samples: i64) -> i64 {
    ((i128::from(samples) * 1_000_000_000 + i128::from(RATE / 2)) / i128::from(RATE)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extradata_is_the_announced_audio_specific_config() {
        let stage = OpusToAac::new(128_000).expect("AAC encoder");
        let asc = crate::flv::aac_lc_audio_specific_config(48_000, 2).expect("ASC");
        let extradata = extradata(&stage.encoder);
        assert_eq!(asc, [0x11, 0x90]);
        // FFmpeg's encoder appends an explicit "no SBR" sync extension
        // (0x2b7, AOT 5, flag 0); the sinks' 2-byte config means the same.
        assert_eq!(extradata, [0x11, 0x90, 0x56, 0xe5, 0x00]);
        assert_eq!(stage.frame_size, 1024);
    }

    #[test]
    fn sample_time_conversions_round() {
        assert_eq!(samples_to_ns(48_000), 1_000_000_000);
        assert_eq!(samples_to_ns(1024), 21_333_333);
        assert_eq!(ns_to_samples(20_000_000), 960);
        assert_eq!(ns_to_samples(samples_to_ns(12_345_678)), 12_345_678);
    }
}
