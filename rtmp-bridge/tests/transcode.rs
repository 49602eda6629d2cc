//! The transcoder with real codecs: Opus made by libopus (through
//! ffmpeg-next), VP8 made by the `ffmpeg` CLI; what comes out is decoded
//! again by FFmpeg and measured (AAC beep positions, H264 decode errors).

#![cfg(feature = "transcode")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use ffmpeg::codec::{self, Id};
use ffmpeg::format::Sample;
use ffmpeg::format::sample::Type as SampleType;
use ffmpeg::{ChannelLayout, Dictionary, Packet, frame};
use ffmpeg_next as ffmpeg;
use recorder::codec::Codec;
use recorder::params::{AudioParams, VideoConfig, VideoDetail};
use recorder::pipeline::{Output, RunEnd, RunStart, Timing};
use recorder::rtp::Frame;
use rtmp_bridge::transcode::{H264Options, TranscodeError, TranscodeOptions, Transcoder};

use common::TempDir;

const RATE: usize = 48_000;
/// Where the first Opus frame sits in the run (not zero, to catch code
/// that assumes it).
const AUDIO_START_NS: i64 = 40_000_000;
const AUDIO_TRACK: usize = 1;
const VIDEO_TRACK: usize = 0;

/// `seconds` of silence with a 1 kHz sine (amplitude 0.5) from `beep_ms`
/// on, as per-channel sample vectors.
fn beep_signal(seconds: f64, beep_ms: usize, channels: usize) -> Vec<Vec<f32>> {
    let n = (seconds * RATE as f64) as usize;
    let start = beep_ms * RATE / 1000;
    let samples: Vec<f32> = (0..n)
        .map(|i| {
            if i < start {
                0.0
            } else {
                let t = (i - start) as f32 / RATE as f32;
                0.5 * (2.0 * std::f32::consts::PI * 1000.0 * t).sin()
            }
        })
        .collect();
    vec![samples; channels]
}

/// Encodes with libopus (as a browser would), `frame_ms` per packet.
fn opus_packets(signal: &[Vec<f32>], frame_ms: u32) -> Vec<Bytes> {
    ffmpeg::init().expect("ffmpeg init");
    let channels = signal.len();
    let layout = if channels == 1 {
        ChannelLayout::MONO
    } else {
        ChannelLayout::STEREO
    };
    let codec = codec::encoder::find_by_name("libopus").expect("libopus encoder");
    let mut encoder = codec::Context::new_with_codec(codec)
        .encoder()
        .audio()
        .expect("audio encoder");
    encoder.set_rate(RATE as i32);
    encoder.set_channel_layout(layout);
    encoder.set_format(Sample::F32(SampleType::Packed));
    encoder.set_bit_rate(64_000 * channels);
    encoder.set_time_base((1, RATE as i32));
    let mut options = Dictionary::new();
    options.set("frame_duration", &frame_ms.to_string());
    let mut encoder = encoder.open_as_with(codec, options).expect("open libopus");
    let size = encoder.frame_size() as usize;
    assert_eq!(size, frame_ms as usize * RATE / 1000);
    let mut packets = Vec::new();
    let mut packet = Packet::empty();
    let total = signal[0].len();
    for (index, start) in (0..total).step_by(size).enumerate() {
        let mut frame = frame::Audio::new(Sample::F32(SampleType::Packed), size, layout);
        frame.set_rate(RATE as u32);
        frame.set_pts(Some((index * size) as i64));
        let plane = frame.plane_mut::<f32>(0);
        for i in 0..size {
            for (c, channel) in signal.iter().enumerate() {
                plane[i * channels + c] = channel.get(start + i).copied().unwrap_or(0.0);
            }
        }
        encoder.send_frame(&frame).expect("send to libopus");
        while encoder.receive_packet(&mut packet).is_ok() {
            packets.push(Bytes::copy_from_slice(packet.data().expect("opus data")));
        }
    }
    encoder.send_eof().expect("libopus eof");
    while encoder.receive_packet(&mut packet).is_ok() {
        packets.push(Bytes::copy_from_slice(packet.data().expect("opus data")));
    }
    packets
}

/// Decodes Opus packets straight (the reference for where the beep is
/// before AAC): channel 0.
fn decode_opus(packets: &[Bytes]) -> Vec<f32> {
    let codec = codec::decoder::find(Id::OPUS).expect("opus decoder");
    let mut decoder = codec::Context::new_with_codec(codec)
        .decoder()
        .audio()
        .expect("open opus decoder");
    let mut samples = Vec::new();
    let mut decoded = frame::Audio::empty();
    for p in packets {
        decoder.send_packet(&Packet::copy(p)).expect("opus packet");
        while decoder.receive_frame(&mut decoded).is_ok() {
            assert_eq!(decoded.format(), Sample::F32(SampleType::Planar));
            samples.extend_from_slice(&decoded.plane::<f32>(0)[..decoded.samples()]);
        }
    }
    samples
}

