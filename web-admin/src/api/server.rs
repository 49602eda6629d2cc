//! The caller's session, server figures, and the live event stream.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use futures_util::stream;
use serde::Serialize;
use utoipa::ToSchema;

use crate::Admin;
use crate::auth::Principal;
use crate::control::{ServerStats, StreamInfo};
use crate::error::{ApiError, ErrorBody};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/session", web::get().to(session))
        .route("/stats", web::get().to(stats))
        .route("/events", web::get().to(events));
}

/// What the panel's pages need to know about their session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    /// Send as `X-CSRF-Token` on every state-changing request (null for
    /// bearer-token callers, who need none).
    pub csrf: Option<String>,
    /// Who the caller is, as the audit log names it.
    pub actor: String,
    /// A panel session ends after this long without a request.
    pub idle_expiry_s: u64,
}

/// The caller's session.
#[utoipa::path(get, path = "/api/v1/session", tag = "server",
    responses((status = 200, body = SessionInfo), (status = 401, body = ErrorBody)))]
pub async fn session(admin: web::Data<Admin>, principal: Principal) -> HttpResponse {
    let csrf = match &principal {
        Principal::Admin { csrf } => Some(csrf.clone()),
        _ => None,
    };
    HttpResponse::Ok().json(SessionInfo {
        csrf,
        actor: principal.actor(),
        idle_expiry_s: admin.sessions.idle().as_secs(),
    })
}

/// Server CPU, memory, bandwidth and counts.
#[utoipa::path(get, path = "/api/v1/stats", tag = "server",
    responses((status = 200, body = ServerStats), (status = 401, body = ErrorBody)))]
pub async fn stats(admin: web::Data<Admin>) -> HttpResponse {
    HttpResponse::Ok().json(admin.control.server_stats().await)
}

/// One `snapshot` event of `/api/v1/events`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Snapshot {
    pub server: ServerStats,
    pub streams: Vec<StreamInfo>,
}

/// How often the event stream sends a snapshot.
const EVENT_INTERVAL: Duration = Duration::from_secs(1);

/// Live figures as Server-Sent Events: a `snapshot` event ([`Snapshot`])
/// every second, for as long as the session lasts.
#[utoipa::path(get, path = "/api/v1/events", tag = "server",
    responses((status = 200, description = "text/event-stream of `snapshot` events", body = Snapshot, content_type = "text/event-stream"),
              (status = 401, body = ErrorBody)))]
pub async fn events(
    admin: web::Data<Admin>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let cookie = req
        .cookie(crate::auth::principal::SESSION_COOKIE)
        .map(|c| c.value().to_owned());
    let body = stream::unfold((admin, cookie, true), |(admin, cookie, first)| async move {
        if !first {
            tokio::time::sleep(EVENT_INTERVAL).await;
        }
        // A panel session that expired or logged out stops its stream.
        if let Some(cookie) = &cookie
            && !admin.sessions.is_live(cookie)
        {
            return None;
        }
        let streams = admin.control.streams().await.unwrap_or_default();
        let snapshot = Snapshot {
            server: admin.control.server_stats().await,
            streams,
        };
        let data = serde_json::to_string(&snapshot).unwrap_or_else(|_| "{}".into());
        let chunk = web::Bytes::from(format!("event: snapshot\ndata: {data}\n\n"));
        Some((Ok::<_, actix_web::Error>(chunk), (admin, cookie, false)))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}
