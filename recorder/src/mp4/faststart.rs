//! Fragmented → progressive MP4 with `moov` first ("faststart"), for
//! players and editors that handle fragments badly.
//!
//! The fragments are read with the same box types the writer uses; the
//! sample tables are built here rather than by `shiguredo_mp4`'s
//! `Mp4FileMuxer`, which, like its segment muxer, starts every track at
//! time zero: a track that starts later (video after audio) would move.
//! Here such a track gets an edit list with an empty edit as long as its
//! first `tfdt`, so every sample keeps its time. The sample entries and
//! the rest of each `trak` come from the source `moov` unchanged.
//!
//! Each `trun` becomes one chunk; chunks keep the source's order, so the
//! tracks stay interleaved in time as they were.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::num::NonZeroU32;
use std::path::Path;

use shiguredo_mp4::boxes::{
    Brand, Co64Box, CttsBox, CttsEntry, EdtsBox, ElstBox, ElstEntry, FtypBox, MoofBox, MoovBox,
    SampleEntry, StcoBox, StscBox, StscEntry, StssBox, StszBox, SttsBox, TrafBox, TrakBox, TrexBox,
};
use shiguredo_mp4::{Decode, Either, Encode, FixedPointNumber, SampleFlags};

use super::{Mp4Error, Mp4Summary, box_header, encode_err, ticks_to_duration};

/// One sample as the fragments describe it.
struct SampleInfo {
    duration: u32,
    size: u32,
    sync: bool,
    composition_offset: i64,
}

/// A run of one track's samples, contiguous in the source.
struct Chunk {
    track: usize,
    source_offset: u64,
    len: u64,
    samples: u32,
    description_index: u32,
}

/// What the fragments hold for one `trak` of the source `moov`.
struct TrackSamples {
    track_id: u32,
    trex: Option<TrexBox>,
    /// Decode time of the first sample (the first `tfdt`).
    start: Option<u64>,
    /// Decode time after the last sample.
    next: u64,
    samples: Vec<SampleInfo>,
}

