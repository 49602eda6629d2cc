//! WebM files left unfinished by a crash, repaired by `webm::recover`:
//! FFmpeg decodes them without a message, FFprobe reports the duration
//! `recover` wrote, and every frame before the cut is still there. A
//! finished file is left byte for byte as it was.

mod common;

use std::path::Path;

use common::{Timed, decode_errors, decoded_frames, duration, interleave};
use recorder::params::{AudioParams, VideoConfig};
use recorder::webm::{WebmRecording, WebmSummary, recover};

/// Records `frames`; `finish` or not. Without finish, returns the file's
/// bytes as they were while the recording was still open (what a
/// `kill -9` leaves), before the recording is dropped.
fn record(path: &Path, frames: &[Timed], finish: bool) -> Vec<u8> {
    let video = frames
        .iter()
        .filter(|(_, f)| f.keyframe)
        .find_map(|(_, f)| VideoConfig::from_keyframe(f));
    let audio = AudioParams {
        channels: 2,
        sample_rate: 48_000,
    };
    let mut rec = WebmRecording::create(path, video, Some(audio)).expect("create");
    for (ns, frame) in frames {
        rec.write(frame, *ns).expect("write");
    }
    if finish {
        rec.finish().expect("finish");
        return std::fs::read(path).expect("file");
    }
    let crashed = std::fs::read(path).expect("file");
    drop(rec);
    crashed
}

fn vp9_and_opus(dir: &Path) -> Vec<Timed> {
    interleave(common::vp9(dir, "320x240", 3.0, 0), common::opus(dir, 3.0))
}

fn assert_clean(path: &Path) {
    assert_eq!(
        decode_errors(path),
        "",
        "ffmpeg reported errors on {}",
        path.display()
    );
}

/// FFprobe's duration is the one `recover` wrote into Info.
fn assert_duration(path: &Path, summary: &WebmSummary) {
    let probed = duration(path);
    assert!(
        (probed - summary.duration.as_secs_f64()).abs() < 0.1,
        "ffprobe {probed} s, recover {:?}",
        summary.duration
    );
}

/// A SimpleBlock as found in the file.
#[derive(Debug, Clone, Copy)]
struct Block {
    start: usize,
    end: usize,
    track: u64,
}

/// Clusters' starts and the blocks in them, walked independently of the
/// recorder's parser (whole elements only).
fn layout(data: &[u8]) -> (Vec<usize>, Vec<Block>) {
    fn vint(data: &[u8], pos: usize, keep_marker: bool) -> Option<(u64, usize)> {
        let first = *data.get(pos)?;
        let len = first.leading_zeros() as usize + 1;
        if len > 8 {
            return None;
        }
        let bytes = data.get(pos..pos + len)?;
        let mut v = if keep_marker {
            u64::from(first)
        } else {
            u64::from(first) & (0xffu64 >> len)
        };
        for &b in &bytes[1..] {
            v = v << 8 | u64::from(b);
        }
        Some((v, len))
    }
    // (id, data start, data end or None when unknown)
    let header = |pos: usize| -> Option<(u64, usize, Option<usize>)> {
        let (id, il) = vint(data, pos, true)?;
        let (size, sl) = vint(data, pos + il, false)?;
        let unknown = size == (1u64 << (7 * sl)) - 1;
        let start = pos + il + sl;
        Some((id, start, (!unknown).then_some(start + size as usize)))
    };
    let mut clusters = Vec::new();
    let mut blocks = Vec::new();
    let (_, _, Some(ebml_end)) = header(0).expect("EBML header") else {
        panic!("EBML header of unknown size");
    };
    let (segment_id, mut pos, _) = header(ebml_end).expect("segment");
    assert_eq!(segment_id, 0x1853_8067);
    while let Some((id, start, end)) = header(pos) {
        if id != 0x1F43_B675 {
            match end {
                Some(end) if end <= data.len() => pos = end,
                _ => break,
            }
            continue;
        }
        clusters.push(pos);
        let cluster_end = end.unwrap_or(data.len()).min(data.len());
        let mut p = start;
        while let Some((child, child_start, Some(child_end))) = header(p) {
            if child == 0x1F43_B675 || child_end > cluster_end {
                break;
            }
            if child == 0xA3 {
                let (track, _) = vint(data, child_start, false).expect("track number");
                blocks.push(Block {
                    start: p,
                    end: child_end,
                    track,
                });
            }
            p = child_end;
        }
        pos = p;
        if p >= cluster_end && end.is_none() {
            break;
        }
    }
    (clusters, blocks)
}

/// Video (track 1) and audio (track 2) blocks that end before `cut`.
fn blocks_before(blocks: &[Block], cut: usize) -> (u64, u64) {
    let kept = blocks.iter().filter(|b| b.end <= cut);
    let video = kept.clone().filter(|b| b.track == 1).count() as u64;
    let audio = kept.filter(|b| b.track == 2).count() as u64;
    (video, audio)
}

