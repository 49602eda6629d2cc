//! VP8/VP9/AV1 → H264 (libx264), for sinks whose players only know H264.
//!
//! The output picture size is the first decoded picture's (rounded down to
//! even, which 4:2:0 needs) for the whole run: a simulcast layer switch
//! keeps the run, but MP4/HLS init segments cannot change size mid-run, so
//! later pictures of another size are scaled to it.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use ffmpeg::codec::{self, Id};
use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::{Dictionary, Packet, frame, picture};
use ffmpeg_next as ffmpeg;
use recorder::codec::Codec;
use recorder::rtp::Frame;

use super::{H264Options, TranscodeError, TranscodeStats, log_dropped, single_threaded};

/// H264's RTP clock: output `Frame::timestamp`s and the encoder's time base.
const CLOCK: i64 = 90_000;
/// The frame rate x264 assumes for rate control before timestamps tell it
/// better (it is told the input is variable-rate).
const NOMINAL_FPS: i32 = 30;
/// x264's own keyframe limit, in frames; keyframes are forced by time, so
/// this only matters above this many frames per second.
const MAX_FPS_FOR_KEYINT: u32 = 120;

pub(crate) struct ToH264 {
    codec: Codec,
    options: H264Options,
    decoder: codec::decoder::Video,
    encoder: Option<Encoder>,
    decoded: frame::Video,
    packet: Packet,
    /// (pts, time) of pictures given to the encoder and not yet out.
    pending: VecDeque<(i64, i64)>,
    last_pts: Option<i64>,
    /// The next picture at or after this time is forced to be a keyframe.
    next_keyframe_ns: Option<i64>,
    dropped: u64,
}

struct Encoder {
    encoder: codec::encoder::video::Encoder,
    width: u32,
    height: u32,
    /// Converts pictures of another size or pixel format; made on demand
    /// and kept while the input stays the same.
    scaler: Option<(Scaler, (Pixel, u32, u32))>,
}

/// ffmpeg-next's scaling context is not `Send` (it holds a raw pointer),
/// but the gateway builds a transcoder and then moves it to its worker.
struct Scaler(scaling::Context);

// SAFETY: an SwsContext has no thread affinity; this one is owned by one
// `Encoder` and only used through `&mut`, so by one thread at a time
// (FFmpeg's codec contexts and frames are `Send` in ffmpeg-next alike).
unsafe impl Send for Scaler {}

impl ToH264 {
    pub(crate) fn new(codec: Codec, options: &H264Options) -> Result<Self, TranscodeError> {
        super::init()?;
        Ok(Self {
            codec,
            options: options.clone(),
            decoder: open_decoder(codec)?,
            encoder: None,
            decoded: frame::Video::empty(),
            packet: Packet::empty(),
            pending: VecDeque::new(),
            last_pts: None,
            next_keyframe_ns: None,
            dropped: 0,
        })
    }

    /// Decodes one frame and encodes what it shows. `Err` only when the
    /// encoder cannot be opened: then nothing of this track can be sent.
    pub(crate) fn push(
        &mut self,
        time_ns: i64,
        frame: &Frame,
        out: &mut Vec<(i64, Frame)>,
        stats: &mut TranscodeStats,
    ) -> Result<(), TranscodeError> {
        stats.video_frames_in += 1;
        if frame.codec != self.codec {
            self.drop_frame(
                stats,
                &format!("{} frame on a {} track", frame.codec, self.codec),
            );
            return Ok(());
        }
        let mut packet = Packet::copy(&frame.data);
        // The decoder hands the pts back on the picture: the run time in ns.
        packet.set_pts(Some(time_ns));
        if frame.keyframe {
            packet.set_flags(codec::packet::Flags::KEY);
        }
        if let Err(err) = self.decoder.send_packet(&packet) {
            self.drop_frame(stats, &err);
            return Ok(());
        }
        self.receive_pictures(time_ns, out, stats)
    }