/// Writes `src` (a fragmented recording, finished or recovered) to `dst`
/// as a progressive MP4 with `moov` before `mdat`. A fragment cut short at
/// the end of `src` is left out. `dst` is created or truncated; write to a
/// temporary name and rename, as it is incomplete until this returns.
pub fn faststart(src: &Path, dst: &Path) -> Result<Mp4Summary, Mp4Error> {
    let mut input = File::open(src)?;
    let len = input.metadata()?.len();
    let (moov, tracks, chunks) = read_fragments(&mut input, len)?;

    let payload: u64 = chunks.iter().map(|c| c.len).sum();
    let mdat_header = mdat_header(payload);
    let ftyp = ftyp(&moov).encode_to_vec().map_err(encode_err)?;
    // Offsets do not change the size of `moov` once `stco`/`co64` is
    // chosen: size it with zeros, then fill the real offsets in.
    let zeros = vec![0; chunks.len()];
    let mut large = false;
    let mut moov_len = build_moov(&moov, &tracks, &chunks, &zeros, large)?.len() as u64;
    let mut base = ftyp.len() as u64 + moov_len + mdat_header.len() as u64;
    if base + payload > u64::from(u32::MAX) {
        large = true;
        moov_len = build_moov(&moov, &tracks, &chunks, &zeros, large)?.len() as u64;
        base = ftyp.len() as u64 + moov_len + mdat_header.len() as u64;
    }
    let mut offsets = Vec::with_capacity(chunks.len());
    let mut at = base;
    for chunk in &chunks {
        offsets.push(at);
        at += chunk.len;
    }
    let moov_bytes = build_moov(&moov, &tracks, &chunks, &offsets, large)?;
    if moov_bytes.len() as u64 != moov_len {
        return Err(Mp4Error::Encode(
            "moov changed size with its offsets".into(),
        ));
    }

    let mut out = BufWriter::new(File::create(dst).map_err(|source| Mp4Error::Create {
        path: dst.display().to_string(),
        source,
    })?);
    out.write_all(&ftyp)?;
    out.write_all(&moov_bytes)?;
    out.write_all(&mdat_header)?;
    for chunk in &chunks {
        input.seek(SeekFrom::Start(chunk.source_offset))?;
        let copied = std::io::copy(&mut (&mut input).take(chunk.len), &mut out)?;
        if copied != chunk.len {
            return Err(Mp4Error::NotRecording(
                "sample data past the end of the file",
            ));
        }
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;

    let duration = tracks
        .iter()
        .zip(&moov.trak_boxes)
        .map(|(t, trak)| ticks_to_duration(t.next, trak.mdia_box.mdhd_box.timescale.get()))
        .max()
        .unwrap_or_default();
    Ok(Mp4Summary {
        duration,
        bytes: at,
    })
}

/// The source's `moov`, each of its tracks' samples, and the chunks in
/// file order. Stops at the first fragment that is not whole.
fn read_fragments(
    input: &mut File,
    len: u64,
) -> Result<(MoovBox, Vec<TrackSamples>, Vec<Chunk>), Mp4Error> {
    let mut moov: Option<MoovBox> = None;
    let mut tracks: Vec<TrackSamples> = Vec::new();
    let mut chunks = Vec::new();
    let mut pos = 0u64;
    while let Some((kind, box_len)) = read_header(input, pos, len)? {
        match &kind {
            b"moov" => {
                let data = read_box(input, pos, box_len)?;
                let (decoded, _) = MoovBox::decode(&data)
                    .map_err(|_| Mp4Error::NotRecording("unreadable moov"))?;
                tracks = decoded
                    .trak_boxes
                    .iter()
                    .map(|t| TrackSamples {
                        track_id: t.tkhd_box.track_id,
                        trex: decoded.mvex_box.as_ref().and_then(|m| {
                            m.trex_boxes
                                .iter()
                                .find(|x| x.track_id == t.tkhd_box.track_id)
                                .cloned()
                        }),
                        start: None,
                        next: 0,
                        samples: Vec::new(),
                    })
                    .collect();
                moov = Some(decoded);
            }
            b"moof" => {
                let mdat_pos = pos + box_len;
                let Some((mdat_kind, mdat_len)) = read_header(input, mdat_pos, len)? else {
                    break;
                };
                if &mdat_kind != b"mdat" || moov.is_none() {
                    break;
                }
                let data = read_box(input, pos, box_len)?;
                let Ok((moof, _)) = MoofBox::decode(&data) else {
                    break;
                };
                let mdat = (mdat_pos, mdat_pos + mdat_len);
                let mut next_base = pos;
                for traf in &moof.traf_boxes {
                    next_base = read_traf(traf, pos, next_base, mdat, &mut tracks, &mut chunks)?;
                }
                pos = mdat.1;
                continue;
            }
            _ => {}
        }
        pos += box_len;
    }
    let moov = moov.ok_or(Mp4Error::NotRecording("no moov box"))?;
    Ok((moov, tracks, chunks))
}

/// Adds one `traf`'s samples and chunks; returns where its data ends (the
/// base of a following `traf` that names none).
fn read_traf(
    traf: &TrafBox,
    moof_pos: u64,
    implicit_base: u64,
    mdat: (u64, u64),
    tracks: &mut [TrackSamples],
    chunks: &mut Vec<Chunk>,
) -> Result<u64, Mp4Error> {
    let tfhd = &traf.tfhd_box;
    let index = tracks
        .iter()
        .position(|t| t.track_id == tfhd.track_id)
        .ok_or(Mp4Error::NotRecording("fragment of a track not in moov"))?;
    let track = &mut tracks[index];
    let trex = track.trex.as_ref();
    let base = match tfhd.base_data_offset {
        Some(offset) => offset,
        None if tfhd.default_base_is_moof => moof_pos,
        None => implicit_base,
    };
    let description_index = tfhd
        .sample_description_index
        .or(trex.map(|t| t.default_sample_description_index))
        .unwrap_or(1)
        .max(1);

    // Keep each sample's decode time: a gap or overlap before this
    // fragment goes into the previous sample's duration.
    let tfdt = traf.tfdt_box.as_ref().map(|t| t.base_media_decode_time);
    match (track.start, tfdt, track.samples.last_mut()) {
        (None, _, _) => {
            track.start = Some(tfdt.unwrap_or(0));
            track.next = tfdt.unwrap_or(0);
        }
        (Some(_), Some(time), Some(last)) if time != track.next => {
            let last_start = track.next.saturating_sub(u64::from(last.duration));
            if let Some(duration) = time
                .checked_sub(last_start)
                .and_then(|d| u32::try_from(d).ok())
            {
                last.duration = duration;
                track.next = time;
            }
        }
        _ => {}
    }

    let mut data_end = base;
    for trun in &traf.trun_boxes {
        let start = match trun.data_offset {
            Some(offset) => base
                .checked_add_signed(i64::from(offset))
                .ok_or(Mp4Error::NotRecording("trun data offset before the file"))?,
            None => data_end,
        };
        let mut run_len = 0u64;
        for (i, s) in trun.samples.iter().enumerate() {
            let duration = s
                .duration
                .or(tfhd.default_sample_duration)
                .or(trex.map(|t| t.default_sample_duration))
                .unwrap_or(0);
            let size = s
                .size
                .or(tfhd.default_sample_size)
                .or(trex.map(|t| t.default_sample_size))
                .unwrap_or(0);
            let flags = s
                .flags
                .or(trun.first_sample_flags.filter(|_| i == 0))
                .or(tfhd.default_sample_flags)
                .or(trex.map(|t| t.default_sample_flags))
                .unwrap_or(SampleFlags::empty());
            track.samples.push(SampleInfo {
                duration,
                size,
                sync: !flags.sample_is_non_sync_sample(),
                composition_offset: s.composition_time_offset.unwrap_or(0),
            });
            track.next += u64::from(duration);
            run_len += u64::from(size);
        }
        data_end = start + run_len;
        if start < mdat.0 || data_end > mdat.1 {
            return Err(Mp4Error::NotRecording("sample data outside its mdat"));
        }
        if !trun.samples.is_empty() {
            chunks.push(Chunk {
                track: index,
                source_offset: start,
                len: run_len,
                samples: u32::try_from(trun.samples.len()).map_err(encode_err)?,
                description_index,
            });
        }
    }
    Ok(data_end)
}

/// `ftyp` of a plain ISO file, with the brands of the codecs inside.
fn ftyp(moov: &MoovBox) -> FtypBox {
    let mut brands = vec![Brand::ISOM, Brand::ISO2, Brand::MP41];
    for trak in &moov.trak_boxes {
        for entry in &trak.mdia_box.minf_box.stbl_box.stsd_box.entries {
            let brand = match entry {
                SampleEntry::Avc1(_) => Brand::AVC1,
                SampleEntry::Hvc1(_) => Brand::HVC1,
                SampleEntry::Av01(_) => Brand::AV01,
                _ => continue,
            };
            if !brands.contains(&brand) {
                brands.push(brand);
            }
        }
    }
    FtypBox {
        major_brand: Brand::ISOM,
        minor_version: 0x200,
        compatible_brands: brands,
    }
}

fn mdat_header(payload: u64) -> Vec<u8> {
    match u32::try_from(payload + 8) {
        Ok(size) => [&size.to_be_bytes()[..], b"mdat"].concat(),
        Err(_) => [
            &1u32.to_be_bytes()[..],
            b"mdat",
            &(payload + 16).to_be_bytes(),
        ]
        .concat(),
    }
}

/// Converts between timescales, rounding to the nearest unit.
fn rescale(ticks: u64, from: u32, to: u32) -> u64 {
    let from = u128::from(from.max(1));
    let scaled = (u128::from(ticks) * u128::from(to) + from / 2) / from;
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// The source `moov` with sample tables for the progressive layout:
/// `offsets[i]` is where `chunks[i]` lands in the output.
fn build_moov(
    source: &MoovBox,
    tracks: &[TrackSamples],
    chunks: &[Chunk],
    offsets: &[u64],
    large: bool,
) -> Result<Vec<u8>, Mp4Error> {
    let mut moov = source.clone();
    moov.mvex_box = None;
    let movie_scale = moov.mvhd_box.timescale.get();
    let mut movie_duration = 0;
    for (index, (trak, track)) in moov.trak_boxes.iter_mut().zip(tracks).enumerate() {
        let media_scale = trak.mdia_box.mdhd_box.timescale.get();
        let media_duration: u64 = track.samples.iter().map(|s| u64::from(s.duration)).sum();
        let start = rescale(track.start.unwrap_or(0), media_scale, movie_scale);
        let length = rescale(media_duration, media_scale, movie_scale);
        trak.edts_box = (start > 0).then(|| edit_list(start, length));
        trak.tkhd_box.duration = start + length;
        trak.mdia_box.mdhd_box.duration = media_duration;
        movie_duration = movie_duration.max(start + length);
        let track_chunks: Vec<(&Chunk, u64)> = chunks
            .iter()
            .zip(offsets)
            .filter(|(c, _)| c.track == index)
            .map(|(c, &o)| (c, o))
            .collect();
        fill_sample_tables(trak, track, &track_chunks, large)?;
    }
    moov.mvhd_box.duration = movie_duration;
    moov.encode_to_vec().map_err(encode_err)
}

/// Nothing for `start`, then the whole media (both in the movie timescale).
fn edit_list(start: u64, length: u64) -> EdtsBox {
    let rate = FixedPointNumber::new(1, 0);
    EdtsBox {
        elst_box: Some(ElstBox {
            entries: vec![
                ElstEntry {
                    edit_duration: start,
                    media_time: -1,
                    media_rate: rate,
                },
                ElstEntry {
                    edit_duration: length,
                    media_time: 0,
                    media_rate: rate,
                },
            ],
        }),
        unknown_boxes: Vec::new(),
    }
}

fn fill_sample_tables(
    trak: &mut TrakBox,
    track: &TrackSamples,
    chunks: &[(&Chunk, u64)],
    large: bool,
) -> Result<(), Mp4Error> {
    let stbl = &mut trak.mdia_box.minf_box.stbl_box;
    stbl.stts_box = SttsBox::from_sample_deltas(track.samples.iter().map(|s| s.duration))
        .map_err(encode_err)?;

    stbl.ctts_box = None;
    stbl.cslg_box = None;
    if track.samples.iter().any(|s| s.composition_offset != 0) {
        let mut entries: Vec<CttsEntry> = Vec::new();
        for s in &track.samples {
            match entries.last_mut() {
                Some(e) if e.sample_offset == s.composition_offset => e.sample_count += 1,
                _ => entries.push(CttsEntry {
                    sample_count: 1,
                    sample_offset: s.composition_offset,
                }),
            }
        }
        let version = u8::from(entries.iter().any(|e| e.sample_offset < 0));
        stbl.ctts_box = Some(CttsBox { version, entries });
    }

    let mut stsc: Vec<StscEntry> = Vec::new();
    for (n, (chunk, _)) in chunks.iter().enumerate() {
        let same = stsc.last().is_some_and(|e| {
            e.sample_per_chunk == chunk.samples
                && e.sample_description_index.get() == chunk.description_index
        });
        if !same {
            stsc.push(StscEntry {
                first_chunk: NonZeroU32::new(u32::try_from(n + 1).map_err(encode_err)?)
                    .unwrap_or(NonZeroU32::MIN),
                sample_per_chunk: chunk.samples,
                sample_description_index: NonZeroU32::new(chunk.description_index)
                    .unwrap_or(NonZeroU32::MIN),
            });
        }
    }
    stbl.stsc_box = StscBox { entries: stsc };

    let sizes: Vec<u32> = track.samples.iter().map(|s| s.size).collect();
    stbl.stsz_box = match (sizes.first().and_then(|&s| NonZeroU32::new(s)), &sizes[..]) {
        (Some(size), all) if all.iter().all(|&s| s == size.get()) => StszBox::Fixed {
            sample_size: size,
            sample_count: u32::try_from(all.len()).map_err(encode_err)?,
        },
        _ => StszBox::Variable { entry_sizes: sizes },
    };

    let offsets = chunks.iter().map(|&(_, o)| o);
    stbl.stco_or_co64_box = if large {
        Either::B(Co64Box {
            chunk_offsets: offsets.collect(),
        })
    } else {
        Either::A(StcoBox {
            chunk_offsets: offsets
                .map(|o| u32::try_from(o).map_err(encode_err))
                .collect::<Result<_, _>>()?,
        })
    };

    // Without `stss` every sample is a sync sample.
    stbl.stss_box = if track.samples.iter().all(|s| s.sync) {
        None
    } else {
        Some(StssBox {
            sample_numbers: track
                .samples
                .iter()
                .enumerate()
                .filter(|(_, s)| s.sync)
                .filter_map(|(i, _)| u32::try_from(i + 1).ok().and_then(NonZeroU32::new))
                .collect(),
        })
    };
    stbl.sdtp_box = None;
    Ok(())
}

/// `(type, length)` of a whole box at `pos`, or `None` at the end of the
/// file or at a box cut short.
fn read_header(file: &mut File, pos: u64, len: u64) -> Result<Option<([u8; 4], u64)>, Mp4Error> {
    if len.saturating_sub(pos) < 8 {
        return Ok(None);
    }
    let mut head = [0u8; 16];
    let n = usize::try_from((len - pos).min(16)).unwrap_or(16);
    file.seek(SeekFrom::Start(pos))?;
    file.read_exact(&mut head[..n])?;
    Ok(box_header(&head[..n]).and_then(|(kind, box_len, _)| {
        (pos.checked_add(box_len)? <= len).then_some((kind, box_len))
    }))
}

fn read_box(file: &mut File, pos: u64, len: u64) -> Result<Vec<u8>, Mp4Error> {
    // Only header boxes are read whole; a huge one is not a recording's.
    const MAX: u64 = 256 << 20;
    if len > MAX {
        return Err(Mp4Error::NotRecording("header box too large"));
    }
    let mut buf = vec![0u8; usize::try_from(len).map_err(encode_err)?];
    file.seek(SeekFrom::Start(pos))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}
