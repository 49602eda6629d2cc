//! WHIP/WHEP commands from the HTTP layer: offers, trickle and ICE restart,
//! deletes, listings.

use std::time::Instant;

use super::*;

impl Plane {
    // ----- signalling --------------------------------------------------------

    pub(super) fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Offer {
                role: Role::Publisher,
                stream,
                offer,
                client,
                reply,
            } => {
                let result = self.publish(stream, &offer, client, now);
                let _ = reply.send(result);
            }
            Command::Offer {
                role: Role::Viewer,
                stream,
                offer,
                client,
                reply,
            } => self.watch(stream, offer, client, reply, now),
            Command::Patch {
                role,
                stream,
                session,
                request,
                reply,
            } => {
                let result = self.patch(role, &stream, &session, request, now);
                let _ = reply.send(result);
            }
            Command::StartRecording { stream, reply } => {
                let result = self.start_recording(&stream, now);
                let _ = reply.send(result);
            }
            Command::StartBridge { stream, reply } => {
                let result = self.start_bridge(&stream, now);
                let _ = reply.send(result);
            }
            Command::Delete {
                role,
                stream,
                session,
                reply,
            } => {
                let result = self.find_session(role, &stream, &session).map(|key| {
                    self.remove_peer(key, now, "deleted by client");
                });
                let _ = reply.send(result);
            }
            Command::ListStreams { reply } => {
                let list = self
                    .hub
                    .streams()
                    .filter(|s| s.publisher.is_some())
                    .map(|s| StreamSummary {
                        name: s.name.to_string(),
                        codecs: s.codec_names(),
                        viewers: s.viewers.len(),
                        uptime_s: now.duration_since(s.started).as_secs(),
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::Inspect { reply } => {
                let _ = reply.send(self.inspect(now));
            }
            Command::EndSessions { selector, reply } => {
                let _ = reply.send(self.end_sessions(&selector, now));
            }
            Command::IngestOpen {
                stream,
                protocol,
                client,
                reply,
            } => {
                let result = self.ingest_open(stream, protocol, client, now);
                let _ = reply.send(result);
            }
            Command::Ingest { key, command } => self.on_ingest(key, command, now),
            Command::Shutdown { reply } => {
                self.shutdown();
                let _ = reply.send(());
            }
        }
    }

    pub(super) fn insert_peer(&mut self, peer: Peer) {
        let key = peer.key;
        self.by_ufrag.insert(peer.ufrag.clone(), key);
        self.by_session.insert(peer.session.clone(), key);
        self.peers.insert(key, peer);
        self.reschedule(key);
        self.drive(key, Instant::now());
    }

    pub(super) fn next_key(&mut self) -> PeerKey {
        let key = self.next_key;
        self.next_key += 1;
        key
    }

    pub(super) fn publish(
        &mut self,
        stream_name: StreamName,
        offer: &str,
        client: ClientInfo,
        now: Instant,
    ) -> Result<Answer, SignalError> {
        let summary = OfferSummary::parse(offer).map_err(SignalError::BadOffer)?;
        let tracks = summary.sending_tracks();
        if tracks == 0 {
            return Err(SignalError::BadOffer(
                "a WHIP offer must send audio or video (sendonly or sendrecv)".into(),
            ));
        }
        self.make_room(&stream_name, now)?;
        let key = self.next_key();
        let (peer, sdp) = self.factory.create(
            key,
            Role::Publisher,
            stream_name.clone(),
            offer,
            &summary,
            &[],
            client,
            now,
        )?;
        let answer = Answer {
            session: peer.session.clone(),
            sdp,
            etag: peer.etag.clone(),
        };
        self.claim_stream(&stream_name, key, tracks, now);
        self.insert_peer(peer);
        Ok(answer)
    }

    /// The one-publisher rule: a live stream refuses a second publisher
    /// (409) unless takeover is configured or its publisher has gone quiet,
    /// in which case the old one is detached and its viewers stay.
    pub(super) fn make_room(
        &mut self,
        stream_name: &StreamName,
        now: Instant,
    ) -> Result<(), SignalError> {
        let Some(existing) = self.hub.get(stream_name).and_then(|s| s.publisher) else {
            return Ok(());
        };
        let stale = self
            .hub
            .get(stream_name)
            .is_some_and(|s| now.duration_since(s.last_media) > STALE_PUBLISHER);
        if !(self.config.publisher_takeover || stale) {
            return Err(SignalError::StreamBusy);
        }
        info!(stream = %stream_name, stale, "new publisher takes over");
        self.detach_publisher(existing, now);
        Ok(())
    }

    /// Makes `key` the publisher of a stream: a new stream starts its
    /// recording and restreams; a taken-over one keeps them.
    pub(super) fn claim_stream(
        &mut self,
        stream_name: &StreamName,
        key: PeerKey,
        expected_tracks: usize,
        now: Instant,
    ) {
        let stream = self.hub.entry(stream_name, now);
        let new_stream = stream.publisher.is_none() && !stream.has_subscribers();
        stream.publisher = Some(key);
        stream.expected_tracks = expected_tracks;
        stream.last_media = now;
        stream.begin_publisher();
        if new_stream
            && self.recordings.wants(stream_name)
            && let Some(subscription) = self.recordings.start(stream_name.clone(), true)
        {
            stream.subscribe(subscription, now);
        }
        if new_stream
            && self.bridge.wants(stream_name)
            && let Some(subscription) = self.bridge.start(stream_name.clone(), true)
        {
            stream.subscribe(subscription, now);
        }
    }

    pub(super) fn watch(
        &mut self,
        stream_name: StreamName,
        offer: String,
        client: ClientInfo,
        reply: tokio::sync::oneshot::Sender<Result<Answer, SignalError>>,
        now: Instant,
    ) {
        let summary = match OfferSummary::parse(&offer) {
            Ok(s) => s,
            Err(e) => {
                let _ = reply.send(Err(SignalError::BadOffer(e)));
                return;
            }
        };
        if !summary.receives(MediaKind::Video) && !summary.receives(MediaKind::Audio) {
            let _ = reply.send(Err(SignalError::BadOffer(
                "a WHEP offer must receive audio or video (recvonly or sendrecv)".into(),
            )));
            return;
        }
        let Some(stream) = self.hub.get(&stream_name).filter(|s| s.publisher.is_some()) else {
            if self.demand.is_on_demand(&stream_name) {
                // The source connects for this viewer.
                self.pending.push(PendingViewer {
                    stream: stream_name.clone(),
                    offer,
                    summary,
                    client,
                    deadline: now + ON_DEMAND_WAIT,
                    reply,
                });
                self.update_demand(&stream_name);
                return;
            }
            let _ = reply.send(Err(SignalError::StreamNotLive));
            return;
        };
        if !stream.tracks_ready() {
            self.pending.push(PendingViewer {
                stream: stream_name,
                offer,
                summary,
                client,
                deadline: now + VIEWER_WAIT,
                reply,
            });
            return;
        }
        let result = self.add_viewer(&stream_name, &offer, &summary, client, now);
        let _ = reply.send(result);
    }

    pub(super) fn add_viewer(
        &mut self,
        stream_name: &StreamName,
        offer: &str,
        summary: &OfferSummary,
        client: ClientInfo,
        now: Instant,
    ) -> Result<Answer, SignalError> {
        let stream = self
            .hub
            .get(stream_name)
            .filter(|s| s.publisher.is_some() && !s.tracks.is_empty())
            .ok_or(SignalError::StreamNotLive)?;
        let descriptions = viewer_tracks(
            stream
                .tracks
                .iter()
                .map(|t| t.description.clone())
                .collect(),
            summary,
        );
        let mut wanted = 0;
        for d in &descriptions {
            if !summary.receives(d.codec.kind()) || d.audience == Audience::Sinks {
                continue;
            }
            if !summary.can_receive(d.codec) {
                return Err(SignalError::UnsupportedCodec(format!(
                    "the viewer's offer cannot receive {}, the codec this stream's {} is published in",
                    d.codec,
                    if d.codec.kind() == MediaKind::Video {
                        "video"
                    } else {
                        "audio"
                    }
                )));
            }
            wanted += 1;
        }
        if wanted == 0 {
            return Err(SignalError::UnsupportedCodec(format!(
                "the viewer's offer receives none of this stream's media ({})",
                stream.codec_names().join(", ")
            )));
        }
        let key = self.next_key();
        let (peer, sdp) = self.factory.create(
            key,
            Role::Viewer,
            stream_name.clone(),
            offer,
            summary,
            &descriptions,
            client,
            now,
        )?;
        let answer = Answer {
            session: peer.session.clone(),
            sdp,
            etag: peer.etag.clone(),
        };
        if let Some(stream) = self.hub.get_mut(stream_name) {
            stream.viewers.push(key);
        }
        self.insert_peer(peer);
        // Publishers that honour PLI start a fresh GOP for the newcomer;
        // the GOP cache covers those that do not (OBS).
        for track in 0..descriptions.len() {
            self.request_keyframe(stream_name, track, now);
        }
        Ok(answer)
    }

    pub(super) fn resolve_pending(&mut self, stream_name: &StreamName, now: Instant) {
        let (ready, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| &p.stream == stream_name);
        self.pending = rest;
        for p in ready {
            let result = self.add_viewer(&p.stream, &p.offer, &p.summary, p.client, now);
            let _ = p.reply.send(result);
        }
    }

    pub(super) fn find_session(
        &self,
        role: Role,
        stream: &StreamName,
        session: &SessionId,
    ) -> Result<PeerKey, SignalError> {
        let key = *self
            .by_session
            .get(session)
            .ok_or(SignalError::UnknownSession)?;
        let peer = self.peers.get(&key).ok_or(SignalError::UnknownSession)?;
        if peer.role != role || &peer.stream != stream {
            return Err(SignalError::UnknownSession);
        }
        Ok(key)
    }

    pub(super) fn patch(
        &mut self,
        role: Role,
        stream: &StreamName,
        session: &SessionId,
        request: PatchRequest,
        now: Instant,
    ) -> Result<PatchOutcome, SignalError> {
        let key = self.find_session(role, stream, session)?;
        let peer = self
            .peers
            .get_mut(&key)
            .ok_or(SignalError::UnknownSession)?;
        if let Some(tag) = &request.if_match
            && tag.trim() != "*"
            && tag.trim() != peer.etag
        {
            return Err(SignalError::PreconditionFailed);
        }
        let fragment = request.fragment;
        let remote_ufrag = peer
            .pc
            .remote_description()
            .and_then(|d| sdp_attribute(&d.sdp, "ice-ufrag"));
        let restart = match (&fragment.ice_ufrag, &remote_ufrag) {
            (Some(new), Some(old)) => new != old,
            (Some(_), None) => true,
            _ => false,
        };
        if restart {
            let result = self.restart_ice(key, &fragment, now);
            self.drive(key, now);
            return result;
        }
        for candidate in &fragment.candidates {
            let init = RTCIceCandidateInit {
                candidate: candidate.candidate.clone(),
                sdp_mid: candidate.mid.clone(),
                ..Default::default()
            };
            if let Err(err) = peer.pc.add_remote_candidate(init) {
                // Lite ICE learns addresses from the checks themselves, so a
                // candidate we cannot parse costs nothing; say so and go on.
                debug!(session = %peer.session, "ignored trickled candidate: {err}");
            }
        }
        self.drive(key, now);
        Ok(PatchOutcome::Trickled)
    }

    pub(super) fn restart_ice(
        &mut self,
        key: PeerKey,
        fragment: &SdpFragment,
        now: Instant,
    ) -> Result<PatchOutcome, SignalError> {
        let (Some(ufrag), Some(pwd)) = (&fragment.ice_ufrag, &fragment.ice_pwd) else {
            return Err(SignalError::BadOffer(
                "ICE restart needs both ice-ufrag and ice-pwd".into(),
            ));
        };
        let peer = self
            .peers
            .get_mut(&key)
            .ok_or(SignalError::UnknownSession)?;
        let old_sdp = peer
            .pc
            .remote_description()
            .map(|d| d.sdp.clone())
            .ok_or_else(|| SignalError::Internal("no remote description".into()))?;
        let new_offer = replace_ice_credentials(&old_sdp, ufrag, pwd);
        let desc = rtc::peer_connection::sdp::RTCSessionDescription::offer(new_offer)
            .map_err(|e| SignalError::BadOffer(e.to_string()))?;
        // `rtc` keeps our ICE credentials for the connection's lifetime (they
        // are also our demux key); applying the offer with the client's new
        // credentials restarts the checks on its side.
        peer.pc
            .set_remote_description(now, desc)
            .map_err(|e| SignalError::BadOffer(e.to_string()))?;
        let answer = peer
            .pc
            .create_answer(None)
            .map_err(|e| SignalError::Internal(e.to_string()))?;
        peer.pc
            .set_local_description(now, answer)
            .map_err(|e| SignalError::Internal(e.to_string()))?;
        let local_sdp = peer
            .pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| SignalError::Internal("no local description".into()))?;
        let new_ufrag = sdp_attribute(&local_sdp, "ice-ufrag")
            .ok_or_else(|| SignalError::Internal("restart answer has no ice-ufrag".into()))?;
        let new_pwd = sdp_attribute(&local_sdp, "ice-pwd")
            .ok_or_else(|| SignalError::Internal("restart answer has no ice-pwd".into()))?;
        let old_ufrag = std::mem::replace(&mut peer.ufrag, new_ufrag.clone());
        peer.etag = format!(
            "\"{}\"",
            SessionId::random().as_str().get(..12).unwrap_or("restart")
        );
        let etag = peer.etag.clone();
        self.by_ufrag.remove(&old_ufrag);
        self.by_ufrag.insert(new_ufrag.clone(), key);
        // The client may come back from a new address: let it in via STUN.
        if let Some(addrs) = self.addrs_of.remove(&key) {
            for a in addrs {
                self.by_addr.remove(&a);
                if a.0 == Transport::Tcp {
                    self.egress.tcp.remove(&a.1);
                }
            }
        }
        info!(key, "ICE restarted");
        Ok(PatchOutcome::Restarted {
            sdpfrag: SdpFragment::restart_answer(
                &new_ufrag,
                &new_pwd,
                &candidate_lines(self.factory.candidates()),
            ),
            etag,
        })
    }