/// An ADTS header for one raw AAC-LC frame at 48 kHz, so FFmpeg's decoder
/// needs no extradata.
fn adts(frame: &[u8], channels: u8) -> Vec<u8> {
    let len = frame.len() + 7;
    let mut out = vec![
        0xff,
        0xf1,
        (1 << 6) | (3 << 2) | (channels >> 2),
        ((channels & 3) << 6) | ((len >> 11) & 3) as u8,
        ((len >> 3) & 0xff) as u8,
        (((len & 7) << 5) as u8) | 0x1f,
        0xfc,
    ];
    out.extend_from_slice(frame);
    out
}

/// Decodes raw AAC frames with FFmpeg's decoder; every frame must decode.
/// Returns the channel count and channel 0.
fn decode_aac(frames: &[&Frame]) -> (u16, Vec<f32>) {
    let codec = codec::decoder::find(Id::AAC).expect("aac decoder");
    let mut decoder = codec::Context::new_with_codec(codec)
        .decoder()
        .audio()
        .expect("open aac decoder");
    let mut samples = Vec::new();
    let mut channels = 0;
    let mut decoded = frame::Audio::empty();
    for f in frames {
        decoder
            .send_packet(&Packet::copy(&adts(&f.data, 2)))
            .expect("AAC frame decodes");
        while decoder.receive_frame(&mut decoded).is_ok() {
            channels = decoded.channels();
            assert_eq!(decoded.format(), Sample::F32(SampleType::Planar));
            samples.extend_from_slice(&decoded.plane::<f32>(0)[..decoded.samples()]);
        }
    }
    (channels, samples)
}

/// The first 1 ms window whose RMS exceeds half the beep's (0.5/√2): the
/// beep's onset, in samples.
fn onset(samples: &[f32]) -> Option<usize> {
    let window = RATE / 1000;
    samples
        .chunks(window)
        .position(|w| {
            let rms = (w.iter().map(|s| s * s).sum::<f32>() / w.len() as f32).sqrt();
            rms > 0.5 / 2f32.sqrt() / 2.0
        })
        .map(|w| w * window)
}

fn opus_frame(index: usize, data: Bytes, samples_per_packet: usize) -> Frame {
    Frame {
        codec: Codec::Opus,
        timestamp: 1_000_000 + (index * samples_per_packet) as i64,
        keyframe: true,
        data,
        composition_offset: 0,
    }
}

fn audio_start() -> RunStart {
    RunStart {
        video: None,
        audio: Some((
            AUDIO_TRACK,
            Codec::Opus,
            AudioParams {
                channels: 2,
                sample_rate: 48_000,
            },
        )),
        timing: Timing::SenderReports,
    }
}

fn samples_ns(samples: usize) -> i64 {
    (samples as i64 * 1_000_000_000 + 24_000) / 48_000
}

/// Feeds Opus packets at the times `time_of` gives (`None`: lost);
/// returns everything that came out.
fn transcode_audio_at(
    packets: &[Bytes],
    samples_per_packet: usize,
    time_of: impl Fn(usize) -> Option<i64>,
) -> (Vec<Output>, Transcoder) {
    let mut transcoder = Transcoder::new(TranscodeOptions::default());
    let mut out = Vec::new();
    transcoder.push(Output::Start(audio_start()), &mut out);
    for (i, p) in packets.iter().enumerate() {
        let Some(time_ns) = time_of(i) else {
            continue;
        };
        transcoder.push(
            Output::Frame {
                track: AUDIO_TRACK,
                time_ns,
                frame: opus_frame(i, p.clone(), samples_per_packet),
            },
            &mut out,
        );
    }
    transcoder.push(Output::End(RunEnd::Finished), &mut out);
    (out, transcoder)
}

/// Feeds Opus packets at the times of their samples (the indices in
/// `skip` left out, as if lost; those after `extra_gap_after.0` later by
/// `extra_gap_after.1`).
fn transcode_audio(
    packets: &[Bytes],
    samples_per_packet: usize,
    skip: &[usize],
    extra_gap_after: Option<(usize, i64)>,
) -> (Vec<Output>, Transcoder) {
    transcode_audio_at(packets, samples_per_packet, |i| {
        if skip.contains(&i) {
            return None;
        }
        let mut time_ns = AUDIO_START_NS + samples_ns(i * samples_per_packet);
        if let Some((after, gap)) = extra_gap_after
            && i > after
        {
            time_ns += gap;
        }
        Some(time_ns)
    })
}

