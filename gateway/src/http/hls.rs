//! HLS over HTTP: `/hls/{stream}/index.m3u8` (with LL-HLS blocking
//! reloads), its init segments, segments and parts, and the hls.js player
//! page at `/hls/{stream}/`.
//!
//! HLS is made on demand: the first playlist request starts the stream's
//! bridge session (or its HLS muxer) and waits for the first segment;
//! every request keeps it wanted; a minute without requests stops it
//! (unless `hls = "always"`). Watching needs the stream's watch token, as
//! a bearer header (hls.js) or `?token=` (native players cannot send
//! headers).

use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use rtmp_bridge::hls::{self, RequestError, Resource};
use tracing::warn;

use super::AppState;
use crate::auth::{self, Action};
use crate::config::HlsMode;
use crate::signal::{Command, SignalError};
use crate::stream_name::StreamName;

const PLAYER_HTML: &str = include_str!("../../assets/hls.html");

/// How long the first playlist request waits for the first segment.
const FIRST_SEGMENT_WAIT: Duration = Duration::from_secs(10);

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/hls/{stream}", web::get().to(to_player))
        .route("/hls/{stream}/", web::get().to(player))
        .route("/hls/{stream}/{name}", web::get().to(resource));
}

async fn to_player(path: web::Path<String>) -> HttpResponse {
    match StreamName::parse(&path) {
        Some(stream) => HttpResponse::PermanentRedirect()
            .insert_header((header::LOCATION, format!("/hls/{}/", stream.as_str())))
            .finish(),
        None => HttpResponse::NotFound().body("no such stream"),
    }
}

async fn player(path: web::Path<String>) -> HttpResponse {
    if StreamName::parse(&path).is_none() {
        return HttpResponse::NotFound().body("no such stream");
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(PLAYER_HTML)
}

fn error_response(err: &RequestError) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(err.status())
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .content_type("text/plain; charset=utf-8")
        .body(err.to_string())
}

fn not_live() -> HttpResponse {
    HttpResponse::NotFound()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body("stream is not live")
}

/// The watch token, from the bearer header or `?token=`.
fn presented_token(req: &HttpRequest) -> Option<String> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(token) = auth::bearer(header) {
        return Some(token.to_owned());
    }
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("token").cloned())
}

async fn resource(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (stream, name) = path.into_inner();
    let (Some(stream), Some(resource)) = (StreamName::parse(&stream), hls::parse_resource(&name))
    else {
        return HttpResponse::NotFound().body("no such HLS resource");
    };
    if let Err(err) = auth::check(
        &state.config,
        Some(state.admin.store()),
        &stream,
        Action::Watch,
        presented_token(&req).as_deref(),
    ) {
        return HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .body(err.to_string());
    }
    if state.config.hls == HlsMode::Off {
        return HttpResponse::NotFound().body("HLS is turned off (hls = \"off\")");
    }
    state.bridge.touch_hls(&stream);
    let target = state.bridge.hls_config().target_duration();
    let store = match state.bridge.hls_store(&stream) {
        Some(store) => store,
        None if resource == Resource::Playlist => match start_hls(&state, &stream).await {
            Ok(store) => store,
            Err(response) => return response,
        },
        None => return not_live(),
    };
    match resource {
        Resource::Playlist => {
            let reload = match hls::parse_reload_query(req.query_string()) {
                Ok(reload) => reload,
                Err(err) => return error_response(&err),
            };
            // A plain request waits only for the first segment; a blocking
            // one for what it names, up to three target durations.
            let wait = if reload.msn.is_some() {
                target * 3
            } else {
                FIRST_SEGMENT_WAIT
            };
            match store.blocking_playlist(reload.msn, reload.part, wait).await {
                Ok(text) => HttpResponse::Ok()
                    .content_type(resource.content_type())
                    .insert_header((header::CACHE_CONTROL, "no-cache"))
                    .body(text),
                Err(err) => error_response(&err),
            }
        }
        Resource::Init { run } => media(store.init_of_run(run), resource),
        Resource::Segment { msn } => media(store.segment(msn), resource),
        Resource::Part { msn, index } => match store.part(msn, index, target * 3).await {
            Ok(data) => media(Some(data), resource),
            Err(err) => error_response(&err),
        },
    }
}

/// Segments and parts never change once made: cacheable for as long as
/// they can be listed.
fn media(data: Option<bytes::Bytes>, resource: Resource) -> HttpResponse {
    match data {
        Some(data) => HttpResponse::Ok()
            .content_type(resource.content_type())
            .insert_header((header::CACHE_CONTROL, "public, max-age=60, immutable"))
            .body(data),
        None => HttpResponse::NotFound()
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .body("no such segment (not made yet, or expired)"),
    }
}

/// Starts HLS for a live stream and waits until its muxer exists.
async fn start_hls(state: &AppState, stream: &StreamName) -> Result<hls::Store, HttpResponse> {
    match state
        .media
        .request(|reply| Command::StartBridge {
            stream: stream.clone(),
            reply,
        })
        .await
    {
        Ok(Ok(())) => {}
        Ok(Err(SignalError::StreamNotLive)) => return Err(not_live()),
        Ok(Err(err)) | Err(err) => {
            warn!(%stream, "cannot start HLS: {err}");
            return Err(HttpResponse::ServiceUnavailable().body(err.to_string()));
        }
    }
    // The session creates the muxer on its next batch (tens of ms).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(store) = state.bridge.hls_store(stream) {
            return Ok(store);
        }
        if Instant::now() >= deadline {
            return Err(HttpResponse::ServiceUnavailable().body("HLS did not start"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
