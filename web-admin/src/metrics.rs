//! `/metrics` in the Prometheus text format (version 0.0.4), and the HTTP
//! request counters behind its `whipcord_http_requests_total`.
//!
//! Rendered by hand from one [`MetricsSnapshot`]: the media counters
//! already exist in the gateway's hub, so a scrape reads them once instead
//! of the hot path updating a second registry per packet.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::Admin;
use crate::auth::principal::bearer;
use crate::control::MetricsSnapshot;
use crate::secret::constant_time_eq;

/// Requests served, by route pattern, method and status.
#[derive(Default)]
pub struct HttpMetrics {
    counts: Mutex<HashMap<(String, String, u16), u64>>,
}

/// Distinct (route, method, status) series kept at most. Routes are
/// patterns (`/whip/{stream}`), so this is only reached by garbage.
const MAX_SERIES: usize = 2048;

impl HttpMetrics {
    pub fn record(&self, route: &str, method: &str, status: u16) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let key = (route.to_owned(), method.to_owned(), status);
        if let Some(n) = counts.get_mut(&key) {
            *n += 1;
        } else if counts.len() < MAX_SERIES {
            counts.insert(key, 1);
        }
    }

    fn snapshot(&self) -> Vec<((String, String, u16), u64)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort();
        all
    }
}

/// Middleware counting every response by route pattern and status.
pub async fn count_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let admin = req.app_data::<web::Data<Admin>>().cloned();
    let method = req.method().as_str().to_owned();
    let response = next.call(req).await?;
    if let Some(admin) = admin {
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".into());
        admin
            .http_metrics
            .record(&route, &method, response.status().as_u16());
    }
    Ok(response)
}

pub async fn endpoint(admin: web::Data<Admin>, req: HttpRequest) -> HttpResponse {
    if let Some(want) = admin.config.metrics_token.as_deref() {
        let ok = bearer(&req).is_some_and(|got| constant_time_eq(want.as_bytes(), got.as_bytes()));
        if !ok {
            return HttpResponse::Unauthorized()
                .insert_header(("WWW-Authenticate", "Bearer"))
                .body("metrics token required\n");
        }
    }
    let snapshot = admin.control.metrics().await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(render(&snapshot, &admin.http_metrics))
}

/// The exposition text.
pub fn render(m: &MetricsSnapshot, http: &HttpMetrics) -> String {
    let mut out = String::with_capacity(4096);
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge("whipcord_streams", "Live streams.", m.streams as f64);
    gauge(
        "whipcord_publishers",
        "Connected publishers.",
        m.publishers as f64,
    );
    gauge(
        "whipcord_viewers",
        "Connected WHEP viewers.",
        m.viewers as f64,
    );
    gauge(
        "whipcord_recordings_active",
        "Recordings being written.",
        m.recordings_active as f64,
    );
    gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        m.process_resident_bytes as f64,
    );
    let mut counter = |name: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    counter(
        "whipcord_packets_received_total",
        "RTP packets received from publishers.",
        m.packets_in as f64,
    );
    counter(
        "whipcord_bytes_received_total",
        "RTP payload bytes received from publishers.",
        m.bytes_in as f64,
    );
    counter(
        "whipcord_packets_sent_total",
        "RTP packets sent to viewers.",
        m.packets_out as f64,
    );
    counter(
        "whipcord_bytes_sent_total",
        "RTP bytes sent to viewers.",
        m.bytes_out as f64,
    );
    counter(
        "whipcord_packets_lost_total",
        "Publisher packets lost on the way in (sequence gaps).",
        m.packets_lost as f64,
    );
    counter(
        "whipcord_nacks_received_total",
        "NACKs received from viewers.",
        m.nacks_received as f64,
    );
    counter(
        "whipcord_plis_received_total",
        "Keyframe requests (PLI/FIR) received from viewers.",
        m.plis_received as f64,
    );
    counter(
        "whipcord_plis_sent_total",
        "Keyframe requests sent to publishers.",
        m.plis_sent as f64,
    );
    counter(
        "whipcord_keyframe_cache_hits_total",
        "Viewers started from the cached keyframe instead of waiting for one.",
        m.keyframe_cache_hits as f64,
    );
    counter(
        "whipcord_recording_bytes_written_total",
        "Bytes written to recording files.",
        m.recording_bytes_written as f64,
    );
    counter(
        "whipcord_restream_reconnects_total",
        "Restream target reconnections.",
        m.restream_reconnects as f64,
    );
    counter(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        m.process_cpu_seconds,
    );
    let _ = writeln!(
        out,
        "# HELP whipcord_restream_targets Restream targets by state.\n\
         # TYPE whipcord_restream_targets gauge"
    );
    for (state, n) in &m.restream_states {
        let _ = writeln!(
            out,
            "whipcord_restream_targets{{state=\"{}\"}} {n}",
            escape(state)
        );
    }
    let _ = writeln!(
        out,
        "# HELP whipcord_http_requests_total HTTP requests by route, method and status.\n\
         # TYPE whipcord_http_requests_total counter"
    );
    for ((route, method, status), n) in http.snapshot() {
        let _ = writeln!(
            out,
            "whipcord_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
            escape(&route),
            escape(&method)
        );
    }
    out
}

/// Label value escaping of the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_once() {
        let http = HttpMetrics::default();
        http.record("/whip/{stream}", "POST", 201);
        http.record("/whip/{stream}", "POST", 201);
        let text = render(
            &MetricsSnapshot {
                packets_in: 42,
                restream_states: vec![("live".into(), 1)],
                ..MetricsSnapshot::default()
            },
            &http,
        );
        assert!(text.contains("whipcord_packets_received_total 42\n"));
        assert!(text.contains(
            "whipcord_http_requests_total{route=\"/whip/{stream}\",method=\"POST\",status=\"201\"} 2\n"
        ));
        assert!(text.contains("whipcord_restream_targets{state=\"live\"} 1\n"));
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP")).count();
        assert_eq!(types, helps);
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