/// The AAC frames of an output list, with their times.
fn aac_frames(out: &[Output]) -> Vec<(i64, &Frame)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Frame {
                track,
                time_ns,
                frame,
            } if *track == AUDIO_TRACK => Some((*time_ns, frame)),
            _ => None,
        })
        .collect()
}

/// Start first, End last, and the audio entry rewritten to AAC 48 kHz
/// stereo; every audio frame is a raw AAC access unit.
fn check_run_shape(out: &[Output]) {
    match out.first() {
        Some(Output::Start(start)) => {
            let (track, codec, params) = start.audio.expect("audio in the run");
            assert_eq!((track, codec), (AUDIO_TRACK, Codec::Aac));
            assert_eq!(
                params,
                AudioParams {
                    channels: 2,
                    sample_rate: 48_000
                }
            );
        }
        other => panic!("first output is not Start: {other:?}"),
    }
    assert!(matches!(out.last(), Some(Output::End(RunEnd::Finished))));
    let starts = out.iter().filter(|o| matches!(o, Output::Start(_))).count();
    assert_eq!(starts, 1);
    let aac = aac_frames(out);
    for (_, f) in &aac {
        assert_eq!(f.codec, Codec::Aac);
        assert!(!f.data.is_empty());
        // Raw access units, not ADTS.
        assert!(!(f.data.len() > 2 && f.data[0] == 0xff && f.data[1] & 0xf0 == 0xf0));
    }
}

/// Consecutive frames, each 1024 samples after the one before, the first
/// at the first Opus frame's time.
fn check_continuous(aac: &[(i64, &Frame)]) {
    assert_eq!(aac[0].1.timestamp, 0);
    for (i, (time_ns, frame)) in aac.iter().enumerate() {
        let expected = AUDIO_START_NS + samples_ns(i * 1024);
        assert!(
            (time_ns - expected).abs() <= 1,
            "frame {i} at {time_ns}, expected {expected}"
        );
        assert_eq!(frame.timestamp, i as i64 * 1024);
    }
}

#[test]
fn opus_becomes_aac_at_the_times_of_its_samples() {
    let signal = beep_signal(2.0, 500, 2);
    let packets = opus_packets(&signal, 20);
    let input_samples = packets.len() * 960;
    let (out, transcoder) = transcode_audio(&packets, 960, &[], None);
    check_run_shape(&out);
    let aac = aac_frames(&out);

    // Every input sample is in exactly one frame; the last is padded.
    assert_eq!(aac.len(), input_samples.div_ceil(1024), "frame count");
    // The first real sample at the first Opus frame's time (priming
    // packet dropped), and every later frame on the sample clock.
    assert!(
        (aac[0].0 - AUDIO_START_NS).abs() < 1_000_000,
        "first at {}",
        aac[0].0
    );
    check_continuous(&aac);

    // The beep is where the Opus decoder puts it (500 ms plus the Opus
    // encoder's lookahead, which a browser's stream has too).
    let reference = onset(&decode_opus(&packets)).expect("beep in the Opus audio");
    let reference_ms = reference as f64 * 1000.0 / RATE as f64;
    assert!(
        (500.0..512.0).contains(&reference_ms),
        "Opus onset {reference_ms} ms"
    );
    let (channels, decoded) = decode_aac(&aac.iter().map(|(_, f)| *f).collect::<Vec<_>>());
    assert_eq!(channels, 2);
    assert!(decoded.len() >= input_samples);
    let aac_onset = onset(&decoded).expect("beep in the AAC audio");
    // Decoded sample 0 plays at the first frame's time.
    let onset_ms =
        (aac[0].0 - AUDIO_START_NS) as f64 / 1e6 + aac_onset as f64 * 1000.0 / RATE as f64;
    assert!(
        (onset_ms - reference_ms).abs() <= 5.0,
        "AAC beep at {onset_ms} ms, Opus beep at {reference_ms} ms"
    );
    eprintln!("beep onset: Opus {reference_ms:.2} ms, AAC {onset_ms:.2} ms");

    let stats = transcoder.stats();
    assert_eq!(stats.opus_frames_in, packets.len() as u64);
    assert_eq!(stats.aac_frames_out, aac.len() as u64);
    assert_eq!(stats.audio_frames_dropped, 0);
    assert_eq!(stats.silence_samples, 0);
    assert!(transcoder.last_error().is_none());
    let cpu = transcoder.cpu_time();
    assert!(
        cpu > Duration::ZERO && cpu < Duration::from_secs(2),
        "{cpu:?}"
    );
    eprintln!(
        "{:.2} s of stereo Opus → AAC: {:?} of thread CPU ({:.2} % of a core)",
        input_samples as f64 / RATE as f64,
        cpu,
        cpu.as_secs_f64() * 100.0 / (input_samples as f64 / RATE as f64)
    );
}

