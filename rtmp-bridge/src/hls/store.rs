//! The in-memory side of one stream's HLS output: a bounded window of
//! complete segments, the parts of the segment being made, the init
//! segment of each run still referenced, and the playlist text.
//!
//! The muxer (on the stream's worker thread) writes; HTTP handlers (on the
//! HTTP runtime) read. Everything sits behind one `std::sync::Mutex`, held
//! only to copy a `Bytes` or a `String` out, never across an `await`.
//! Waiting is a `tokio::sync::watch` whose value is bumped on every
//! change: it needs no runtime on the sending side and wakes receivers on
//! any runtime, so the muxer never touches the HTTP runtime.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use tracing::debug;

use super::{HlsConfig, RequestError, playlist};

/// A part as the store keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub data: Bytes,
    pub duration_ns: u64,
    /// It starts with a keyframe (`INDEPENDENT=YES`).
    pub independent: bool,
}

/// A complete segment.
#[derive(Debug)]
pub(crate) struct Segment {
    pub msn: u64,
    pub run: u64,
    /// Discontinuity sequence number: discontinuities before it in the
    /// stream's life.
    pub discontinuity: u64,
    /// Wall clock of its first sample (`EXT-X-PROGRAM-DATE-TIME`).
    pub wall_clock: SystemTime,
    pub duration_ns: u64,
    /// Its parts; their `data` are slices of `data`.
    pub parts: Vec<Part>,
    /// The whole segment: the parts in a row.
    pub data: Bytes,
}

/// The segment being made: parts so far.
#[derive(Debug)]
pub(crate) struct OpenSegment {
    pub msn: u64,
    pub run: u64,
    pub discontinuity: u64,
    pub wall_clock: SystemTime,
    pub parts: Vec<Part>,
}

impl OpenSegment {
    fn new(msn: u64) -> Self {
        Self {
            msn,
            run: 0,
            discontinuity: 0,
            wall_clock: SystemTime::UNIX_EPOCH,
            parts: Vec::new(),
        }
    }
}

/// Counters for metrics ("HLS segments served") and the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub playlists_served: u64,
    pub segments_served: u64,
    pub parts_served: u64,
    pub inits_served: u64,
    pub segments_made: u64,
    pub parts_made: u64,
    /// Complete segments held (listed and kept after leaving the list).
    pub segments_in_memory: usize,
    /// Bytes of media held: segments, open parts, init segments.
    pub bytes_in_memory: usize,
}

struct Inner {
    config: HlsConfig,
    closed: bool,
    /// Why the current run makes nothing (VP8 video): requests fail fast.
    error: Option<String>,
    /// Init segments of the runs that retained segments (or the current
    /// run) belong to, oldest first.
    inits: VecDeque<(u64, Bytes)>,
    current_run: Option<u64>,
    next_run: u64,
    segments: VecDeque<Segment>,
    open: OpenSegment,
    /// Run and discontinuity number of the newest segment that got media,
    /// so the next run's first segment is numbered one on.
    last_media: Option<(u64, u64)>,
    /// Rendered after every change; `None` until the first segment is
    /// complete (FFmpeg and hls.js want a segment to start from).
    playlist: Option<String>,
    /// `EXT-X-TARGETDURATION` so far.
    target_secs: u32,
    stats: StoreStats,
}

impl Inner {
    fn rerender(&mut self) {
        // Segments end only at keyframes, so a GOP longer than the
        // configured target makes longer segments; the target grows to
        // cover them (never shrinks: players may hold the old value).
        let longest = self
            .segments
            .iter()
            .map(|s| (s.duration_ns + 500_000_000) / 1_000_000_000)
            .max()
            .unwrap_or(0);
        self.target_secs = self
            .target_secs
            .max(u32::try_from(longest).unwrap_or(u32::MAX));
        self.playlist =
            playlist::render(&self.config, self.target_secs, &self.segments, &self.open);
        let open_bytes: usize = self.open.parts.iter().map(|p| p.data.len()).sum();
        let segment_bytes: usize = self.segments.iter().map(|s| s.data.len()).sum();
        let init_bytes: usize = self.inits.iter().map(|(_, i)| i.len()).sum();
        self.stats.segments_in_memory = self.segments.len();
        self.stats.bytes_in_memory = open_bytes + segment_bytes + init_bytes;
    }