    /// Drains the decoder and the encoder.
    pub(crate) fn finish(&mut self, out: &mut Vec<(i64, Frame)>, stats: &mut TranscodeStats) {
        if self.decoder.send_eof().is_ok() {
            let fallback = self.last_time().unwrap_or(0);
            if let Err(err) = self.receive_pictures(fallback, out, stats) {
                log_dropped("H264 encoder", 1, &err);
            }
        }
        if let Some(encoder) = self.encoder.as_mut()
            && encoder.encoder.send_eof().is_ok()
        {
            self.receive_packets(out, stats);
        }
        stats.video_frames_dropped += self.pending.len() as u64;
        self.pending.clear();
    }

    /// The time of the oldest picture inside the encoder.
    pub(crate) fn pending_since(&self) -> Option<i64> {
        self.pending.front().map(|&(_, time)| time)
    }

    fn last_time(&self) -> Option<i64> {
        self.pending.back().map(|&(_, time)| time)
    }

    fn drop_frame(&mut self, stats: &mut TranscodeStats, err: &dyn std::fmt::Display) {
        self.dropped += 1;
        stats.video_frames_dropped += 1;
        log_dropped(codec_name(self.codec), self.dropped, err);
    }

    fn receive_pictures(
        &mut self,
        fallback_ns: i64,
        out: &mut Vec<(i64, Frame)>,
        stats: &mut TranscodeStats,
    ) -> Result<(), TranscodeError> {
        loop {
            match self.decoder.receive_frame(&mut self.decoded) {
                Ok(()) => {}
                Err(ffmpeg::Error::Other {
                    errno: ffmpeg::util::error::EAGAIN,
                })
                | Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(err) => {
                    self.drop_frame(stats, &err);
                    return Ok(());
                }
            }
            let time_ns = self.decoded.pts().unwrap_or(fallback_ns);
            self.encode(time_ns, out, stats)?;
        }
    }

    fn encode(
        &mut self,
        time_ns: i64,
        out: &mut Vec<(i64, Frame)>,
        stats: &mut TranscodeStats,
    ) -> Result<(), TranscodeError> {
        let (w, h) = (self.decoded.width(), self.decoded.height());
        if w < 2 || h < 2 {
            self.drop_frame(stats, &format!("picture of {w}x{h}"));
            return Ok(());
        }
        if self.encoder.is_none() {
            self.encoder = Some(open_encoder(w & !1, h & !1, &self.options)?);
        }
        let Some(encoder) = self.encoder.as_mut() else {
            return Ok(());
        };
        let mut converted;
        let picture = if self.decoded.format() == Pixel::YUV420P
            && (w, h) == (encoder.width, encoder.height)
        {
            &mut self.decoded
        } else {
            converted = frame::Video::empty();
            match encoder.convert(&self.decoded, &mut converted) {
                Ok(()) => &mut converted,
                Err(err) => {
                    self.dropped += 1;
                    stats.video_frames_dropped += 1;
                    log_dropped("scaler", self.dropped, &err);
                    return Ok(());
                }
            }
        };
        // pts must rise strictly (x264 reorders nothing here, but warns and
        // mis-times equal pts); two frames in one 90 kHz tick are rare.
        let mut pts = ns_to_ticks(time_ns);
        if let Some(last) = self.last_pts {
            pts = pts.max(last + 1);
        }
        self.last_pts = Some(pts);
        picture.set_pts(Some(pts));
        // Keyframes by time, not frame count: WebRTC frame rates vary, and
        // HLS segments and RTMP joiners want them at a steady interval. The
        // decoder marked its own keyframes I; those must not leak through.
        let force = self.next_keyframe_ns.is_none_or(|next| time_ns >= next);
        if force {
            let interval = duration_ns(self.options.keyframe_interval).max(1);
            let next = match self.next_keyframe_ns {
                // Stay on the grid unless the input jumped past it.
                Some(next) if time_ns < next.saturating_add(interval) => next + interval,
                _ => time_ns.saturating_add(interval),
            };
            self.next_keyframe_ns = Some(next);
        }
        picture.set_kind(if force {
            picture::Type::I
        } else {
            picture::Type::None
        });
        if let Err(err) = encoder.encoder.send_frame(picture) {
            self.drop_frame(stats, &err);
            return Ok(());
        }
        self.pending.push_back((pts, time_ns));
        self.receive_packets(out, stats);
        Ok(())
    }

