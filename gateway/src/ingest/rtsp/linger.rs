//! Whether an on-demand source should be connected.
//!
//! It connects while anyone consumes the stream, and stays connected for a
//! linger after the last one leaves: a viewer who reloads the page, or
//! clicks from one camera to the next and back, finds it still live instead
//! of waiting for the camera's next keyframe after a fresh connection.

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The pure decision, fed the consumer count and the time.
#[derive(Debug, Clone)]
pub struct Linger {
    linger: Duration,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nobody needs the stream: stay disconnected.
    Idle,
    /// Somebody consumes the stream.
    Wanted,
    /// The last consumer left; connected until then.
    Lingering { until: Instant },
}

impl Linger {
    /// Starts wanted if `consumers` are there already.
    pub fn new(linger: Duration, consumers: usize) -> Self {
        let phase = if consumers > 0 {
            Phase::Wanted
        } else {
            Phase::Idle
        };
        Self { linger, phase }
    }

    /// The consumer count is `consumers` as of `now`.
    pub fn set_consumers(&mut self, consumers: usize, now: Instant) {
        self.phase = match (consumers > 0, self.phase) {
            (true, _) => Phase::Wanted,
            (false, Phase::Wanted) => Phase::Lingering {
                until: now + self.linger,
            },
            (false, phase) => phase,
        };
        self.tick(now);
    }

    /// Time passed: a linger may have run out.
    pub fn tick(&mut self, now: Instant) {
        if let Phase::Lingering { until } = self.phase
            && now >= until
        {
            self.phase = Phase::Idle;
        }
    }

    /// Whether the source should be connected (or connecting).
    pub fn wanted(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// When the linger runs out, if it is running.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Lingering { until } => Some(until),
            _ => None,
        }
    }
}

/// A source's demand as its supervisor follows it: the media plane's
/// consumer count for on-demand sources; always wanted otherwise.
pub struct DemandWatch {
    on_demand: Option<OnDemand>,
}

struct OnDemand {
    consumers: watch::Receiver<usize>,
    linger: Linger,
    /// The plane dropped its counter (shutting down): no more changes.
    closed: bool,
}

impl DemandWatch {
    pub fn always() -> Self {
        Self { on_demand: None }
    }

    pub fn on_demand(mut consumers: watch::Receiver<usize>, linger: Duration) -> Self {
        let now = *consumers.borrow_and_update();
        Self {
            on_demand: Some(OnDemand {
                consumers,
                linger: Linger::new(linger, now),
                closed: false,
            }),
        }
    }

    /// Whether the source should be connected now.
    pub fn wanted(&mut self) -> bool {
        match &mut self.on_demand {
            None => true,
            Some(demand) => {
                demand.refresh();
                demand.linger.wanted()
            }
        }
    }

    /// Resolves once the source is wanted.
    pub async fn until_wanted(&mut self) {
        let Some(demand) = &mut self.on_demand else {
            return;
        };
        loop {
            demand.refresh();
            if demand.linger.wanted() {
                return;
            }
            demand.changed().await;
        }
    }

    /// Resolves once the source is no longer wanted (its linger ran out);
    /// never for sources that are always on.
    pub async fn until_unwanted(&mut self) {
        let Some(demand) = &mut self.on_demand else {
            return std::future::pending().await;
        };
        loop {
            demand.refresh();
            if !demand.linger.wanted() {
                return;
            }
            match demand.linger.deadline() {
                Some(until) => {
                    tokio::select! {
                        () = demand.changed() => {}
                        () = tokio::time::sleep_until(until.into()) => {}
                    }
                }
                None => demand.changed().await,
            }
        }
    }
}

impl OnDemand {
    fn refresh(&mut self) {
        // Read whether or not it changed: `changed()` has marked a new
        // count seen already, and a repeated count changes nothing.
        let consumers = *self.consumers.borrow_and_update();
        self.linger.set_consumers(consumers, Instant::now());
    }

    /// Waits for the count to change; forever once the plane is gone.
    async fn changed(&mut self) {
        if self.closed || self.consumers.changed().await.is_err() {
            self.closed = true;
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_secs(10);

    #[test]
    fn connects_while_watched_then_lingers() {
        let t0 = Instant::now();
        let mut linger = Linger::new(LINGER, 0);
        assert!(!linger.wanted());
        linger.set_consumers(2, t0);
        assert!(linger.wanted());
        assert_eq!(linger.deadline(), None);
        linger.set_consumers(0, t0 + Duration::from_secs(5));
        assert!(linger.wanted());
        assert_eq!(linger.deadline(), Some(t0 + Duration::from_secs(15)));
        // Another report of nobody does not restart the linger.
        linger.set_consumers(0, t0 + Duration::from_secs(9));
        assert_eq!(linger.deadline(), Some(t0 + Duration::from_secs(15)));
        linger.tick(t0 + Duration::from_secs(14));
        assert!(linger.wanted());
        linger.tick(t0 + Duration::from_secs(15));
        assert!(!linger.wanted());
        assert_eq!(linger.deadline(), None);
    }

    #[test]
    fn demand_returning_during_the_linger_keeps_it_connected() {
        let t0 = Instant::now();
        let mut linger = Linger::new(LINGER, 1);
        assert!(linger.wanted());
        linger.set_consumers(0, t0);
        linger.set_consumers(1, t0 + Duration::from_secs(8));
        linger.tick(t0 + Duration::from_secs(30));
        assert!(linger.wanted());
        // The next departure lingers afresh.
        linger.set_consumers(0, t0 + Duration::from_secs(30));
        assert_eq!(linger.deadline(), Some(t0 + Duration::from_secs(40)));
    }

    #[test]
    fn a_zero_linger_disconnects_at_once() {
        let t0 = Instant::now();
        let mut linger = Linger::new(Duration::ZERO, 1);
        linger.set_consumers(0, t0);
        assert!(!linger.wanted());
    }

    #[tokio::test]
    async fn the_watch_follows_the_plane_count() {
        const SHORT: Duration = Duration::from_millis(200);
        let (tx, rx) = watch::channel(0usize);
        let mut demand = DemandWatch::on_demand(rx, SHORT);
        assert!(!demand.wanted());
        // Counts that change while the watch waits.
        let plane = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send_replace(1);
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send_replace(0);
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Back during the linger, gone again.
            tx.send_replace(2);
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send_replace(0);
            tx
        });
        let start = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(1), demand.until_wanted())
            .await
            .expect("wanted once somebody watches");
        demand.until_unwanted().await;
        // The second departure (at 200 ms) started the linger that ran out.
        assert!(start.elapsed() >= Duration::from_millis(200) + SHORT);
        assert!(!demand.wanted());
        let tx = plane.await.expect("plane task");
        // The plane going away leaves it as it was, without spinning.
        drop(tx);
        assert!(
            tokio::time::timeout(SHORT, demand.until_wanted())
                .await
                .is_err()
        );
        let mut always = DemandWatch::always();
        assert!(always.wanted());
        always.until_wanted().await;
    }
}
