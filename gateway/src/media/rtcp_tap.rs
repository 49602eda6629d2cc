//! Lets the RTCP we act on reach the application: viewers' keyframe
//! requests, NACKs and receiver reports (counted), and publishers' sender
//! reports.
//!
//! `rtc`'s interceptor chain ends in a no-op that drops every inbound RTCP
//! packet not marked for delivery, so without this a viewer's PLI or FIR
//! would never be forwarded to the publisher, and the recorder would never
//! learn a publisher's NTP ↔ RTP mapping (its A/V sync). Sitting
//! application-ward of the built-in interceptors, it marks compound packets
//! that carry one of those and passes everything else along as is.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;

/// The registry slot: above every built-in interceptor (reports, NACK,
/// TWCC sit below 10 000), so it sees RTCP after they have consumed it.
pub const SLOT: usize = 14_000;

#[derive(Default)]
pub struct ApplicationRtcpTap {
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ApplicationRtcpTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let wanted = packets.iter().any(|p| {
                let any = p.as_any();
                any.is::<PictureLossIndication>()
                    || any.is::<FullIntraRequest>()
                    || any.is::<SenderReport>()
                    // Counted for the admin panel and /metrics (the NACK
                    // responder has already acted on them below us).
                    || any.is::<ReceiverReport>()
                    || any.is::<TransportLayerNack>()
            });
            if wanted {
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }
}

impl Interceptor for ApplicationRtcpTap {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}