#[test]
fn lost_packets_become_silence_and_later_audio_keeps_its_time() {
    // Beep at 1 s; packets 30..35 (600–700 ms) lost.
    let signal = beep_signal(1.6, 1000, 2);
    let packets = opus_packets(&signal, 20);
    let lost: Vec<usize> = (30..35).collect();
    let (out, transcoder) = transcode_audio(&packets, 960, &lost, None);
    check_run_shape(&out);
    let aac = aac_frames(&out);
    // Continuous: the lost 100 ms are there, as silence.
    assert_eq!(aac.len(), (packets.len() * 960).div_ceil(1024));
    check_continuous(&aac);
    assert_eq!(transcoder.stats().silence_samples, 5 * 960);

    // The reference decodes every packet: the beep after the gap must be
    // where it would be without the loss.
    let (_, decoded) = decode_aac(&aac.iter().map(|(_, f)| *f).collect::<Vec<_>>());
    let aac_onset_ms = aac_onset_ms(&aac, &decoded);
    let reference = onset(&decode_opus(&packets)).expect("beep") as f64 * 1000.0 / RATE as f64;
    assert!(
        (aac_onset_ms - reference).abs() <= 5.0,
        "after the gap: AAC beep at {aac_onset_ms} ms, Opus beep at {reference} ms"
    );
}

fn aac_onset_ms(aac: &[(i64, &Frame)], decoded: &[f32]) -> f64 {
    let onset = onset(decoded).expect("beep in the AAC audio");
    (aac[0].0 - AUDIO_START_NS) as f64 / 1e6 + onset as f64 * 1000.0 / RATE as f64
}

#[test]
fn a_gap_over_a_second_re_anchors() {
    let signal = beep_signal(1.0, 300, 2);
    let packets = opus_packets(&signal, 20);
    // 3 s of nothing after packet 20 (400 ms in).
    let gap = 3_000_000_000;
    let (out, transcoder) = transcode_audio(&packets, 960, &[], Some((20, gap)));
    check_run_shape(&out);
    let aac = aac_frames(&out);
    let stats = transcoder.stats();
    assert_eq!(stats.audio_reanchors, 1);
    assert_eq!(stats.silence_samples, 0);
    // The frame that starts with packet 21's first sample is at its time.
    let resumed = AUDIO_START_NS + samples_ns(21 * 960) + gap;
    let after: Vec<_> = aac
        .iter()
        .filter(|(t, _)| *t >= resumed - 1_000_000)
        .collect();
    assert!(!after.is_empty());
    assert!(
        (after[0].0 - resumed).abs() < 1_000_000,
        "resumed at {}",
        after[0].0
    );
    // Frames before the gap stay on the first anchor; times never go back.
    for pair in aac.windows(2) {
        assert!(pair[1].0 > pair[0].0);
    }
    // The timestamp jumps by the gap too (the run's 48 kHz clock from
    // the first frame).
    let expected = (21 * 960 + 3 * 48_000) as i64;
    assert!(
        (after[0].1.timestamp - expected).abs() <= 1,
        "timestamp {}",
        after[0].1.timestamp
    );
}

#[test]
fn a_sender_clock_off_the_timeline_is_followed() {
    // The sender's audio clock runs 1.5 % fast, then 1.5 % slow, against
    // the run's timeline: AAC stays continuous and follows the packet
    // times (trimming overlap, filling gaps) instead of drifting away.
    let signal = beep_signal(3.0, 2500, 2);
    let packets = opus_packets(&signal, 20);
    for (spacing_ns, trims) in [(19_700_000, true), (20_300_000, false)] {
        let time_of = |i: usize| AUDIO_START_NS + i as i64 * spacing_ns;
        let (out, transcoder) = transcode_audio_at(&packets, 960, |i| Some(time_of(i)));
        check_run_shape(&out);
        let aac = aac_frames(&out);
        for pair in aac.windows(2) {
            assert_eq!(pair[1].1.timestamp - pair[0].1.timestamp, 1024);
        }
        let stats = transcoder.stats();
        assert_eq!(stats.trimmed_samples > 0, trims, "{stats:?}");
        assert_eq!(stats.silence_samples > 0, !trims, "{stats:?}");
        // The beep is in packet 125 (2.5 s of signal), plus the Opus
        // lookahead; it must play within the correction bounds of that
        // packet's time: up to 20 ms late (overlap is trimmed beyond),
        // up to 2.5 ms early (gaps are filled beyond).
        let lookahead_ms =
            onset(&decode_opus(&packets)).expect("beep") as f64 * 1000.0 / RATE as f64 - 2500.0;
        let expected_ms = (time_of(125) - AUDIO_START_NS) as f64 / 1e6 + lookahead_ms;
        let (_, decoded) = decode_aac(&aac.iter().map(|(_, f)| *f).collect::<Vec<_>>());
        let got = aac_onset_ms(&aac, &decoded);
        eprintln!("spacing {spacing_ns} ns: beep {got:.2} ms, packet time {expected_ms:.2} ms");
        assert!(
            (-3.5..=21.0).contains(&(got - expected_ms)),
            "spacing {spacing_ns}: AAC beep at {got} ms, packet says {expected_ms} ms"
        );
    }
}