    fn receive_packets(&mut self, out: &mut Vec<(i64, Frame)>, stats: &mut TranscodeStats) {
        let Some(encoder) = self.encoder.as_mut() else {
            return;
        };
        while encoder.encoder.receive_packet(&mut self.packet).is_ok() {
            let Some(pts) = self.packet.pts() else {
                continue;
            };
            // No B-frames: packets come out in input order, so the picture
            // is at the front (older entries would be pictures the encoder
            // dropped).
            let mut time_ns = None;
            while let Some(&(p, t)) = self.pending.front() {
                if p > pts {
                    break;
                }
                self.pending.pop_front();
                if p == pts {
                    time_ns = Some(t);
                    break;
                }
                stats.video_frames_dropped += 1;
            }
            let time_ns = time_ns.unwrap_or_else(|| ticks_to_ns(pts));
            let Some(data) = self.packet.data() else {
                continue;
            };
            let data = annex_b_to_length_prefixed(data);
            if data.is_empty() {
                continue;
            }
            out.push((
                time_ns,
                Frame {
                    codec: Codec::H264,
                    timestamp: pts,
                    keyframe: self.packet.is_key(),
                    data: Bytes::from(data),
                    composition_offset: 0,
                },
            ));
            stats.h264_frames_out += 1;
        }
    }
}

impl Encoder {
    fn convert(
        &mut self,
        input: &frame::Video,
        output: &mut frame::Video,
    ) -> Result<(), ffmpeg::Error> {
        let key = (input.format(), input.width(), input.height());
        if self.scaler.as_ref().is_none_or(|(_, k)| *k != key) {
            let scaler = scaling::Context::get(
                key.0,
                key.1,
                key.2,
                Pixel::YUV420P,
                self.width,
                self.height,
                scaling::Flags::BILINEAR,
            )?;
            self.scaler = Some((Scaler(scaler), key));
        }
        let Some((scaler, _)) = self.scaler.as_mut() else {
            return Err(ffmpeg::Error::Bug);
        };
        scaler.0.run(input, output)
    }
}

fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::Vp8 => "VP8 decoder",
        Codec::Vp9 => "VP9 decoder",
        Codec::Av1 => "AV1 decoder",
        _ => "video decoder",
    }
}

fn open_decoder(codec: Codec) -> Result<codec::decoder::Video, TranscodeError> {
    let what = codec_name(codec);
    let found = match codec {
        Codec::Vp8 => codec::decoder::find(Id::VP8),
        Codec::Vp9 => codec::decoder::find(Id::VP9),
        // FFmpeg's native AV1 decoder needs hardware; dav1d is the one.
        Codec::Av1 => {
            codec::decoder::find_by_name("libdav1d").or_else(|| codec::decoder::find(Id::AV1))
        }
        _ => None,
    };
    let found = found.ok_or(TranscodeError::Missing(what))?;
    let mut ctx = codec::Context::new_with_codec(found);
    single_threaded(&mut ctx);
    // One picture out per frame in, no frame of delay.
    ctx.set_flags(codec::Flags::LOW_DELAY);
    ctx.decoder()
        .open_as(found)
        .and_then(|d| d.video())
        .map_err(|e| TranscodeError::open(what, e))
}

