//! Repair of a WebM file whose recording never reached
//! [`super::WebmRecording::finish`] (`kill -9`, power loss).
//!
//! libwebm in file mode writes the EBML header, a Segment of unknown size
//! (an 8-byte size field), a Void where the SeekHead will go, Info with a
//! placeholder Duration (a 4-byte float 1.0) and Tracks; then each Cluster
//! with an 8-byte size field that is filled in when the cluster closes, so
//! the cluster open at the crash has "unknown" size, and the last block in
//! it may be torn. FFmpeg plays such a file, but reports no duration, and
//! other players cannot seek in it.
//!
//! [`recover`] walks the file element by element (never loading it), keeps
//! every complete block, cuts the file after the last one, gives the last
//! cluster and the Segment their real sizes and writes the duration into
//! Info, all in place. A file that needs none of that (finished cleanly,
//! or already recovered) is not written to at all. Cues are not rebuilt:
//! players read a cue-less file front to back; a SeekHead that points past
//! the new end (at the Cues of a finished file that was cut later) is
//! turned into a Void so that nothing looks for them.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use super::WebmError;
use super::ebml::{self, Header, Reader, encode_size};

/// What a recovered (or finished) recording holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebmSummary {
    /// Time of the last block on the recording's timeline (what
    /// [`super::WebmRecording::finish`] writes as the duration too).
    pub duration: Duration,
    /// File size.
    pub bytes: u64,
}

/// Matroska's default TimecodeScale (1 ms), which libwebm uses.
const DEFAULT_TIMECODE_SCALE: u64 = 1_000_000;

/// Longest DocType we look at.
const MAX_DOC_TYPE: u64 = 32;

/// Repairs `path` in place (see the module documentation) and reports the
/// media it holds. Errors leave the file untouched: nothing is written
/// before the whole file has been read.
pub fn recover(path: &Path) -> Result<WebmSummary, WebmError> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let plan = plan(&file, len)?;
    if plan.len < len {
        file.set_len(plan.len)?;
    }
    for patch in &plan.patches {
        file.seek(SeekFrom::Start(patch.pos))?;
        file.write_all(&patch.bytes)?;
    }
    if plan.len < len || !plan.patches.is_empty() {
        file.sync_all()?;
    }
    Ok(WebmSummary {
        duration: plan.duration,
        bytes: plan.len,
    })
}

/// Bytes to write over the file at `pos`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Patch {
    pub pos: u64,
    pub bytes: Vec<u8>,
}

/// What [`recover`] does to a file: cut it to `len`, then apply `patches`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub len: u64,
    pub patches: Vec<Patch>,
    pub duration: Duration,
}

/// Reads the file (`len` bytes of `source`) and works out its repair.
pub(crate) fn plan<R: Read + Seek>(source: R, len: u64) -> Result<Plan, WebmError> {
    let mut scan = Scan {
        reader: Reader::new(source, len),
        timecode_scale: DEFAULT_TIMECODE_SCALE,
        duration_field: None,
        tracks: false,
        seek_head: None,
        max_tick: None,
        patches: Vec::new(),
    };
    let segment = scan.segment_header()?;
    let declared_end = segment.end();
    let limit = declared_end.map_or(len, |end| end.min(len));
    let walk = scan.segment(segment.data_start, limit)?;
    if !scan.tracks {
        return Err(WebmError::NotWebm("no complete Tracks element"));
    }
    let new_len = if walk.cut { walk.end } else { len };

    let size = walk.end - segment.data_start;
    if segment.size != Some(size)
        && let Some(bytes) = encode_size(size, segment.size_len)
    {
        scan.patches.push(Patch {
            pos: segment.size_pos(),
            bytes,
        });
    }
    let changed = new_len < len || !scan.patches.is_empty();
    let ticks = scan.max_tick.unwrap_or(0).max(0);
    if changed {
        // The Duration is in TimecodeScale units, as a float of the width
        // the muxer reserved.
        if let Some(field) = scan.duration_field
            && ticks > 0
        {
            let bytes = match field.size {
                Some(4) => Some((ticks as f32).to_be_bytes().to_vec()),
                Some(8) => Some((ticks as f64).to_be_bytes().to_vec()),
                _ => None,
            };
            if let Some(bytes) = bytes {
                scan.patches.push(Patch {
                    pos: field.data_start,
                    bytes,
                });
            }
        }
        if let Some((head, max_ref)) = scan.seek_head
            && max_ref >= walk.end
            && let Some(bytes) = void_header(&head)
        {
            scan.patches.push(Patch {
                pos: head.start,
                bytes,
            });
        }
    }
    let nanos = u128::from(ticks.unsigned_abs()) * u128::from(scan.timecode_scale);
    Ok(Plan {
        len: new_len,
        patches: scan.patches,
        duration: Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)),
    })
}