#[test]
fn mono_opus_becomes_stereo_aac_and_long_packets_count_whole() {
    // 60 ms packets: durations come from the packets, not an assumed 20 ms.
    let signal = beep_signal(1.2, 500, 1);
    let packets = opus_packets(&signal, 60);
    let (out, _) = transcode_audio(&packets, 2880, &[], None);
    check_run_shape(&out);
    let aac = aac_frames(&out);
    assert_eq!(aac.len(), (packets.len() * 2880).div_ceil(1024));
    let (channels, decoded) = decode_aac(&aac.iter().map(|(_, f)| *f).collect::<Vec<_>>());
    assert_eq!(channels, 2);
    let reference = onset(&decode_opus(&packets)).expect("beep") as f64 * 1000.0 / RATE as f64;
    let got = aac_onset_ms(&aac, &decoded);
    assert!(
        (got - reference).abs() <= 5.0,
        "AAC beep at {got} ms, Opus at {reference} ms"
    );
}

#[test]
fn a_transcoder_can_move_to_its_worker_thread() {
    fn send<T: Send>(_: &T) {}
    let transcoder = Transcoder::new(TranscodeOptions::default());
    send(&transcoder);
    let handle = std::thread::spawn(move || {
        let mut transcoder = transcoder;
        let mut out = Vec::new();
        transcoder.push(Output::Start(audio_start()), &mut out);
        transcoder.push(Output::End(RunEnd::Finished), &mut out);
        out.len()
    });
    assert_eq!(handle.join().expect("worker"), 2);
}

#[test]
fn broken_input_is_dropped_and_counted() {
    let mut transcoder = Transcoder::new(TranscodeOptions {
        video: Some(H264Options::default()),
        ..Default::default()
    });
    let mut out = Vec::new();
    let start = RunStart {
        video: Some((
            VIDEO_TRACK,
            Codec::Vp8,
            VideoConfig {
                codec: Codec::Vp8,
                width: 320,
                height: 240,
                detail: VideoDetail::None,
            },
        )),
        ..audio_start()
    };
    transcoder.push(Output::Start(start), &mut out);
    // Nothing can go out before the first H264 keyframe.
    assert!(out.is_empty());
    for i in 0..20usize {
        let garbage = Bytes::from(vec![(i * 37) as u8; 50 + i]);
        transcoder.push(
            Output::Frame {
                track: VIDEO_TRACK,
                time_ns: i as i64 * 33_333_333,
                frame: Frame {
                    codec: Codec::Vp8,
                    timestamp: i as i64 * 3000,
                    keyframe: i == 0,
                    data: garbage.clone(),
                    composition_offset: 0,
                },
            },
            &mut out,
        );
        transcoder.push(
            Output::Frame {
                track: AUDIO_TRACK,
                time_ns: i as i64 * 20_000_000,
                frame: opus_frame(i, Bytes::from_static(&[0xff, 0xff, 0xff]), 960),
            },
            &mut out,
        );
    }
    transcoder.push(Output::End(RunEnd::Finished), &mut out);
    let stats = transcoder.stats();
    assert_eq!(stats.video_frames_in, 20);
    assert_eq!(stats.h264_frames_out, 0);
    assert!(stats.video_frames_dropped >= 1, "{stats:?}");
    assert_eq!(stats.opus_frames_in, 20);
    assert_eq!(stats.audio_frames_dropped, 20, "{stats:?}");
    // Nothing of a run without a picture goes out (an audio-only run
    // would make destinations record audio alone), and it says why.
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(transcoder.last_error(), Some(&TranscodeError::NoKeyframe));
}