fn open_encoder(width: u32, height: u32, options: &H264Options) -> Result<Encoder, TranscodeError> {
    const WHAT: &str = "H264 encoder (libx264)";
    let found = codec::encoder::find_by_name("libx264").ok_or(TranscodeError::Missing(WHAT))?;
    let mut ctx = codec::Context::new_with_codec(found);
    single_threaded(&mut ctx);
    let mut encoder = ctx
        .encoder()
        .video()
        .map_err(|e| TranscodeError::open(WHAT, e))?;
    encoder.set_width(width);
    encoder.set_height(height);
    encoder.set_format(Pixel::YUV420P);
    encoder.set_time_base((1, CLOCK as i32));
    encoder.set_frame_rate(Some((NOMINAL_FPS, 1)));
    encoder.set_bit_rate(options.bitrate as usize);
    encoder.set_max_bit_rate(options.bitrate as usize);
    encoder.set_max_b_frames(0);
    let keyint = options
        .keyframe_interval
        .as_secs()
        .max(1)
        .saturating_mul(u64::from(MAX_FPS_FOR_KEYINT));
    encoder.set_gop(
        u32::try_from(keyint)
            .unwrap_or(u32::MAX)
            .min(i32::MAX as u32),
    );
    let mut dict = Dictionary::new();
    dict.set("preset", "veryfast");
    dict.set("tune", "zerolatency");
    // A forced keyframe is an IDR, where a new RTMP/HLS viewer can start.
    dict.set("forced-idr", "1");
    // One second of VBV buffer: a live stream's bit rate must stay near
    // what the ingest was promised.
    dict.set("bufsize", &options.bitrate.to_string());
    // SPS/PPS in-band on every keyframe (`VideoConfig` reads them from
    // there, and a sink can start at any keyframe); no scene-cut
    // keyframes, so they come exactly as forced.
    dict.set("x264-params", "repeat-headers=1:scenecut=0");
    let encoder = encoder
        .open_as_with(found, dict)
        .map_err(|e| TranscodeError::open(WHAT, e))?;
    Ok(Encoder {
        encoder,
        width,
        height,
        scaler: None,
    })
}

/// Annex B (start codes, as libx264 writes) → 4-byte length prefixes (as
/// the pipeline's H264 frames are).
pub(crate) fn annex_b_to_length_prefixed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    for nal in annex_b_nals(data) {
        out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        out.extend_from_slice(nal);
    }
    out
}

/// The NAL units between start codes, without the zero bytes that pad
/// before a 4-byte start code (a NAL unit never ends in zero).
fn annex_b_nals(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| s - 3)
        .chain(std::iter::once(data.len()))
        .collect();
    starts.into_iter().zip(ends).filter_map(move |(s, e)| {
        let nal = data.get(s..e)?;
        let len = nal.iter().rposition(|&b| b != 0)? + 1;
        Some(&nal[..len])
    })
}

fn ns_to_ticks(ns: i64) -> i64 {
    ((i128::from(ns) * i128::from(CLOCK) + 500_000_000).div_euclid(1_000_000_000)) as i64
}

fn ticks_to_ns(ticks: i64) -> i64 {
    ((i128::from(ticks) * 1_000_000_000) / i128::from(CLOCK)) as i64
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annex_b_becomes_length_prefixed() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 0, 1, 0x65, 4, 5, 0,
        ];
        assert_eq!(
            annex_b_to_length_prefixed(&data),
            [
                0, 0, 0, 3, 0x67, 1, 2, 0, 0, 0, 2, 0x68, 3, 0, 0, 0, 3, 0x65, 4, 5
            ]
        );
        assert!(annex_b_to_length_prefixed(&[0, 0, 1]).is_empty());
        assert!(annex_b_to_length_prefixed(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn ticks_round_trip() {
        assert_eq!(ns_to_ticks(1_000_000_000), 90_000);
        assert_eq!(ns_to_ticks(33_333_333), 3000);
        assert_eq!(ticks_to_ns(3000), 33_333_333);
    }
}