/// A header that turns the (complete) element `head` into a Void of the
/// same length, its old content left as the Void's filler.
fn void_header(head: &Header) -> Option<Vec<u8>> {
    let total = head.end()? - head.start;
    let width = u8::try_from(total.checked_sub(1)?.min(8)).ok()?;
    let mut bytes = vec![0xEC];
    bytes.extend(encode_size(total - 1 - u64::from(width), width)?);
    Some(bytes)
}

/// Where the walk of the Segment's children ended.
struct Walk {
    /// End of the last element kept.
    end: u64,
    /// Whether the file is damaged after `end` (and is cut there).
    cut: bool,
}

/// One Cluster as found.
struct ClusterScan {
    /// End of its last complete child.
    kept_end: u64,
    /// Its declared size is right: nothing to change.
    intact: bool,
    /// Something after `kept_end` is torn or malformed: the file ends here.
    stop: bool,
    blocks: usize,
    max_tick: Option<i64>,
}

struct Scan<R> {
    reader: Reader<R>,
    timecode_scale: u64,
    /// Info's Duration element, if it is a 4- or 8-byte float.
    duration_field: Option<Header>,
    tracks: bool,
    /// The SeekHead and the furthest position it points at.
    seek_head: Option<(Header, u64)>,
    /// Latest block time kept, in TimecodeScale units.
    max_tick: Option<i64>,
    patches: Vec<Patch>,
}

impl<R: Read + Seek> Scan<R> {
    /// Checks the EBML header and finds the Segment after it.
    fn segment_header(&mut self) -> Result<Header, WebmError> {
        let len = self.reader.len();
        let ebml = self
            .reader
            .header(0, len)?
            .filter(|h| h.id == ebml::EBML)
            .ok_or(WebmError::NotWebm("no EBML header"))?;
        let end = ebml
            .end()
            .filter(|&e| e <= len)
            .ok_or(WebmError::NotWebm("EBML header cut off"))?;
        let mut pos = ebml.data_start;
        while pos < end {
            let Some(child) = self.reader.header(pos, end)? else {
                break;
            };
            let Some(child_end) = child.end().filter(|&e| e <= end) else {
                break;
            };
            if child.id == ebml::DOC_TYPE {
                let doc_type = self.reader.bytes(&child, MAX_DOC_TYPE)?.unwrap_or_default();
                let doc_type: &[u8] = doc_type.split(|&b| b == 0).next().unwrap_or(&[]);
                if doc_type != b"webm" && doc_type != b"matroska" {
                    return Err(WebmError::NotWebm("DocType is not webm or matroska"));
                }
            }
            pos = child_end;
        }
        let mut pos = end;
        loop {
            let h = self
                .reader
                .header(pos, len)?
                .ok_or(WebmError::NotWebm("no Segment"))?;
            match h.id {
                ebml::SEGMENT => return Ok(h),
                ebml::VOID | ebml::CRC32 => {
                    pos = h
                        .end()
                        .filter(|&e| e <= len)
                        .ok_or(WebmError::NotWebm("no Segment"))?;
                }
                _ => return Err(WebmError::NotWebm("no Segment")),
            }
        }
    }

    /// Walks the Segment's children from `start` up to `limit` (its end or
    /// the file's).
    fn segment(&mut self, start: u64, limit: u64) -> io::Result<Walk> {
        let mut pos = start;
        while pos < limit {
            let Some(h) = self.reader.header(pos, limit)? else {
                return Ok(Walk {
                    end: pos,
                    cut: true,
                });
            };
            if h.id == ebml::CLUSTER {
                let c = self.cluster(&h, limit)?;
                if c.intact {
                    self.keep(&c);
                    pos = c.kept_end;
                    continue;
                }
                if c.stop && c.blocks == 0 {
                    // Nothing of it survived: the file ends before it.
                    return Ok(Walk {
                        end: h.start,
                        cut: true,
                    });
                }
                match encode_size(c.kept_end - h.data_start, h.size_len) {
                    Some(bytes) => self.patches.push(Patch {
                        pos: h.size_pos(),
                        bytes,
                    }),
                    // A narrow "unknown" size stays: it is legal for the
                    // last cluster or one followed by a sibling.
                    None if h.size.is_none() => {}
                    None => {
                        return Ok(Walk {
                            end: h.start,
                            cut: true,
                        });
                    }
                }
                self.keep(&c);
                if c.stop {
                    return Ok(Walk {
                        end: c.kept_end,
                        cut: true,
                    });
                }
                pos = c.kept_end;
                continue;
            }
            let Some(end) = h.end().filter(|&e| e <= limit) else {
                return Ok(Walk {
                    end: pos,
                    cut: true,
                });
            };
            match h.id {
                ebml::INFO => self.info(&h, end)?,
                ebml::TRACKS => self.tracks = true,
                ebml::SEEK_HEAD => self.seek_head(&h, end, start)?,
                _ => {}
            }
            pos = end;
        }
        Ok(Walk {
            end: pos,
            cut: false,
        })
    }