#[test]
fn crashed_recording_gets_its_sizes_and_duration() {
    let dir = common::workdir("webm-recover-crash");
    let frames = vp9_and_opus(&dir);
    let path = dir.join("rec.webm");
    let crashed = record(&path, &frames, false);
    std::fs::write(&path, &crashed).expect("write crashed copy");
    let (clusters, blocks) = layout(&crashed);
    assert!(clusters.len() >= 3, "clusters: {clusters:?}");
    let (video, audio) = blocks_before(&blocks, crashed.len());

    let summary = recover(&path).expect("recover");
    assert_eq!(summary.bytes, std::fs::metadata(&path).expect("file").len());
    assert_eq!(summary.bytes, crashed.len() as u64, "no torn block to cut");
    assert_clean(&path);
    assert_duration(&path, &summary);
    assert!(summary.duration.as_secs_f64() > 2.0, "{summary:?}");
    assert_eq!(decoded_frames(&path, "v:0"), video);
    assert_eq!(decoded_frames(&path, "a:0"), audio);

    // A second run finds nothing to do.
    let repaired = std::fs::read(&path).expect("file");
    assert_eq!(recover(&path).expect("again"), summary);
    assert_eq!(std::fs::read(&path).expect("file"), repaired);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn finished_file_is_left_unchanged() {
    let dir = common::workdir("webm-recover-finished");
    let frames = vp9_and_opus(&dir);
    let path = dir.join("rec.webm");
    let finished = record(&path, &frames, true);
    let summary = recover(&path).expect("recover");
    assert_eq!(std::fs::read(&path).expect("file"), finished);
    assert_eq!(summary.bytes, finished.len() as u64);
    assert_duration(&path, &summary);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn file_cut_mid_cluster_keeps_every_complete_block() {
    let dir = common::workdir("webm-recover-cut");
    let frames = vp9_and_opus(&dir);
    let crashed = record(&dir.join("crashed.webm"), &frames, false);
    let finished = record(&dir.join("finished.webm"), &frames, true);
    let (clusters, blocks) = layout(&crashed);
    assert!(clusters.len() >= 3, "clusters: {clusters:?}");
    let in_cluster = |n: usize| -> Vec<Block> {
        let end = clusters.get(n + 1).copied().unwrap_or(crashed.len());
        blocks
            .iter()
            .filter(|b| b.start > clusters[n] && b.end <= end)
            .copied()
            .collect()
    };
    let second = in_cluster(1);
    let third = in_cluster(2);
    let mid = |b: &Block| b.start + (b.end - b.start) / 2;
    let cuts = [
        // Inside a block in the middle of a closed (sized) cluster.
        ("closed", &crashed, mid(&second[second.len() / 2])),
        // Inside the header of a block of the open (unknown-size) one.
        ("open", &crashed, third[third.len() / 3].start + 2),
        // Inside a cluster's own header: that cluster goes.
        ("header", &crashed, clusters[1] + 6),
        // A finished file cut later: its Cues and SeekHead targets go.
        ("finished", &finished, mid(&third[third.len() / 2])),
    ];
    for (name, data, cut) in cuts {
        let path = dir.join(format!("cut-{name}.webm"));
        std::fs::write(&path, &data[..cut]).expect("write cut");
        let (_, blocks) = layout(data);
        let (video, audio) = blocks_before(&blocks, cut);
        let summary = recover(&path).expect("recover");
        let kept_end = blocks
            .iter()
            .filter(|b| b.end <= cut)
            .map(|b| b.end)
            .max()
            .expect("blocks before the cut");
        assert_eq!(
            summary.bytes, kept_end as u64,
            "{name}: cut after the last whole block"
        );
        assert_eq!(std::fs::metadata(&path).expect("file").len(), summary.bytes);
        assert_clean(&path);
        assert_duration(&path, &summary);
        assert_eq!(decoded_frames(&path, "v:0"), video, "{name}: video frames");
        assert_eq!(decoded_frames(&path, "a:0"), audio, "{name}: audio frames");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn garbage_and_any_cut_are_errors_or_repairs_never_panics() {
    let dir = common::workdir("webm-recover-garbage");
    let path = dir.join("junk.webm");
    let junk: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for data in [
        &[][..],
        &[0x1A, 0x45, 0xDF],
        &junk[..],
        &[0x1A, 0x45, 0xDF, 0xA3, 0x80],
    ] {
        std::fs::write(&path, data).expect("write");
        assert!(recover(&path).is_err(), "{data:?} is no WebM");
        assert_eq!(
            std::fs::read(&path).expect("file"),
            data,
            "errors write nothing"
        );
    }

    let frames: Vec<Timed> = interleave(
        common::vp9(&dir, "160x120", 1.5, 0),
        common::opus(&dir, 1.5),
    );
    let finished = record(&dir.join("finished.webm"), &frames, true);
    let mut cuts: Vec<usize> = (0..400).collect();
    cuts.extend((400..finished.len()).step_by(997));
    for cut in cuts {
        std::fs::write(&path, &finished[..cut]).expect("write cut");
        match recover(&path) {
            Ok(summary) => {
                assert_eq!(std::fs::metadata(&path).expect("file").len(), summary.bytes);
                assert!(summary.bytes <= cut as u64);
                assert!(summary.duration.as_secs_f64() < 1.6, "{summary:?}");
            }
            Err(e) => assert!(cut < 400, "cut at {cut}: {e}"),
        }
    }
    // Bytes flipped in a complete file: still no panic.
    for (i, pos) in (50..finished.len()).step_by(131).enumerate() {
        let mut damaged = finished.clone();
        damaged[pos] ^= 0x5a ^ i as u8;
        std::fs::write(&path, &damaged).expect("write damaged");
        let _ = recover(&path);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