/// `seconds` of `size` 30 fps video from the `ffmpeg` CLI (IVF, a
/// keyframe every second): frames as the RTP assembler makes them, with
/// their times from `first_ns` on.
fn ivf_frames(
    dir: &Path,
    codec: Codec,
    size: &str,
    seconds: u32,
    first_ns: i64,
) -> Vec<(i64, Frame)> {
    let encoder: &[&str] = match codec {
        Codec::Vp8 => &["-c:v", "libvpx", "-deadline", "realtime"],
        Codec::Vp9 => &[
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
        ],
        Codec::Av1 => &["-c:v", "libaom-av1", "-usage", "realtime", "-cpu-used", "8"],
        other => panic!("no IVF encoder for {other}"),
    };
    let path = dir.join(format!("src-{codec}-{size}.ivf"));
    let source = format!("testsrc2=size={size}:rate=30");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", &source])
        .args(["-t", &seconds.to_string(), "-g", "30"])
        .args(encoder)
        .arg(&path)
        .status()
        .expect("ffmpeg must be installed");
    assert!(status.success());
    let data = std::fs::read(&path).expect("ivf");
    assert_eq!(&data[..4], b"DKIF");
    let header_len = usize::from(u16::from_le_bytes([data[6], data[7]]));
    let mut rest = &data[header_len..];
    let mut frames = Vec::new();
    while rest.len() >= 12 && frames.len() < 10_000 {
        let size = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let pts = i64::from_le_bytes(rest[4..12].try_into().expect("8 bytes"));
        let payload = &rest[12..12 + size];
        let keyframe = match codec {
            // VP8 frame tag: bit 0 clear on keyframes.
            Codec::Vp8 => payload[0] & 1 == 0,
            _ => pts % 30 == 0,
        };
        frames.push((
            first_ns + pts * 1_000_000_000 / 30,
            Frame {
                codec,
                timestamp: pts * 3000,
                keyframe,
                data: Bytes::copy_from_slice(payload),
                composition_offset: 0,
            },
        ));
        rest = &rest[12 + size..];
    }
    frames
}

/// Runs video frames (and Opus, interleaved by time as the pipeline
/// would) through a transcoder with H264 on; returns its outputs.
fn transcode_video(video: &[(i64, Frame)], opus: &[Bytes]) -> (Vec<Output>, Transcoder) {
    let mut transcoder = Transcoder::new(TranscodeOptions {
        video: Some(H264Options::default()),
        ..Default::default()
    });
    let mut out = Vec::new();
    let codec = video[0].1.codec;
    let config = VideoConfig::from_keyframe(&video[0].1).expect("a keyframe first");
    transcoder.push(
        Output::Start(RunStart {
            video: Some((VIDEO_TRACK, codec, config)),
            ..audio_start()
        }),
        &mut out,
    );
    let mut audio = opus.iter().enumerate().peekable();
    let push_audio =
        |transcoder: &mut Transcoder, out: &mut Vec<Output>, (i, p): (usize, &Bytes)| {
            transcoder.push(
                Output::Frame {
                    track: AUDIO_TRACK,
                    time_ns: samples_ns(i * 960),
                    frame: opus_frame(i, p.clone(), 960),
                },
                out,
            );
        };
    for (time_ns, frame) in video {
        while let Some(packet) = audio.next_if(|(i, _)| samples_ns(i * 960) < *time_ns) {
            push_audio(&mut transcoder, &mut out, packet);
        }
        transcoder.push(
            Output::Frame {
                track: VIDEO_TRACK,
                time_ns: *time_ns,
                frame: frame.clone(),
            },
            &mut out,
        );
    }
    for packet in audio {
        push_audio(&mut transcoder, &mut out, packet);
    }
    transcoder.push(Output::End(RunEnd::Finished), &mut out);
    (out, transcoder)
}

/// The H264 frames of an output list, with their times.
fn h264_frames(out: &[Output]) -> Vec<(i64, &Frame)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Frame {
                track: VIDEO_TRACK,
                time_ns,
                frame,
            } => Some((*time_ns, frame)),
            _ => None,
        })
        .collect()
}

/// Writes the frames as an Annex-B stream and has FFmpeg decode it: no
/// error output, every frame decoded.
fn check_decodes(dir: &Path, name: &str, h264: &[(i64, &Frame)]) {
    let mut annex_b = Vec::new();
    for (_, f) in h264 {
        assert_eq!(f.codec, Codec::H264);
        let mut rest = &f.data[..];
        while rest.len() >= 4 {
            let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            annex_b.extend_from_slice(&[0, 0, 0, 1]);
            annex_b.extend_from_slice(&rest[4..4 + len]);
            rest = &rest[4 + len..];
        }
    }
    let path = dir.join(name);
    std::fs::write(&path, &annex_b).expect("write h264");
    assert_eq!(common::decode_errors(&path), "");
    assert_eq!(common::decoded_frames(&path, "v:0"), h264.len() as u64);
}

/// Frame times of all outputs never go back.
fn check_time_order(out: &[Output]) {
    let times: Vec<i64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Frame { time_ns, .. } => Some(*time_ns),
            _ => None,
        })
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "outputs out of time order"
    );
}

fn nal_types(frame: &Frame) -> Vec<u8> {
    let mut types = Vec::new();
    let mut rest = &frame.data[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        assert!(rest.len() >= 4 + len, "NAL length past the end");
        types.push(rest[4] & 0x1f);
        rest = &rest[4 + len..];
    }
    assert!(rest.is_empty());
    types
}

