//! One source's life: connect while wanted, pass frames, reconnect after
//! failures, let go when nobody watches or the gateway stops.
//!
//! The Feed outlives connections: a camera that drops for a few seconds
//! comes back on the same hub tracks, so viewers' players resume where
//! they froze instead of needing a reload. It is given up only when the
//! media plane ends it (after its media timeout of silence, or an admin's
//! kick), when the source goes idle, or at shutdown.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use retina::client::SessionGroup;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::linger::DemandWatch;
use super::pump::{self, Progress};
use super::session::{self, SessionError, TransportPlan};
use super::source_url::SourceUrl;
use super::status::StatusCell;
use crate::config::SourceTransport;
use crate::http::MediaHandle;
use crate::ingest::feed::Feed;
use crate::signal::{ClientInfo, IngestProtocol, SignalError};
use crate::stream_name::StreamName;

/// What a supervisor needs of its source.
pub struct Source {
    pub stream: StreamName,
    pub url: SourceUrl,
    pub transport: SourceTransport,
    pub media: MediaHandle,
    pub status: StatusCell,
    pub group: Arc<SessionGroup>,
}

/// Why the work at hand stopped before it finished.
enum Interrupt {
    /// The gateway is stopping.
    Stopped,
    /// On demand, and the linger after the last consumer ran out.
    Unwanted,
    /// The media plane ended the stream, with its reason.
    LeaseEnded(String),
}

/// How one connection attempt went.
enum Outcome {
    Interrupted(Interrupt),
    Failed {
        error: SessionError,
        /// How long media flowed, if it did.
        media_for: Option<Duration>,
        udp: bool,
    },
}

/// The stream's claim on the hub, kept across connections.
#[derive(Default)]
struct Lease {
    feed: Option<Feed>,
    ended: Option<oneshot::Receiver<String>>,
}

/// Runs `source` until `stop` turns true.
pub async fn run(source: Source, mut demand: DemandWatch, mut stop: watch::Receiver<bool>) {
    let mut lease = Lease::default();
    let mut backoff = Backoff::default();
    let mut notes = Notes::default();
    // Auto transport: set once UDP has failed this camera.
    let mut udp_failed = false;
    let mut after_failure = false;
    'connect: loop {
        if *stop.borrow() {
            break;
        }
        if !demand.wanted() {
            if let Some(feed) = lease.feed.take() {
                info!(stream = %source.stream, "RTSP source idle: nobody consumes the stream");
                feed.close("no viewers").await;
            }
            lease.ended = None;
            source.status.idle();
            backoff.reset();
            notes.recovered();
            after_failure = false;
            tokio::select! {
                biased;
                () = stopped(&mut stop) => break,
                () = demand.until_wanted() => {}
            }
            info!(stream = %source.stream, url = %source.url.public, "RTSP source wanted: connecting");
            continue;
        }
        if after_failure {
            source.status.count_reconnect();
        }
        source.status.connecting();
        let plan = match source.transport {
            SourceTransport::Tcp => TransportPlan::Tcp,
            SourceTransport::Udp => TransportPlan::Udp,
            SourceTransport::Auto if udp_failed => TransportPlan::Tcp,
            SourceTransport::Auto => TransportPlan::UdpThenTcp,
        };
        let outcome = attempt(
            &source,
            plan,
            &mut lease,
            &mut stop,
            &mut demand,
            &mut notes,
            &mut udp_failed,
        )
        .await;
        let error = match outcome {
            Outcome::Interrupted(Interrupt::Stopped) => break,
            Outcome::Interrupted(Interrupt::Unwanted) => continue,
            Outcome::Interrupted(Interrupt::LeaseEnded(why)) => {
                // An admin's kick of a live camera: reconnect, on a new
                // stream.
                lease.feed = None;
                SessionError::Plane(format!("the stream was ended: {why}"))
            }
            Outcome::Failed {
                error,
                media_for,
                udp,
            } => {
                // A camera that breaks a second after each connection is
                // one outage, not many.
                if media_for.is_some_and(|lasted| backoff.connection_lasted(lasted)) {
                    notes.recovered();
                }
                let udp_blocked = matches!(error, SessionError::NoMedia(_)) && media_for.is_none();
                if source.transport == SourceTransport::Auto && udp && udp_blocked {
                    // PLAY over UDP went through but no packet did: a
                    // firewall or NAT. TCP at once, and from now on.
                    info!(stream = %source.stream, url = %source.url.public, "no media over UDP; switching to TCP");
                    udp_failed = true;
                    after_failure = true;
                    continue;
                }
                error
            }
        };
        notes.failure(&source, &error);
        source.status.retrying(error.to_string());
        after_failure = true;

        let wake = tokio::time::Instant::now() + backoff.next_delay_jittered();
        loop {
            let sleep = tokio::time::sleep_until(wake);
            match guard(sleep, &mut stop, &mut demand, &mut lease.ended).await {
                Ok(()) => break,
                Err(Interrupt::Stopped) => break 'connect,
                Err(Interrupt::Unwanted) => continue 'connect,
                Err(Interrupt::LeaseEnded(why)) => {
                    info!(stream = %source.stream, "the media plane ended the stream during the outage ({why}); the next connection starts it anew");
                    lease.feed = None;
                }
            }
        }
    }
    if let Some(feed) = lease.feed.take() {
        feed.close("the gateway is shutting down").await;
    }
    source.status.idle();
}