    /// Closes the open segment if it has media; drops segments (and init
    /// segments) beyond what is kept.
    fn complete_open(&mut self) {
        if self.open.parts.is_empty() {
            return;
        }
        let next = OpenSegment::new(self.open.msn + 1);
        let open = std::mem::replace(&mut self.open, next);
        let len = open.parts.iter().map(|p| p.data.len()).sum();
        let mut data = BytesMut::with_capacity(len);
        for part in &open.parts {
            data.extend_from_slice(&part.data);
        }
        let data = data.freeze();
        // Parts become slices of the segment: each byte is held once.
        let mut offset = 0;
        let parts = open
            .parts
            .into_iter()
            .map(|part| {
                let end = offset + part.data.len();
                let part = Part {
                    data: data.slice(offset..end),
                    ..part
                };
                offset = end;
                part
            })
            .collect::<Vec<_>>();
        let duration_ns = parts.iter().map(|p| p.duration_ns).sum();
        debug!(
            msn = open.msn,
            duration_ns,
            parts = parts.len(),
            "HLS segment complete"
        );
        self.segments.push_back(Segment {
            msn: open.msn,
            run: open.run,
            discontinuity: open.discontinuity,
            wall_clock: open.wall_clock,
            duration_ns,
            parts,
            data,
        });
        self.stats.segments_made += 1;
        let keep = self.config.window_segments + self.config.extra_segments;
        while self.segments.len() > keep {
            self.segments.pop_front();
        }
        self.drop_unused_inits();
    }

    fn drop_unused_inits(&mut self) {
        let oldest_run = self
            .segments
            .front()
            .map(|s| s.run)
            .or(self.current_run)
            .unwrap_or(0);
        // Runs only grow, and a run's segments are contiguous: every init
        // older than the oldest segment's is unused.
        while self.inits.len() > 1 && self.inits.front().is_some_and(|(run, _)| *run < oldest_run) {
            self.inits.pop_front();
        }
    }

    fn newest_segment(&self) -> Option<u64> {
        self.segments.back().map(|s| s.msn)
    }

    /// The newest part: (msn, index).
    fn newest_part(&self) -> Option<(u64, u64)> {
        if let Some(count) = len_u64(self.open.parts.len()).checked_sub(1) {
            return Some((self.open.msn, count));
        }
        let last = self.segments.back()?;
        Some((last.msn, len_u64(last.parts.len()).saturating_sub(1)))
    }

    fn find_part(&self, msn: u64, index: u64) -> Option<&Part> {
        let index = usize::try_from(index).ok()?;
        if msn == self.open.msn {
            return self.open.parts.get(index);
        }
        self.segment(msn)?.parts.get(index)
    }

    fn segment(&self, msn: u64) -> Option<&Segment> {
        let first = self.segments.front()?.msn;
        let i = usize::try_from(msn.checked_sub(first)?).ok()?;
        self.segments.get(i)
    }

    /// Where a playlist request stands (RFC 8216bis §6.2.5.2).
    fn check_playlist(
        &mut self,
        msn: Option<u64>,
        part: Option<u64>,
    ) -> Poll<Result<String, RequestError>> {
        if self.closed {
            return Poll::Ready(Err(RequestError::Gone));
        }
        if let Some(error) = &self.error {
            return Poll::Ready(Err(RequestError::Unsupported(error.clone())));
        }
        if let Err(e) = self.check_bounds(msn, part) {
            return Poll::Ready(Err(e));
        }
        let reached = match (msn, part) {
            (None, _) => true,
            // "until the Playlist contains a Media Segment with a Media
            // Sequence Number of M or later": a complete segment, since a
            // segment in progress is only parts in the playlist.
            (Some(m), None) => self.newest_segment().is_some_and(|n| n >= m),
            // "until the Playlist contains the Partial Segment with Part
            // Index N and with a Media Sequence Number of M or later"; a
            // part index past the segment's last part means part 0 of
            // the next segment, which is what comparing (msn, index)
            // pairs gives: segment M's parts all sort before (M+1, 0).
            (Some(m), Some(p)) => self.newest_part().is_some_and(|newest| newest >= (m, p)),
        };
        match (&self.playlist, reached) {
            (Some(text), true) => {
                self.stats.playlists_served += 1;
                Poll::Ready(Ok(text.clone()))
            }
            _ => Poll::Pending,
        }
    }