#[test]
fn vp8_becomes_h264_with_in_band_parameter_sets() {
    let dir = TempDir::new("transcode-vp8");
    let vp8 = ivf_frames(dir.path(), Codec::Vp8, "320x240", 3, 0);
    assert_eq!(vp8.len(), 90);
    let opus = opus_packets(&beep_signal(3.0, 1000, 2), 20);
    let (out, transcoder) = transcode_video(&vp8, &opus);

    let Some(Output::Start(start)) = out.first() else {
        panic!("first output is not Start: {:?}", out.first());
    };
    let (track, codec, config) = start.video.clone().expect("video in the run");
    assert_eq!((track, codec), (VIDEO_TRACK, Codec::H264));
    assert_eq!(
        (config.codec, config.width, config.height),
        (Codec::H264, 320, 240)
    );
    assert!(matches!(config.detail, VideoDetail::Avc(_)));
    assert_eq!(start.audio.map(|a| a.1), Some(Codec::Aac));
    assert!(matches!(out.last(), Some(Output::End(_))));
    check_time_order(&out);

    let h264 = h264_frames(&out);
    assert_eq!(h264.len(), vp8.len());
    for ((time, frame), (vp8_time, _)) in h264.iter().zip(&vp8) {
        assert_eq!(frame.codec, Codec::H264);
        assert_eq!(time, vp8_time);
        assert_eq!(frame.timestamp, (time * 9 + 50_000) / 100_000);
    }
    // Keyframes by time: at 0 and 2 s (the source has one every second).
    let keyframes: Vec<i64> = h264
        .iter()
        .filter(|(_, f)| f.keyframe)
        .map(|(t, _)| *t)
        .collect();
    assert!(h264[0].1.keyframe, "first frame is a keyframe");
    assert_eq!(keyframes, [0, 2_000_000_000], "keyframes");
    for (_, f) in h264.iter().filter(|(_, f)| f.keyframe) {
        let types = nal_types(f);
        assert!(
            types.contains(&7) && types.contains(&8) && types.contains(&5),
            "{types:?}"
        );
    }
    for (_, f) in h264.iter().filter(|(_, f)| !f.keyframe) {
        assert!(!nal_types(f).contains(&5));
    }
    check_decodes(dir.path(), "vp8.h264", &h264);

    let stats = transcoder.stats();
    assert_eq!(stats.video_frames_dropped, 0, "{stats:?}");
    assert_eq!(stats.h264_frames_out, 90);
    assert_eq!(aac_frames(&out).len(), (opus.len() * 960).div_ceil(1024));
    assert!(transcoder.last_error().is_none());
    eprintln!(
        "3 s of 320x240 VP8 → H264 and stereo Opus → AAC: {:?} of thread CPU",
        transcoder.cpu_time()
    );
}

#[test]
fn vp9_and_av1_become_h264() {
    let dir = TempDir::new("transcode-vp9-av1");
    for codec in [Codec::Vp9, Codec::Av1] {
        let frames = ivf_frames(dir.path(), codec, "320x240", 1, 0);
        assert_eq!(frames.len(), 30, "{codec}");
        let (out, transcoder) = transcode_video(&frames, &[]);
        let Some(Output::Start(start)) = out.first() else {
            panic!("{codec}: first output is not Start");
        };
        let (_, out_codec, config) = start.video.clone().expect("video in the run");
        assert_eq!(
            (out_codec, config.width, config.height),
            (Codec::H264, 320, 240)
        );
        let h264 = h264_frames(&out);
        assert_eq!(h264.len(), 30, "{codec}: {:?}", transcoder.stats());
        assert!(h264[0].1.keyframe);
        for ((time, _), (source_time, _)) in h264.iter().zip(&frames) {
            assert_eq!(time, source_time, "{codec}");
        }
        check_decodes(dir.path(), &format!("{codec}.h264"), &h264);
    }
}

#[test]
fn a_layer_of_another_size_is_scaled_to_the_runs_size() {
    // A simulcast switch keeps the run: 1 s at 320x240, then 1 s at 160x120.
    let dir = TempDir::new("transcode-switch");
    let mut frames = ivf_frames(dir.path(), Codec::Vp8, "320x240", 1, 0);
    frames.extend(ivf_frames(
        dir.path(),
        Codec::Vp8,
        "160x120",
        1,
        1_000_000_000,
    ));
    let (out, transcoder) = transcode_video(&frames, &[]);
    let h264 = h264_frames(&out);
    assert_eq!(h264.len(), 60, "{:?}", transcoder.stats());
    for (_, f) in h264.iter().filter(|(_, f)| f.keyframe) {
        let config = VideoConfig::from_keyframe(f).expect("SPS/PPS");
        assert_eq!((config.width, config.height), (320, 240));
    }
    check_decodes(dir.path(), "switch.h264", &h264);
}

