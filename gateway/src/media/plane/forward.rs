//! Media and events from peers: tracks binding into the hub, fan-out to
//! viewers, GOP replay, keyframe requests upstream, data-channel relay.

use std::time::Instant;

use super::*;

impl Plane {
    // ----- events and media --------------------------------------------------

    pub(super) fn on_event(&mut self, key: PeerKey, event: RTCPeerConnectionEvent, now: Instant) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                debug!(key, ?state, "peer connection state");
                match state {
                    RTCPeerConnectionState::Connected => self.on_connected(key, now),
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        if let Some(peer) = self.peers.get_mut(&key) {
                            peer.state = PeerState::Closed;
                        }
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(state) => {
                debug!(key, ?state, "ICE state");
                if state == RTCIceConnectionState::Failed
                    && let Some(peer) = self.peers.get_mut(&key)
                {
                    peer.state = PeerState::Closed;
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                if let Some(peer) = self.peers.get_mut(&key)
                    && let RoleState::Publisher { receivers, .. } = &mut peer.role_state
                {
                    receivers.insert(init.ssrc, (init.receiver_id, init.rid.clone()));
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) => {
                if let Some(peer) = self.peers.get_mut(&key) {
                    match &mut peer.role_state {
                        RoleState::Publisher { data_channel, .. }
                        | RoleState::Viewer { data_channel, .. } => *data_channel = Some(id),
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_connected(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.state == PeerState::Connected {
            return;
        }
        peer.state = PeerState::Connected;
        peer.connected_at = Some(now);
        let setup_ms = now.duration_since(peer.created).as_millis();
        info!(
            session = %peer.session,
            stream = %peer.stream,
            role = ?peer.role,
            setup_ms,
            client = ?peer.client.address,
            user_agent = peer.client.user_agent.as_deref().unwrap_or("-"),
            "connected"
        );
        if peer.role == Role::Viewer {
            // Our side is connected once DTLS completes here, but the
            // viewer only has its SRTP keys after our last handshake flight
            // reaches it; media sent in between is discarded there. A short
            // grace keeps the GOP (whose first packet is the keyframe) from
            // being thrown away.
            self.replays.push((now + REPLAY_GRACE, key));
        }
    }

    pub(super) fn fire_replays(&mut self, now: Instant) {
        if self.replays.is_empty() {
            return;
        }
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.replays)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.replays = rest;
        for (_, key) in due {
            if let Some(stream) = self.peers.get(&key).map(|p| p.stream.clone()) {
                self.replay_gop(key, &stream, now);
            }
        }
    }

    /// Sends a new viewer the cached GOP of each video track, then marks the
    /// track live so the next live packet continues the sequence.
    pub(super) fn replay_gop(&mut self, key: PeerKey, stream_name: &StreamName, now: Instant) {
        let Self {
            hub,
            peers,
            egress,
            stats,
            ..
        } = self;
        let Some(stream) = hub.get(stream_name) else {
            return;
        };
        let Some(peer) = peers.get_mut(&key) else {
            return;
        };
        let src_ip = peer.src_ip;
        let Peer { pc, role_state, .. } = peer;
        let RoleState::Viewer { tracks, .. } = role_state else {
            return;
        };
        let mut replayed = 0usize;
        let (mut sent, mut failed, mut bytes) = (0, 0, 0);
        for (index, slot) in tracks.iter_mut().enumerate() {
            let (Some(vt), Some(track)) = (slot.as_mut(), stream.tracks.get(index)) else {
                continue;
            };
            if vt.live || track.kind() != MediaKind::Video {
                continue;
            }
            let Some(layer) = track.layers.get(track.active) else {
                continue;
            };
            if !layer.gop.has_keyframe() {
                continue; // goes live at the next keyframe instead
            }
            for cached in layer.gop.packets() {
                let mut packet = cached.clone();
                vt.rewriter.rewrite(&mut packet.header, now);
                Peer::forward_rtp(pc, now, packet);
                // Send each packet right away: queued as one burst, a GOP of
                // hundreds of packets grows every pipeline stage's buffers,
                // which then never shrink (about 1 MiB per viewer).
                let (s, f, b) = Self::drain_writes(egress, pc, src_ip);
                sent += s;
                failed += f;
                bytes += b;
                replayed += 1;
            }
            vt.live = true;
        }
        peer.packets_out += sent;
        peer.bytes_out += bytes;
        stats.packets_out += sent;
        stats.bytes_out += bytes;
        if replayed > 0 {
            stats.keyframe_cache_hits += 1;
        }
        peer.send_errors += failed;
        stats.send_errors += failed;
        Self::flush(egress, stats, peer);
        debug!(key, replayed, "GOP replayed to new viewer");
    }

    pub(super) fn on_message(&mut self, key: PeerKey, message: RTCMessage, now: Instant) {
        match message {
            RTCMessage::RtpPacket(_, packet) => self.on_rtp(key, packet, now),
            RTCMessage::RtcpPacket(track_id, packets) => {
                self.on_sender_reports(key, &packets);
                self.on_viewer_feedback(key, &packets);
                let wants_keyframe = packets.iter().any(|p| {
                    let any = p.as_any();
                    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
                });
                if wants_keyframe {
                    self.on_keyframe_request(key, &track_id, now);
                }
            }
            RTCMessage::DataChannelMessage(_, message) => self.relay_data(key, message, now),
            _ => {}
        }
    }

    /// Counts a viewer's feedback (keyframe requests, NACKs) and keeps the
    /// loss its receiver reports give, for the panel and `/metrics`.
    fn on_viewer_feedback(&mut self, key: PeerKey, packets: &[Box<dyn rtc::rtcp::Packet>]) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.role != Role::Viewer {
            return;
        }
        for packet in packets {
            let any = packet.as_any();
            if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                peer.plis += 1;
                self.stats.plis_received += 1;
            } else if any.is::<TransportLayerNack>() {
                peer.nacks += 1;
                self.stats.nacks_received += 1;
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>()
                && let Some(report) = rr.reports.iter().max_by_key(|r| r.fraction_lost)
            {
                peer.loss_pct = f64::from(report.fraction_lost) * 100.0 / 256.0;
            }
        }
    }

    /// A publisher's sender reports go to the stream's subscribers (the
    /// recorder's A/V sync).
    fn on_sender_reports(&mut self, key: PeerKey, packets: &[Box<dyn rtc::rtcp::Packet>]) {
        let Some(peer) = self.peers.get(&key) else {
            return;
        };
        let RoleState::Publisher { routes, .. } = &peer.role_state else {
            return;
        };
        let Some(stream) = self.hub.get_mut(&peer.stream) else {
            return;
        };
        for packet in packets {
            let Some(sr) = packet.as_any().downcast_ref::<SenderReport>() else {
                continue;
            };
            if let Some(&(track, layer)) = routes.get(&sr.ssrc) {
                stream.sender_report(track, layer, sr.ssrc, sr.ntp_time, sr.rtp_time);
            }
        }
    }

    pub(super) fn on_rtp(&mut self, key: PeerKey, mut packet: Packet, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.role != Role::Publisher {
            return;
        }
        // Header extensions are negotiated per leg; the viewers' legs have
        // their own, so the publisher's are dropped here, once.
        packet.header.extension = false;
        packet.header.extensions.clear();
        packet.header.extensions_padding = 0;
        let stream_name = peer.stream.clone();
        let route = match &peer.role_state {
            RoleState::Publisher { routes, .. } => routes.get(&packet.header.ssrc).copied(),
            RoleState::Viewer { .. } => None,
        };
        let (track, layer) = match route {
            Some(route) => route,
            None => {
                let Some(route) = self.bind_track(key, &stream_name, &packet, now) else {
                    return;
                };
                route
            }
        };
        let Some(stream) = self.hub.get_mut(&stream_name) else {
            return;
        };
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.payload.len() as u64;
        let routed = stream.route(track, layer, &packet, now);
        if routed.forward {
            self.fan_out(&stream_name, track, &packet, routed.keyframe, now);
        }
    }

    /// First packet of an incoming track: learn its codec and give it a
    /// place in the hub.
    pub(super) fn bind_track(
        &mut self,
        key: PeerKey,
        stream_name: &StreamName,
        packet: &Packet,
        now: Instant,
    ) -> Option<(usize, usize)> {
        let peer = self.peers.get_mut(&key)?;
        let ssrc = packet.header.ssrc;
        let (receiver, rid) = match &peer.role_state {
            RoleState::Publisher { receivers, .. } => receivers.get(&ssrc).cloned()?,
            RoleState::Viewer { .. } => return None,
        };
        let description = peer.incoming_description(receiver, packet.header.payload_type)?;
        let group = format!("{receiver:?}");
        let stream = self.hub.entry(stream_name, now);
        let track = stream.bind_layer(&group, rid.clone(), ssrc, description.clone());
        let layer = stream.tracks[track]
            .layers
            .iter()
            .position(|l| l.rid == rid)
            .unwrap_or(0);
        info!(stream = %stream_name, track, ?rid, codec = %description.codec, "track bound");
        if let RoleState::Publisher { routes, .. } = &mut peer.role_state {
            routes.insert(ssrc, (track, layer));
        }
        if stream.tracks_ready() {
            self.resolve_pending(stream_name, now);
        }
        Some((track, layer))
    }

    /// Forwards one live packet to every viewer of the stream.
    pub(super) fn fan_out(
        &mut self,
        stream_name: &StreamName,
        track: usize,
        packet: &Packet,
        keyframe: bool,
        now: Instant,
    ) {
        let Self {
            hub,
            peers,
            egress,
            stats,
            ..
        } = self;
        let Some(stream) = hub.get(stream_name) else {
            return;
        };
        for viewer in &stream.viewers {
            let Some(peer) = peers.get_mut(viewer) else {
                continue;
            };
            if peer.state != PeerState::Connected {
                continue;
            }
            let Peer { pc, role_state, .. } = peer;
            let RoleState::Viewer { tracks, .. } = role_state else {
                continue;
            };
            let Some(Some(vt)) = tracks.get_mut(track) else {
                continue;
            };
            if !vt.live {
                if !keyframe {
                    continue;
                }
                vt.live = true;
            }
            let mut out = packet.clone();
            vt.rewriter.rewrite(&mut out.header, now);
            Peer::forward_rtp(pc, now, out);
            Self::flush(egress, stats, peer);
        }
    }

    pub(super) fn on_keyframe_request(&mut self, viewer: PeerKey, track_id: &str, now: Instant) {
        let Some(peer) = self.peers.get(&viewer) else {
            return;
        };
        if peer.role != Role::Viewer {
            return;
        }
        // Viewer track ids end in the hub track index (see PeerFactory).
        let Some(track) = track_id
            .rsplit('-')
            .next()
            .and_then(|i| i.parse::<usize>().ok())
        else {
            return;
        };
        let stream = peer.stream.clone();
        self.request_keyframe(&stream, track, now);
    }

    /// Sends a PLI to the publisher for `track`'s active layer, rate-limited.
    pub(super) fn request_keyframe(
        &mut self,
        stream_name: &StreamName,
        track: usize,
        now: Instant,
    ) {
        let Some(stream) = self.hub.get_mut(stream_name) else {
            return;
        };
        let Some(publisher) = stream.publisher else {
            return;
        };
        let Some(t) = stream.tracks.get(track) else {
            return;
        };
        if t.kind() != MediaKind::Video {
            return;
        }
        let media_ssrc = t.layers.get(t.active).map(|l| l.ssrc);
        if !stream.allow_pli(track, now) {
            return;
        }
        let Some(media_ssrc) = media_ssrc else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&publisher) else {
            return;
        };
        let RoleState::Publisher { receivers, .. } = &peer.role_state else {
            return;
        };
        let Some((receiver, _)) = receivers.get(&media_ssrc).cloned() else {
            return;
        };
        if let Some(mut r) = peer.pc.rtp_receiver(receiver) {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            };
            match r.write_rtcp(now, vec![Box::new(pli)]) {
                Ok(_) => self.stats.plis_sent += 1,
                Err(err) => debug!("PLI upstream failed: {err}"),
            }
        }
        Self::flush(&self.egress, &mut self.stats, peer);
    }

    pub(super) fn relay_data(
        &mut self,
        key: PeerKey,
        message: rtc::data_channel::RTCDataChannelMessage,
        now: Instant,
    ) {
        let Some(peer) = self.peers.get(&key) else {
            return;
        };
        if peer.role != Role::Publisher || message.data.len() > 16 * 1024 {
            return;
        }
        let stream_name = peer.stream.clone();
        let Self {
            hub,
            peers,
            egress,
            stats,
            ..
        } = self;
        let Some(stream) = hub.get(&stream_name) else {
            return;
        };
        for viewer in &stream.viewers {
            let Some(peer) = peers.get_mut(viewer) else {
                continue;
            };
            let RoleState::Viewer {
                data_channel: Some(id),
                ..
            } = &peer.role_state
            else {
                continue;
            };
            let id = *id;
            if let Some(mut channel) = peer.pc.data_channel(id) {
                let result = if message.is_string {
                    channel.send_text(now, String::from_utf8_lossy(&message.data).into_owned())
                } else {
                    channel.send(now, BytesMut::from(&message.data[..]))
                };
                if let Err(err) = result {
                    debug!("data channel relay failed: {err}");
                }
            }
            Self::flush(egress, stats, peer);
        }
    }
}
