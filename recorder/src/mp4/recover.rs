//! Crash recovery for fragmented recordings: find the last complete
//! fragment and cut what follows it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use shiguredo_mp4::Decode;
use shiguredo_mp4::boxes::{MoofBox, MoovBox};

use super::{Mp4Error, Mp4Summary, box_header, ticks_to_duration};

/// After a crash: cuts a trailing incomplete fragment (a `moof` without its
/// complete `mdat`, or a box cut short) so the file ends at the last
/// complete fragment, and reports the media it holds. A complete file,
/// finished or not, is left as it is.
pub fn recover(path: &Path) -> Result<Mp4Summary, Mp4Error> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let file_len = file.metadata()?.len();
    let mut timescales: Vec<(u32, u32)> = Vec::new();
    let mut ends: Vec<(u32, u64)> = Vec::new();
    let mut pos = 0u64;
    let mut good_end = 0u64;
    let mut seen_moov = false;

    // Reads the box header at `pos`: `(type, length, header length)`.
    let read_header = |file: &mut File, pos: u64| -> Result<Option<([u8; 4], u64)>, Mp4Error> {
        if file_len.saturating_sub(pos) < 8 {
            return Ok(None);
        }
        let mut head = [0u8; 16];
        let n = usize::try_from((file_len - pos).min(16)).unwrap_or(16);
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut head[..n])?;
        Ok(box_header(&head[..n])
            .and_then(|(kind, len, _)| (pos.checked_add(len)? <= file_len).then_some((kind, len))))
    };
    let read_box = |file: &mut File, pos: u64, len: u64| -> Result<Vec<u8>, Mp4Error> {
        let mut buf =
            vec![0u8; usize::try_from(len).map_err(|_| Mp4Error::NotRecording("box too large"))?];
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut buf)?;
        Ok(buf)
    };

    while let Some((kind, len)) = read_header(&mut file, pos)? {
        match &kind {
            b"moov" => {
                let data = read_box(&mut file, pos, len)?;
                let (moov, _) = MoovBox::decode(&data)
                    .map_err(|_| Mp4Error::NotRecording("unreadable moov"))?;
                timescales = moov
                    .trak_boxes
                    .iter()
                    .map(|t| (t.tkhd_box.track_id, t.mdia_box.mdhd_box.timescale.get()))
                    .collect();
                seen_moov = true;
                pos += len;
                good_end = pos;
            }
            b"moof" => {
                let Some((mdat_kind, mdat_len)) = read_header(&mut file, pos + len)? else {
                    break;
                };
                if &mdat_kind != b"mdat" {
                    break;
                }
                let data = read_box(&mut file, pos, len)?;
                let Ok((moof, _)) = MoofBox::decode(&data) else {
                    break;
                };
                for traf in &moof.traf_boxes {
                    let start = traf
                        .tfdt_box
                        .as_ref()
                        .map_or(0, |t| t.base_media_decode_time);
                    let default = traf.tfhd_box.default_sample_duration.unwrap_or(0);
                    let total: u64 = traf
                        .trun_boxes
                        .iter()
                        .flat_map(|t| &t.samples)
                        .map(|s| u64::from(s.duration.unwrap_or(default)))
                        .sum();
                    let end = start + total;
                    let id = traf.tfhd_box.track_id;
                    match ends.iter_mut().find(|(t, _)| *t == id) {
                        Some((_, e)) => *e = (*e).max(end),
                        None => ends.push((id, end)),
                    }
                }
                pos += len + mdat_len;
                good_end = pos;
            }
            // Media data must follow a fragment header.
            b"mdat" => break,
            _ => {
                pos += len;
                good_end = pos;
            }
        }
    }
    if !seen_moov {
        return Err(Mp4Error::NotRecording("no moov box"));
    }
    if good_end < file_len {
        file.set_len(good_end)?;
        file.sync_all()?;
    }
    let duration = ends
        .iter()
        .filter_map(|(id, end)| {
            let timescale = timescales.iter().find(|(t, _)| t == id)?.1;
            Some(ticks_to_duration(*end, timescale))
        })
        .max()
        .unwrap_or_default();
    Ok(Mp4Summary {
        duration,
        bytes: good_end,
    })
}