/// One connection: open, claim the stream if not held yet, pass frames.
async fn attempt(
    source: &Source,
    plan: TransportPlan,
    lease: &mut Lease,
    stop: &mut watch::Receiver<bool>,
    demand: &mut DemandWatch,
    notes: &mut Notes,
    udp_failed: &mut bool,
) -> Outcome {
    let failed = |error| Outcome::Failed {
        error,
        media_for: None,
        udp: false,
    };
    let open = session::open(&source.url, plan, &source.group, &source.stream);
    let mut playing = match guard(open, stop, demand, &mut lease.ended).await {
        Err(interrupt) => return Outcome::Interrupted(interrupt),
        Ok(Err(error)) => return failed(error),
        Ok(Ok(playing)) => playing,
    };
    if plan == TransportPlan::UdpThenTcp && !playing.udp {
        *udp_failed = true;
    }
    notes.unsupported(source, &playing.unsupported);

    if lease.feed.is_none() {
        let client = ClientInfo {
            address: source.url.socket_addr(),
            user_agent: None,
            key_id: None,
        };
        let open = Feed::open(
            &source.media,
            source.stream.clone(),
            IngestProtocol::Rtsp,
            client,
        );
        match guard(open, stop, demand, &mut lease.ended).await {
            Err(interrupt) => return Outcome::Interrupted(interrupt),
            Ok(Ok((feed, ended))) => {
                lease.feed = Some(feed);
                lease.ended = Some(ended);
            }
            Ok(Err(SignalError::StreamBusy)) => return failed(SessionError::StreamBusy),
            Ok(Err(other)) => return failed(SessionError::Plane(other.to_string())),
        }
    }
    let Some(feed) = lease.feed.as_mut() else {
        return failed(SessionError::Plane("no stream".into()));
    };

    let udp = playing.udp;
    let mut progress = Progress::default();
    let pump = pump::run(
        &mut playing,
        feed,
        &source.url,
        &source.stream,
        &source.status,
        &mut progress,
    );
    let result = guard(pump, stop, demand, &mut lease.ended).await;
    // Here, inside the runtime: dropping the session starts its TEARDOWN.
    drop(playing);
    match result {
        Err(interrupt) => Outcome::Interrupted(interrupt),
        Ok(error) => Outcome::Failed {
            error,
            media_for: progress.first_frame.map(|at| at.elapsed()),
            udp,
        },
    }
}

/// Runs `work` unless the gateway stops, the source becomes unwanted or
/// the media plane ends the stream first.
async fn guard<F: Future>(
    work: F,
    stop: &mut watch::Receiver<bool>,
    demand: &mut DemandWatch,
    ended: &mut Option<oneshot::Receiver<String>>,
) -> Result<F::Output, Interrupt> {
    tokio::select! {
        biased;
        () = stopped(stop) => Err(Interrupt::Stopped),
        why = lease_ended(ended) => Err(Interrupt::LeaseEnded(why)),
        () = demand.until_unwanted() => Err(Interrupt::Unwanted),
        output = work => Ok(output),
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // A dropped sender means the gateway is gone: stop too.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Resolves when the media plane ends the held stream; never without one.
async fn lease_ended(ended: &mut Option<oneshot::Receiver<String>>) -> String {
    let Some(receiver) = ended else {
        return std::future::pending().await;
    };
    let why = receiver
        .await
        .unwrap_or_else(|_| "the media plane stopped".to_owned());
    // A finished receiver must not be polled again.
    *ended = None;
    why
}

/// What was logged already. An offline camera fails every 30 s for days,
/// and a broken one with a different text each time (retina names the bad
/// byte): an outage gets its first failure, a change of kind, and then
/// failures 2, 4, 8… — a dozen lines a day, not thousands.
#[derive(Default)]
struct Notes {
    /// Failures since the last healthy connection, and the latest's kind.
    failures: u64,
    last_kind: Option<std::mem::Discriminant<SessionError>>,
    unsupported: HashSet<String>,
}

impl Notes {
    fn failure(&mut self, source: &Source, error: &SessionError) {
        self.failures += 1;
        let kind = std::mem::discriminant(error);
        let new_kind = self.last_kind != Some(kind);
        self.last_kind = Some(kind);
        let (stream, url) = (&source.stream, &source.url.public);
        if self.failures == 1 {
            warn!(%stream, %url, "RTSP source failed: {error}");
        } else if new_kind || self.failures.is_power_of_two() {
            warn!(%stream, %url, failures = self.failures, "RTSP source still failing: {error}");
        } else {
            debug!(%stream, %url, failures = self.failures, "RTSP source still failing: {error}");
        }
    }

    fn recovered(&mut self) {
        self.failures = 0;
        self.last_kind = None;
    }

    fn unsupported(&mut self, source: &Source, streams: &[String]) {
        for stream in streams {
            if self.unsupported.insert(stream.clone()) {
                warn!(stream = %source.stream, url = %source.url.public, "RTSP source: skipping the camera's {stream} stream, its codec is not supported");
            }
        }
    }
}
