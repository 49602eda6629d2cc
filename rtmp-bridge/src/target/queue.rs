//! The bounded hand-over between the caller (a gateway task serving many
//! sinks, which must never wait on one destination) and the target's task.
//!
//! A full queue drops frames until the next video keyframe with room: the
//! frames already queued stay contiguous, and what follows the gap starts
//! at a keyframe, so the destination's decoder never sees a frame whose
//! references were dropped. Run boundaries (`Start`/`End`) are never
//! dropped; they are rare and the task needs them to know what it sends.

use std::collections::VecDeque;
use std::sync::Mutex;

use recorder::pipeline::Output;
use tokio::sync::Notify;

/// What the task takes out of the queue.
#[derive(Debug)]
pub enum Item {
    Output(Output),
    /// The input was dropped: nothing more will come.
    Closed,
}

#[derive(Debug)]
pub struct Queue {
    inner: Mutex<Inner>,
    /// One consumer: `notify_one` keeps a permit when it is not waiting.
    notify: Notify,
}

#[derive(Debug)]
struct Inner {
    items: VecDeque<Output>,
    /// Frames in `items` (run boundaries are not counted).
    frames: usize,
    capacity: usize,
    /// The video track of the run being pushed, `None` for audio only.
    video_track: Option<usize>,
    dropping: bool,
    dropped: u64,
    closed: bool,
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Queue {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                frames: 0,
                capacity: capacity.max(1),
                video_track: None,
                dropping: false,
                dropped: 0,
                closed: false,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind; carry on.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds one pipeline output; never waits.
    pub fn push(&self, output: Output) {
        {
            let mut q = self.lock();
            if q.closed {
                return;
            }
            match &output {
                Output::Start(run) => {
                    q.video_track = run.video.as_ref().map(|v| v.0);
                    q.dropping = false;
                }
                Output::End(_) => {}
                Output::Frame { track, frame, .. } => {
                    // Audio-only runs have no keyframes to wait for: any
                    // frame may resume.
                    let resumes = match q.video_track {
                        Some(video) => *track == video && frame.keyframe,
                        None => true,
                    };
                    let full = q.frames >= q.capacity;
                    if full || (q.dropping && !resumes) {
                        q.dropping = true;
                        q.dropped += 1;
                        return;
                    }
                    q.dropping = false;
                    q.frames += 1;
                }
            }
            q.items.push_back(output);
        }
        self.notify.notify_one();
    }

    /// No more input; the task ends after what is queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// The next item, waiting for one.
    pub async fn pop(&self) -> Item {
        loop {
            if let Some(item) = self.try_pop() {
                return item;
            }
            self.notify.notified().await;
        }
    }

    /// The next item if there is one.
    pub fn try_pop(&self) -> Option<Item> {
        let mut q = self.lock();
        match q.items.pop_front() {
            Some(output) => {
                if matches!(output, Output::Frame { .. }) {
                    q.frames -= 1;
                }
                Some(Item::Output(output))
            }
            None if q.closed => Some(Item::Closed),
            None => None,
        }
    }

    /// Frames dropped here, plus those the task reports with
    /// [`count_dropped`](Self::count_dropped).
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Frames the task received but could not send (no connection, or
    /// before the first keyframe of a connection).
    pub fn count_dropped(&self, n: u64) {
        self.lock().dropped += n;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().items.len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use recorder::codec::Codec;
    use recorder::params::{AvcConfig, VideoConfig, VideoDetail};
    use recorder::pipeline::{RunEnd, RunStart, Timing};
    use recorder::rtp::Frame;

    use super::*;

    fn start() -> Output {
        let config = VideoConfig {
            codec: Codec::H264,
            width: 64,
            height: 64,
            detail: VideoDetail::Avc(AvcConfig {
                sps: vec![],
                pps: vec![],
                profile_idc: 66,
                constraint_flags: 0,
                level_idc: 30,
                chroma_format_idc: 1,
                bit_depth_luma: 8,
                bit_depth_chroma: 8,
            }),
        };
        Output::Start(RunStart {
            video: Some((0, Codec::H264, config)),
            audio: None,
            timing: Timing::SenderReports,
        })
    }

    fn frame(n: i64, keyframe: bool) -> Output {
        Output::Frame {
            track: 0,
            time_ns: n * 33_333_333,
            frame: Frame {
                codec: Codec::H264,
                timestamp: n * 3000,
                keyframe,
                data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
                composition_offset: 0,
            },
        }
    }

    fn popped_frames(q: &Queue) -> Vec<(i64, bool)> {
        let mut out = Vec::new();
        while let Some(Item::Output(o)) = q.try_pop() {
            if let Output::Frame { time_ns, frame, .. } = o {
                out.push((time_ns / 33_333_333, frame.keyframe));
            }
        }
        out
    }

    #[test]
    fn overflow_drops_until_the_next_keyframe() {
        let q = Queue::new(5);
        q.push(start());
        // Keyframe every 4 frames; capacity 5.
        for n in 0..12 {
            q.push(frame(n, n % 4 == 0));
        }
        // 0..=4 queued; 5, 6, 7 dropped (full, then waiting for a
        // keyframe); 8 is a keyframe but the queue is still full.
        assert_eq!(q.dropped(), 7);
        let got = popped_frames(&q);
        assert_eq!(got.iter().map(|f| f.0).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        // Room again: the next frames are dropped up to a keyframe.
        for n in 12..18 {
            q.push(frame(n, n % 4 == 0));
        }
        let got = popped_frames(&q);
        assert_eq!(got.first(), Some(&(12, true)));
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn run_boundaries_are_never_dropped() {
        let q = Queue::new(1);
        q.push(start());
        q.push(frame(0, true));
        q.push(frame(1, false));
        q.push(Output::End(RunEnd::Finished));
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped(), 1);
    }

    #[tokio::test]
    async fn close_ends_after_the_queued_items() {
        let q = Queue::new(4);
        q.push(start());
        q.close();
        q.push(frame(0, true));
        assert!(matches!(q.pop().await, Item::Output(Output::Start(_))));
        assert!(matches!(q.pop().await, Item::Closed));
    }
}
