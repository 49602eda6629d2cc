//! Synthetic RTP media with the structure real encoders produce: H264 with
//! SPS/PPS in a STAP-A and FU-A-fragmented IDRs, VP8 with proper payload
//! descriptors, VP9 and AV1 with the payload headers browsers send, 20 ms
//! Opus packets. Good for forwarding tests, where what
//! matters is packet structure and timing, not pixels.

use std::time::Duration;

use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_AV1, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MIME_TYPE_VP9,
};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    Vp8,
    Vp9,
    Av1,
}

impl VideoCodec {
    pub fn rtp_codec(self) -> RTCRtpCodec {
        match self {
            VideoCodec::H264 => RTCRtpCodec {
                mime_type: MIME_TYPE_H264.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line:
                    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f".into(),
                rtcp_feedback: vec![],
            },
            VideoCodec::Vp8 => RTCRtpCodec {
                mime_type: MIME_TYPE_VP8.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![],
            },
            VideoCodec::Vp9 => RTCRtpCodec {
                mime_type: MIME_TYPE_VP9.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: "profile-id=0".into(),
                rtcp_feedback: vec![],
            },
            VideoCodec::Av1 => RTCRtpCodec {
                mime_type: MIME_TYPE_AV1.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: "profile-id=0".into(),
                rtcp_feedback: vec![],
            },
        }
    }

    /// Lower-case name, for file names and messages.
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::Vp8 => "vp8",
            VideoCodec::Vp9 => "vp9",
            VideoCodec::Av1 => "av1",
        }
    }
}

pub fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: vec![],
    }
}

/// Generates frames in order; the caller paces them.
pub struct Source {
    fps: u32,
    gop_frames: u64,
    frame: u64,
    video_seq: u16,
    audio_seq: u16,
    audio_sent: u64,
    video_ts_base: u32,
    audio_ts_base: u32,
}

const FRAGMENT: usize = 1000;

impl Source {
    pub fn new(fps: u32, gop: Duration) -> Self {
        let gop_frames = (gop.as_secs_f64() * f64::from(fps)).round().max(1.0) as u64;
        Self {
            fps,
            gop_frames,
            frame: 0,
            video_seq: rand::random(),
            audio_seq: rand::random(),
            audio_sent: 0,
            video_ts_base: rand::random(),
            audio_ts_base: rand::random(),
        }
    }

    fn next_video(
        &mut self,
        ssrc: u32,
        pt: u8,
        ts: u32,
        marker: bool,
        payload: Vec<u8>,
    ) -> rtp::Packet {
        let p = crate::client::packet(ssrc, pt, self.video_seq, ts, payload);
        self.video_seq = self.video_seq.wrapping_add(1);
        let mut p = p;
        p.header.marker = marker;
        p
    }

    /// The RTP packets of the next video frame.
    pub fn video_frame(&mut self, codec: VideoCodec, ssrc: u32, pt: u8) -> Vec<rtp::Packet> {
        let keyframe = self.frame.is_multiple_of(self.gop_frames);
        let ts = self
            .video_ts_base
            .wrapping_add((self.frame * 90_000 / u64::from(self.fps)) as u32);
        let tag = (self.frame & 0xff) as u8;
        self.frame += 1;
        let mut out = Vec::new();
        match (codec, keyframe) {
            (VideoCodec::H264, true) => {
                let sps = [0x67, 0x42, 0xe0, 0x1f, 0x8c, 0x8d, 0x40];
                let pps = [0x68, 0xce, 0x3c, 0x80];
                let mut stap = vec![0x78];
                for nal in [&sps[..], &pps[..]] {
                    stap.extend_from_slice(&(nal.len() as u16).to_be_bytes());
                    stap.extend_from_slice(nal);
                }
                out.push(self.next_video(ssrc, pt, ts, false, stap));
                let fragments = 4;
                for i in 0..fragments {
                    let mut header = 0x05u8;
                    if i == 0 {
                        header |= 0x80;
                    }
                    if i == fragments - 1 {
                        header |= 0x40;
                    }
                    let mut payload = vec![0x7c, header];
                    payload.resize(FRAGMENT, tag);
                    out.push(self.next_video(ssrc, pt, ts, i == fragments - 1, payload));
                }
            }
            (VideoCodec::H264, false) => {
                let mut payload = vec![0x41, 0x9a];
                payload.resize(800, tag);
                out.push(self.next_video(ssrc, pt, ts, true, payload));
            }
            (VideoCodec::Vp8, key) => {
                let packets = if key { 4 } else { 1 };
                for i in 0..packets {
                    let mut payload = if i == 0 {
                        vec![0x10, if key { 0x00 } else { 0x01 }]
                    } else {
                        vec![0x00, 0x00]
                    };
                    payload.resize(if key { FRAGMENT } else { 800 }, tag);
                    out.push(self.next_video(ssrc, pt, ts, i == packets - 1, payload));
                }
            }
            (VideoCodec::Vp9, key) => {
                // RFC 9628 flexible mode: I, F, B/E; inter frames carry P
                // and one reference (P_DIFF 1).
                let packets = if key { 4 } else { 1 };
                let pid = (self.frame & 0x7fff) as u16;
                for i in 0..packets {
                    let mut first = 0x90u8;
                    if !key {
                        first |= 0x40;
                    }
                    if i == 0 {
                        first |= 0x08;
                    }
                    if i == packets - 1 {
                        first |= 0x04;
                    }
                    let mut payload = vec![first, 0x80 | (pid >> 8) as u8, pid as u8];
                    if !key {
                        payload.push(0x02);
                    }
                    payload.resize(if key { FRAGMENT } else { 800 }, tag);
                    out.push(self.next_video(ssrc, pt, ts, i == packets - 1, payload));
                }
            }
            (VideoCodec::Av1, key) => {
                // Aggregation header Z Y W W N: one OBU element per packet,
                // fragments chained with Z/Y, N on a keyframe's first packet.
                let packets = if key { 4 } else { 1 };
                for i in 0..packets {
                    let mut header = 0x10u8;
                    if i > 0 {
                        header |= 0x80;
                    }
                    if i < packets - 1 {
                        header |= 0x40;
                    }
                    if key && i == 0 {
                        header |= 0x08;
                    }
                    let mut payload = vec![header];
                    if i == 0 {
                        // OBU header: frame OBU (type 6), no size field.
                        payload.push(6 << 3);
                    }
                    payload.resize(if key { FRAGMENT } else { 800 }, tag);
                    out.push(self.next_video(ssrc, pt, ts, i == packets - 1, payload));
                }
            }
        }
        out
    }

    /// Opus packets (20 ms each) up to media time `until`.
    pub fn audio_until(&mut self, ssrc: u32, pt: u8, until: Duration) -> Vec<rtp::Packet> {
        let due = until.as_millis() as u64 / 20 + 1;
        let mut out = Vec::new();
        while self.audio_sent < due {
            let ts = self
                .audio_ts_base
                .wrapping_add((self.audio_sent * 960) as u32);
            let p = crate::client::packet(ssrc, pt, self.audio_seq, ts, vec![0xfc, 0xff, 0xfe]);
            self.audio_seq = self.audio_seq.wrapping_add(1);
            self.audio_sent += 1;
            out.push(p);
        }
        out
    }
}