    /// Requests too far ahead are answered at once with 400 rather than
    /// held (RFC 8216bis §6.2.5.2): an `_HLS_msn` more than two past the
    /// newest complete segment (that is, more than one past the segment
    /// in progress), or an `_HLS_part` more than the Advance Part Limit
    /// past the newest part.
    fn check_bounds(&self, msn: Option<u64>, part: Option<u64>) -> Result<(), RequestError> {
        let Some(m) = msn else {
            return match part {
                Some(_) => Err(RequestError::BadRequest(
                    "_HLS_part requires _HLS_msn".into(),
                )),
                None => Ok(()),
            };
        };
        let open = self.open.msn;
        if m > open.saturating_add(1) {
            return Err(RequestError::BadRequest(format!(
                "_HLS_msn={m} is too far ahead (the segment in progress is {open})"
            )));
        }
        let Some(p) = part else { return Ok(()) };
        let limit = self.config.advance_part_limit();
        // Parts between the newest part and the requested one, at least.
        let ahead = if m == open {
            let newest = len_u64(self.open.parts.len());
            p.saturating_add(1).saturating_sub(newest)
        } else if m > open {
            p.saturating_add(1)
        } else {
            0
        };
        if ahead > limit {
            return Err(RequestError::BadRequest(format!(
                "_HLS_part={p} of segment {m} is too far ahead"
            )));
        }
        Ok(())
    }

    fn check_part(&mut self, msn: u64, index: u64) -> Poll<Result<Bytes, RequestError>> {
        if self.closed {
            return Poll::Ready(Err(RequestError::Gone));
        }
        if let Some(part) = self.find_part(msn, index) {
            let data = part.data.clone();
            self.stats.parts_served += 1;
            return Poll::Ready(Ok(data));
        }
        // Only the preload-hinted part is worth waiting for: it is next.
        let hint = (self.open.msn, len_u64(self.open.parts.len()));
        if (msn, index) == hint {
            Poll::Pending
        } else {
            Poll::Ready(Err(RequestError::NotFound))
        }
    }
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

struct Shared {
    inner: Mutex<Inner>,
    /// Bumped on every change; waiters re-check on each.
    version: watch::Sender<u64>,
}

/// One stream's HLS output in memory. Cheap to clone; every clone is the
/// same store. Made by [`super::Muxer::new`], which is the only writer.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Store {
    pub(crate) fn new(config: HlsConfig) -> Self {
        let (version, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    config,
                    closed: false,
                    error: None,
                    inits: VecDeque::new(),
                    current_run: None,
                    next_run: 0,
                    segments: VecDeque::new(),
                    open: OpenSegment::new(0),
                    last_media: None,
                    playlist: None,
                    target_secs: config.target_duration_secs,
                    stats: StoreStats::default(),
                }),
                version,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent plain data
        // (every change is made before the playlist is re-rendered).
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a change and wakes every waiter.
    fn update(&self, change: impl FnOnce(&mut Inner)) {
        {
            let mut inner = self.lock();
            if inner.closed {
                return;
            }
            change(&mut inner);
            inner.rerender();
        }
        self.shared.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    // --- The muxer's side -------------------------------------------------

    /// A new run with its init segment; returns its number.
    pub(crate) fn begin_run(&self, init: Bytes) -> u64 {
        let mut run = 0;
        self.update(|inner| {
            run = inner.next_run;
            inner.next_run += 1;
            inner.inits.push_back((run, init));
            inner.current_run = Some(run);
            inner.error = None;
            inner.drop_unused_inits();
        });
        run
    }

    /// The current run makes nothing, for this reason.
    pub(crate) fn set_error(&self, error: String) {
        self.update(|inner| {
            inner.current_run = None;
            inner.error = Some(error);
        });
    }

    /// Adds a part of the current run to the open segment; with
    /// `ends_segment`, the segment is complete.
    pub(crate) fn push_part(&self, part: Part, wall_clock: SystemTime, ends_segment: bool) {
        self.update(|inner| {
            let Some(run) = inner.current_run else { return };
            if inner.open.parts.is_empty() {
                let discontinuity = match inner.last_media {
                    Some((last_run, d)) if last_run != run => d + 1,
                    Some((_, d)) => d,
                    None => 0,
                };
                inner.open.run = run;
                inner.open.discontinuity = discontinuity;
                inner.open.wall_clock = wall_clock;
                inner.last_media = Some((run, discontinuity));
            }
            inner.open.parts.push(part);
            inner.stats.parts_made += 1;
            if ends_segment {
                inner.complete_open();
            }
        });
    }

    /// The open segment is complete (end of a run).
    pub(crate) fn end_segment(&self) {
        self.update(Inner::complete_open);
    }

    // --- The HTTP side ----------------------------------------------------

    /// The playlist as it is now; `None` before the first segment is
    /// complete, after [`Self::close`], or while the stream is
    /// [unsupported](Self::error).
    pub fn playlist(&self) -> Option<String> {
        let mut inner = self.lock();
        if inner.closed || inner.error.is_some() {
            return None;
        }
        let text = inner.playlist.clone()?;
        inner.stats.playlists_served += 1;
        Some(text)
    }

    /// A (blocking) playlist reload: `_HLS_msn`/`_HLS_part` as given. Waits
    /// up to `timeout` until the playlist holds segment `msn` (complete),
    /// or part `part` of segment `msn` or a later part. Without either,
    /// waits only for the first segment. The whole current playlist comes
    /// back, even if the requested segment has already left it.
    ///
    /// Bad request at once for `part` without `msn` or a request too far
    /// ahead; [`RequestError::Gone`] once closed (also while waiting);
    /// [`RequestError::Timeout`] after `timeout` (the gateway uses three
    /// target durations and answers 503).
    pub async fn blocking_playlist(
        &self,
        msn: Option<u64>,
        part: Option<u64>,
        timeout: Duration,
    ) -> Result<String, RequestError> {
        self.wait(timeout, |inner| inner.check_playlist(msn, part))
            .await
    }

    /// The init segment of the current run (`init.mp4` on the first).
    pub fn init(&self) -> Option<Bytes> {
        let run = self.lock().current_run?;
        self.init_of_run(run)
    }

    /// The init segment of `run`, while a kept segment or the current run
    /// uses it.
    pub fn init_of_run(&self, run: u64) -> Option<Bytes> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        let (_, data) = inner.inits.iter().find(|(r, _)| *r == run)?;
        let data = data.clone();
        inner.stats.inits_served += 1;
        Some(data)
    }