#[test]
fn h264_passes_through_untouched() {
    let dir = TempDir::new("transcode-h264");
    let h264 = common::h264_frames(dir.path(), 1);
    let config = VideoConfig::from_keyframe(&h264[0]).expect("H264 keyframe");
    let opus = opus_packets(&beep_signal(1.0, 200, 2), 20);
    let mut transcoder = Transcoder::new(TranscodeOptions {
        video: Some(H264Options::default()),
        ..Default::default()
    });
    let mut out = Vec::new();
    transcoder.push(
        Output::Start(RunStart {
            video: Some((VIDEO_TRACK, Codec::H264, config.clone())),
            ..audio_start()
        }),
        &mut out,
    );
    // The RunStart goes out at once: nothing to wait for.
    assert_eq!(out.len(), 1);
    let mut audio = opus.iter().enumerate().peekable();
    for (n, frame) in h264.iter().enumerate() {
        let time_ns = n as i64 * 1_000_000_000 / 30;
        while let Some((i, p)) = audio.next_if(|(i, _)| samples_ns(i * 960) < time_ns) {
            transcoder.push(
                Output::Frame {
                    track: AUDIO_TRACK,
                    time_ns: samples_ns(i * 960),
                    frame: opus_frame(i, p.clone(), 960),
                },
                &mut out,
            );
        }
        transcoder.push(
            Output::Frame {
                track: VIDEO_TRACK,
                time_ns,
                frame: frame.clone(),
            },
            &mut out,
        );
    }
    for (i, p) in audio {
        transcoder.push(
            Output::Frame {
                track: AUDIO_TRACK,
                time_ns: samples_ns(i * 960),
                frame: opus_frame(i, p.clone(), 960),
            },
            &mut out,
        );
    }
    transcoder.push(Output::End(RunEnd::Finished), &mut out);
    let Some(Output::Start(start)) = out.first() else {
        panic!("no Start");
    };
    assert_eq!(start.video, Some((VIDEO_TRACK, Codec::H264, config)));
    let passed: Vec<&Frame> = out
        .iter()
        .filter_map(|o| match o {
            Output::Frame {
                track: VIDEO_TRACK,
                frame,
                ..
            } => Some(frame),
            _ => None,
        })
        .collect();
    assert_eq!(passed.len(), h264.len());
    for (a, b) in passed.iter().zip(&h264) {
        assert_eq!(
            (a.codec, a.timestamp, a.keyframe, &a.data),
            (b.codec, b.timestamp, b.keyframe, &b.data)
        );
    }
    let times: Vec<i64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Frame { time_ns, .. } => Some(*time_ns),
            _ => None,
        })
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "outputs out of time order"
    );
    assert_eq!(aac_frames(&out).len(), (opus.len() * 960).div_ceil(1024));
}

/// Thread ids of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

#[test]
fn codecs_run_on_the_callers_thread() {
    // Counting threads needs a process where nothing else runs: this
    // test runs itself again, alone.
    const ALONE: &str = "WHIPCORD_TRANSCODE_THREAD_CHECK";
    if std::env::var_os(ALONE).is_none() {
        let output = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "codecs_run_on_the_callers_thread",
                "--test-threads=1",
            ])
            .env(ALONE, "1")
            .output()
            .expect("run the test alone");
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }
    let dir = TempDir::new("transcode-threads");
    let opus = opus_packets(&beep_signal(0.5, 100, 2), 20);
    for codec in [Codec::Vp8, Codec::Vp9, Codec::Av1] {
        let video = ivf_frames(dir.path(), codec, "320x240", 1, 0);
        let before = threads();
        let mut transcoder = Transcoder::new(TranscodeOptions {
            video: Some(H264Options::default()),
            ..Default::default()
        });
        let mut out = Vec::new();
        let config = VideoConfig::from_keyframe(&video[0].1).expect("keyframe");
        transcoder.push(
            Output::Start(RunStart {
                video: Some((VIDEO_TRACK, codec, config)),
                ..audio_start()
            }),
            &mut out,
        );
        for (i, ((time_ns, frame), packet)) in video.iter().zip(&opus).enumerate() {
            transcoder.push(
                Output::Frame {
                    track: VIDEO_TRACK,
                    time_ns: *time_ns,
                    frame: frame.clone(),
                },
                &mut out,
            );
            transcoder.push(
                Output::Frame {
                    track: AUDIO_TRACK,
                    time_ns: *time_ns,
                    frame: opus_frame(i, packet.clone(), 960),
                },
                &mut out,
            );
        }
        // The codecs are open now (pictures and AAC frames came out).
        assert!(h264_frames(&out).len() > 10 && aac_frames(&out).len() > 5);
        assert_eq!(threads(), before, "{codec}: the codecs started threads");
        transcoder.push(Output::End(RunEnd::Finished), &mut out);
    }
}