    /// Starts recording a live stream on request (API, admin panel).
    fn start_recording(
        &mut self,
        stream_name: &StreamName,
        now: Instant,
    ) -> Result<(), SignalError> {
        let Some(stream) = self
            .hub
            .get_mut(stream_name)
            .filter(|s| s.publisher.is_some())
        else {
            return Err(SignalError::StreamNotLive);
        };
        if let Some(subscription) = self.recordings.start(stream_name.clone(), false) {
            stream.subscribe(subscription, now);
        }
        Ok(())
    }

    /// Starts the bridge session (restream targets, HLS) of a live stream.
    fn start_bridge(&mut self, stream_name: &StreamName, now: Instant) -> Result<(), SignalError> {
        let Some(stream) = self
            .hub
            .get_mut(stream_name)
            .filter(|s| s.publisher.is_some())
        else {
            return Err(SignalError::StreamNotLive);
        };
        if let Some(subscription) = self.bridge.start(stream_name.clone(), false) {
            stream.subscribe(subscription, now);
        }
        Ok(())
    }
}

/// The stream's tracks as one viewer gets them: a transcode made for
/// viewers (`Viewers`, `Fallback`) is dropped (marked `Sinks`, which the
/// viewer's peer skips) when the viewer can take the source's own codec
/// of that kind.
fn viewer_tracks(
    mut tracks: Vec<TrackDescription>,
    summary: &OfferSummary,
) -> Vec<TrackDescription> {
    let own_receivable = |kind: MediaKind, tracks: &[TrackDescription]| {
        tracks.iter().any(|t| {
            t.audience == Audience::Everyone
                && t.codec.kind() == kind
                && summary.can_receive(t.codec)
        })
    };
    let choices: Vec<bool> = tracks
        .iter()
        .map(|t| {
            matches!(t.audience, Audience::Viewers | Audience::Fallback)
                && own_receivable(t.codec.kind(), &tracks)
        })
        .collect();
    for (track, drop) in tracks.iter_mut().zip(choices) {
        if drop {
            track.audience = Audience::Sinks;
        }
    }
    // And a source's own codec the viewer cannot take, when a transcode of
    // the same kind stands in for it.
    let has_stand_in = |kind: MediaKind, tracks: &[TrackDescription]| {
        tracks.iter().any(|t| {
            matches!(t.audience, Audience::Viewers | Audience::Fallback) && t.codec.kind() == kind
        })
    };
    let choices: Vec<bool> = tracks
        .iter()
        .map(|t| {
            t.audience == Audience::Everyone
                && !summary.can_receive(t.codec)
                && has_stand_in(t.codec.kind(), &tracks)
        })
        .collect();
    for (track, drop) in tracks.iter_mut().zip(choices) {
        if drop {
            track.audience = Audience::Sinks;
        }
    }
    tracks
}

/// The first `a=name:value` in an SDP (session or media level).
fn sdp_attribute(sdp: &str, name: &str) -> Option<String> {
    let prefix = format!("a={name}:");
    sdp.lines().find_map(|l| {
        l.trim_end_matches('\r')
            .strip_prefix(&prefix)
            .map(|v| v.trim().to_owned())
    })
}

/// The remote offer with its ICE credentials replaced, for an ICE restart
/// signalled through an SDP fragment.
fn replace_ice_credentials(sdp: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
        } else if line.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(pwd);
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}