    /// A complete segment: its parts' bytes in a row. `None` for one in
    /// progress, not made yet or dropped.
    pub fn segment(&self, msn: u64) -> Option<Bytes> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        let data = inner.segment(msn)?.data.clone();
        inner.stats.segments_served += 1;
        Some(data)
    }

    /// A part that exists now.
    pub fn part_now(&self, msn: u64, index: u64) -> Option<Bytes> {
        let mut inner = self.lock();
        match inner.check_part(msn, index) {
            Poll::Ready(Ok(data)) => Some(data),
            _ => None,
        }
    }

    /// A part; the preload-hinted next part is waited for (up to
    /// `timeout`), as `EXT-X-PRELOAD-HINT` promises. Any other part that
    /// does not exist is [`RequestError::NotFound`] at once.
    pub async fn part(
        &self,
        msn: u64,
        index: u64,
        timeout: Duration,
    ) -> Result<Bytes, RequestError> {
        self.wait(timeout, |inner| inner.check_part(msn, index))
            .await
    }

    /// The newest complete segment's media sequence number.
    pub fn newest_segment(&self) -> Option<u64> {
        self.lock().newest_segment()
    }

    /// Why the stream makes no HLS (VP8 without transcode), if it does not.
    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    pub fn stats(&self) -> StoreStats {
        self.lock().stats
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The stream ended: media is dropped, every request (waiting ones
    /// too) gets [`RequestError::Gone`] or `None`. Also done when the
    /// [`super::Muxer`] is dropped.
    pub fn close(&self) {
        {
            let mut inner = self.lock();
            if inner.closed {
                return;
            }
            inner.closed = true;
            inner.segments.clear();
            inner.open.parts.clear();
            inner.inits.clear();
            inner.playlist = None;
            inner.stats.segments_in_memory = 0;
            inner.stats.bytes_in_memory = 0;
        }
        self.shared.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Polls `check` now and after every change until it is ready or the
    /// timeout passes.
    async fn wait<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&mut Inner) -> Poll<Result<T, RequestError>>,
    ) -> Result<T, RequestError> {
        // Subscribe before the first check: a change between the check and
        // the wait still wakes us.
        let mut changes = self.shared.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            let poll = {
                let mut inner = self.lock();
                check(&mut inner)
            };
            if let Poll::Ready(result) = poll {
                return result;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `Shared`, which we hold: unreachable,
                // but "no more changes" means gone.
                Ok(Err(_)) => return Err(RequestError::Gone),
                Err(_) => return Err(RequestError::Timeout),
            }
        }
    }
}