    fn keep(&mut self, c: &ClusterScan) {
        self.max_tick = self.max_tick.max(c.max_tick);
    }

    /// The children of a complete element, until one is malformed.
    fn children(&mut self, parent: &Header, end: u64) -> io::Result<Vec<Header>> {
        let mut out = Vec::new();
        let mut pos = parent.data_start;
        while pos < end {
            let Some(child) = self.reader.header(pos, end)? else {
                break;
            };
            let Some(child_end) = child.end().filter(|&e| e <= end) else {
                break;
            };
            out.push(child);
            pos = child_end;
        }
        Ok(out)
    }

    fn info(&mut self, info: &Header, end: u64) -> io::Result<()> {
        for child in self.children(info, end)? {
            match child.id {
                ebml::TIMECODE_SCALE => {
                    if let Some(scale) = self.reader.uint(&child)?.filter(|&s| s > 0) {
                        self.timecode_scale = scale;
                    }
                }
                ebml::DURATION if matches!(child.size, Some(4 | 8)) => {
                    self.duration_field = Some(child);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn seek_head(&mut self, head: &Header, end: u64, segment_start: u64) -> io::Result<()> {
        let mut max_ref = 0u64;
        for seek in self.children(head, end)? {
            if seek.id != ebml::SEEK {
                continue;
            }
            let Some(seek_end) = seek.end() else { continue };
            for child in self.children(&seek, seek_end)? {
                if child.id == ebml::SEEK_POSITION {
                    // Unreadable: assume it points past anything we keep.
                    let target = self
                        .reader
                        .uint(&child)?
                        .map_or(u64::MAX, |p| segment_start.saturating_add(p));
                    max_ref = max_ref.max(target);
                }
            }
        }
        self.seek_head = Some((*head, max_ref));
        Ok(())
    }

    fn cluster(&mut self, cluster: &Header, limit: u64) -> io::Result<ClusterScan> {
        let declared_end = cluster.end();
        let fits = declared_end.is_some_and(|e| e <= limit);
        let stop_at = if fits {
            declared_end.unwrap_or(limit)
        } else {
            limit
        };
        let mut pos = cluster.data_start;
        let mut timecode: Option<u64> = None;
        let mut blocks = 0;
        let mut max_tick: Option<i64> = None;
        let mut damaged = false;
        while pos < stop_at {
            let Some(child) = self.reader.header(pos, stop_at)? else {
                damaged = true;
                break;
            };
            if cluster.size.is_none() && !ebml::CLUSTER_CHILDREN.contains(&child.id) {
                // An unknown-size cluster ends where a sibling starts.
                damaged = !ebml::TOP_LEVEL.contains(&child.id);
                break;
            }
            let Some(end) = child.end().filter(|&e| e <= stop_at) else {
                damaged = true;
                break;
            };
            match child.id {
                ebml::TIMECODE => match self.reader.uint(&child)? {
                    Some(t) => timecode = Some(t),
                    None => {
                        damaged = true;
                        break;
                    }
                },
                ebml::SIMPLE_BLOCK | ebml::BLOCK_GROUP => {
                    let relative = if child.id == ebml::SIMPLE_BLOCK {
                        self.block_time(&child)?
                    } else {
                        self.group_time(&child, end)?
                    };
                    // Blocks need the cluster's Timecode before them.
                    let (Some(base), Some(relative)) = (timecode, relative) else {
                        damaged = true;
                        break;
                    };
                    let tick = i64::try_from(base)
                        .unwrap_or(i64::MAX)
                        .saturating_add(i64::from(relative));
                    max_tick = max_tick.max(Some(tick));
                    blocks += 1;
                }
                _ => {}
            }
            pos = end;
        }
        Ok(ClusterScan {
            kept_end: pos,
            intact: !damaged && fits,
            stop: damaged || (!fits && cluster.size.is_some()),
            blocks,
            max_tick,
        })
    }

    /// The relative timecode of a (Simple)Block: after the track number
    /// (a vint), a signed 16-bit value, then a flags byte.
    fn block_time(&mut self, block: &Header) -> io::Result<Option<i16>> {
        let Some(size) = block.size else {
            return Ok(None);
        };
        let mut buf = [0u8; 11];
        let want = usize::try_from(size).unwrap_or(usize::MAX).min(buf.len());
        let n = self.reader.read_at(block.data_start, &mut buf[..want])?;
        let Some(&first) = buf[..n].first() else {
            return Ok(None);
        };
        let track_len = first.leading_zeros() as usize + 1;
        if track_len > 8 {
            return Ok(None);
        }
        Ok(match buf[..n].get(track_len..track_len + 3) {
            Some(&[high, low, _flags]) => Some(i16::from_be_bytes([high, low])),
            _ => None,
        })
    }

    fn group_time(&mut self, group: &Header, end: u64) -> io::Result<Option<i16>> {
        for child in self.children(group, end)? {
            if child.id == ebml::BLOCK {
                return self.block_time(&child);
            }
        }
        Ok(None)
    }
}
