//! Our FLV tag bodies against FFmpeg's FLV muxer, from the same real
//! libx264 and AAC streams: the sequence headers must match byte for
//! byte, and the frames must match apart from the NAL units we leave out
//! on purpose (access unit delimiters, in-band SPS/PPS).

mod common;

use std::path::Path;
use std::process::Command;

use common::{TempDir, aac_frames, h264_frames};
use recorder::params::{VideoConfig, length_prefixed_nals};
use rtmp_bridge::flv;

/// `(tag type, body)` of every tag in an FLV file.
fn flv_tags(path: &Path) -> Vec<(u8, Vec<u8>)> {
    let data = std::fs::read(path).expect("flv");
    assert_eq!(&data[..3], b"FLV");
    let mut pos = u32::from_be_bytes(data[5..9].try_into().unwrap()) as usize + 4;
    let mut tags = Vec::new();
    while pos + 11 <= data.len() {
        let kind = data[pos] & 0x1f;
        let size = u32::from_be_bytes([0, data[pos + 1], data[pos + 2], data[pos + 3]]) as usize;
        tags.push((kind, data[pos + 11..pos + 11 + size].to_vec()));
        pos += 11 + size + 4;
    }
    tags
}

fn mux_flv(input: &Path, out: &Path) {
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(input)
        .args(["-c", "copy", "-f", "flv"])
        .arg(out)
        .status()
        .expect("ffmpeg");
    assert!(status.success());
}

/// The NAL units of an AVC NALU packet body, without the kinds we drop.
fn kept_nals(body: &[u8]) -> Vec<Vec<u8>> {
    length_prefixed_nals(&body[5..])
        .filter(|nal| !matches!(nal[0] & 0x1f, 7..=9))
        .map(<[u8]>::to_vec)
        .collect()
}

#[test]
fn avc_bodies_match_ffmpeg() {
    let dir = TempDir::new("flv-avc");
    let frames = h264_frames(dir.path(), 1);
    assert_eq!(frames.len(), 30);
    let flv_path = dir.path().join("ffmpeg.flv");
    mux_flv(&dir.path().join("src.h264"), &flv_path);
    let video: Vec<Vec<u8>> = flv_tags(&flv_path)
        .into_iter()
        .filter(|(kind, _)| *kind == 9)
        .map(|(_, body)| body)
        .collect();

    let config = VideoConfig::from_keyframe(&frames[0]).expect("SPS/PPS in the keyframe");
    assert_eq!((config.width, config.height), (640, 360));
    let record = config.decoder_config_record().expect("avcC");
    let ours = flv::avc_sequence_header(&record);
    assert_eq!(ours.as_ref(), video[0].as_slice(), "AVC sequence header");
    assert_eq!(&ours[..6], [0x17, 0, 0, 0, 0, 1]);
    assert_eq!(ours[6], 66, "baseline profile");

    let mut tagger = flv::AvcTagger::new();
    for (i, frame) in frames.iter().enumerate() {
        let tags = tagger.push(frame);
        assert_eq!(tags.sequence_header.is_some(), i == 0, "frame {i}");
        let body = tags.nalu.expect("a NALU packet per frame");
        let theirs = &video[i + 1];
        // Frame type, packet type and composition time 0 (no B-frames).
        assert_eq!(body[..5], theirs[..5], "frame {i} header");
        assert_eq!(body[0], if i == 0 { 0x17 } else { 0x27 });
        assert!(
            length_prefixed_nals(&body[5..]).all(|n| !matches!(n[0] & 0x1f, 7..=9)),
            "frame {i}: no SPS, PPS or AUD left"
        );
        assert_eq!(kept_nals(&body), kept_nals(theirs), "frame {i} NAL units");
    }
}

#[test]
fn sequence_header_is_resent_when_parameters_change() {
    let dir = TempDir::new("flv-change");
    let first = h264_frames(dir.path(), 1);
    // The same clip at another size: new SPS.
    let status = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x180:rate=30:duration=1",
        ])
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-g",
            "30",
            "-x264-params",
            "aud=1",
            "-f",
            "h264",
        ])
        .arg(dir.path().join("src.h264"))
        .status()
        .expect("ffmpeg");
    assert!(status.success());
    let data = std::fs::read(dir.path().join("src.h264")).unwrap();
    let mut key = Vec::new();
    for nal in common::annexb_nals(&data) {
        if nal[0] & 0x1f == 9 && !key.is_empty() {
            break;
        }
        key.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        key.extend_from_slice(nal);
    }
    let second = recorder::rtp::Frame {
        codec: recorder::codec::Codec::H264,
        timestamp: 90_000,
        keyframe: true,
        data: key.into(),
        composition_offset: 0,
    };

    let mut tagger = flv::AvcTagger::new();
    // A delta frame before any keyframe cannot be decoded: nothing.
    assert_eq!(tagger.push(&first[1]), flv::AvcTags::default());
    assert!(tagger.push(&first[0]).sequence_header.is_some());
    assert!(tagger.push(&first[1]).sequence_header.is_none());
    // The next keyframe with the same SPS/PPS: no new header.
    assert!(tagger.push(&first[0]).sequence_header.is_none());
    let tags = tagger.push(&second);
    assert!(
        tags.sequence_header.is_some(),
        "new SPS → new sequence header"
    );
    assert_eq!(
        tagger.config().map(|c| (c.width, c.height)),
        Some((320, 180))
    );
}

#[test]
fn aac_bodies_match_ffmpeg() {
    let dir = TempDir::new("flv-aac");
    let frames = aac_frames(dir.path(), 1);
    assert!(frames.len() >= 47, "{} AAC frames", frames.len());
    let flv_path = dir.path().join("ffmpeg.flv");
    mux_flv(&dir.path().join("src.aac"), &flv_path);
    let audio: Vec<Vec<u8>> = flv_tags(&flv_path)
        .into_iter()
        .filter(|(kind, _)| *kind == 8)
        .map(|(_, body)| body)
        .collect();
    let asc = flv::aac_lc_audio_specific_config(48000, 2).unwrap();
    assert_eq!(
        flv::aac_sequence_header(&asc).as_ref(),
        [0xaf, 0x00, 0x11, 0x90]
    );
    // FFmpeg writes an empty sequence header before its bitstream filter
    // has read the ADTS header, then the real one.
    let headers: Vec<&Vec<u8>> = audio.iter().filter(|b| b[1] == 0 && b.len() > 2).collect();
    assert_eq!(headers, [&vec![0xaf, 0x00, 0x11, 0x90]]);
    let raw: Vec<&Vec<u8>> = audio.iter().filter(|b| b[1] == 1).collect();
    assert_eq!(raw.len(), frames.len());
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(
            flv::aac_raw_frame(frame).as_ref(),
            raw[i].as_slice(),
            "frame {i}"
        );
    }
}
