//! Internal subscribers of a stream (recorder, RTMP, HLS): each gets its own
//! bounded queue so a slow one loses its own oldest packets and never stalls
//! the media thread, the viewers or the other subscribers. Subscribers poll
//! their queue on their own schedule (every few milliseconds): the media
//! thread never wakes another thread per packet.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use recorder::codec::Codec;
use recorder::pipeline::{FramePipeline, TrackSpec};
use rtc::rtp::Packet;

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// The stream's tracks, sent first and again whenever they change.
    Tracks(Vec<TrackDescription>),
    /// One RTP packet of track `track` (index into the last `Tracks`),
    /// received from the publisher at `arrived` (subscribers take their
    /// queue in batches, so they cannot tell the time of arrival).
    Rtp {
        track: usize,
        packet: Packet,
        arrived: Instant,
    },
    /// The publisher's RTCP sender report for track `track`: its NTP
    /// wallclock (`ntp_time`, 32.32 fixed point) at RTP time `rtp_time`,
    /// which puts all of its tracks on one timeline.
    SenderReport {
        track: usize,
        ssrc: u32,
        ntp_time: u64,
        rtp_time: u32,
    },
    /// The publisher left; nothing more will come.
    EndOfStream,
}

impl HubEvent {
    /// Hands the event to a frame pipeline (what every sink that needs
    /// timed frames does with it); `EndOfStream` is the caller's to act on.
    pub fn feed(self, pipeline: &mut FramePipeline, now: Instant) {
        match self {
            HubEvent::Tracks(descriptions) => {
                let specs = descriptions
                    .into_iter()
                    .map(|d| TrackSpec {
                        codec: d.codec,
                        clock_rate: d.clock_rate,
                        channels: d.channels,
                        ignored: d.audience == Audience::Viewers,
                    })
                    .collect();
                pipeline.set_tracks(specs, now);
            }
            HubEvent::Rtp {
                track,
                packet,
                arrived,
            } => pipeline.push_rtp(track, packet, arrived.min(now)),
            HubEvent::SenderReport {
                track,
                ssrc,
                ntp_time,
                rtp_time,
            } => pipeline.sender_report(track, ssrc, ntp_time, rtp_time),
            HubEvent::EndOfStream => {}
        }
    }
}

/// A track as a subscriber needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackDescription {
    pub codec: Codec,
    pub clock_rate: u32,
    pub channels: u16,
    pub fmtp: String,
    pub audience: Audience,
}

/// Who gets a track. An RTMP or RTSP publisher's AAC goes to recordings and
/// restreams as sent, while WebRTC viewers get an Opus transcode of it:
/// two hub tracks, one for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Audience {
    #[default]
    Everyone,
    /// WebRTC viewers only (a transcode made for them).
    Viewers,
    /// Recordings, restreams and HLS only (a codec WebRTC cannot carry).
    Sinks,
    /// The sinks, and the viewers that cannot take the source's own codec
    /// of this kind (Opus made from a camera's G.711, which browsers play
    /// but recordings cannot hold).
    Fallback,
}

struct Queue {
    events: VecDeque<HubEvent>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    capacity: usize,
    dropped: AtomicU64,
}

/// The hub's end of a subscription.
#[derive(Clone)]
pub struct SubscriberSender {
    shared: Arc<Shared>,
}

/// The subscriber's end.
pub struct SubscriberReceiver {
    shared: Arc<Shared>,
}

pub fn channel(capacity: usize) -> (SubscriberSender, SubscriberReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            events: VecDeque::with_capacity(capacity.min(1024)),
            closed: false,
        }),
        capacity: capacity.max(1),
        dropped: AtomicU64::new(0),
    });
    (
        SubscriberSender {
            shared: shared.clone(),
        },
        SubscriberReceiver { shared },
    )
}

impl SubscriberSender {
    /// Queues an event, dropping the oldest queued packet when full. Returns
    /// false once the receiver is gone, so the hub can forget it.
    pub fn send(&self, event: HubEvent) -> bool {
        if Arc::strong_count(&self.shared) == 1 {
            return false;
        }
        {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.events.len() >= self.shared.capacity {
                queue.events.pop_front();
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            if matches!(event, HubEvent::EndOfStream) {
                queue.closed = true;
            }
            queue.events.push_back(event);
        }
        true
    }
}

impl SubscriberReceiver {
    /// Moves every queued event into `out`; true once the end of stream
    /// has been queued (so nothing more will come). Never waits: for
    /// subscribers that poll on their own schedule.
    pub fn drain(&self, out: &mut Vec<HubEvent>) -> bool {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        out.extend(queue.events.drain(..));
        queue.closed
    }

    /// Packets this subscriber lost because it fell behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16) -> HubEvent {
        let mut packet = Packet::default();
        packet.header.sequence_number = seq;
        HubEvent::Rtp {
            track: 0,
            packet,
            arrived: Instant::now(),
        }
    }

    #[test]
    fn slow_subscriber_drops_oldest_and_counts() {
        let (tx, rx) = channel(4);
        for seq in 0..10 {
            assert!(tx.send(rtp(seq)));
        }
        tx.send(HubEvent::EndOfStream);
        assert_eq!(rx.dropped(), 7);
        let mut events = Vec::new();
        assert!(rx.drain(&mut events));
        let seqs: Vec<u16> = events
            .iter()
            .filter_map(|e| match e {
                HubEvent::Rtp { packet, .. } => Some(packet.header.sequence_number),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, vec![7, 8, 9]);
    }

    #[test]
    fn drain_takes_everything_and_reports_the_end() {
        let (tx, rx) = channel(8);
        tx.send(rtp(1));
        tx.send(rtp(2));
        let mut out = Vec::new();
        assert!(!rx.drain(&mut out));
        assert_eq!(out.len(), 2);
        tx.send(HubEvent::EndOfStream);
        assert!(rx.drain(&mut out));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn sender_notices_dropped_receiver() {
        let (tx, rx) = channel(4);
        drop(rx);
        assert!(!tx.send(rtp(1)));
    }
}
