//! The recordings REST API and downloads.
//!
//! `GET /api/recordings` lists the catalog, `GET /recordings/{id}` serves a
//! file (with `Range`), `DELETE /api/recordings/{id}` removes one, and
//! `POST /api/streams/{name}/recording/{start|stop}` controls recording of a
//! live stream. Files are served only by catalog id, never by path, so no
//! request can reach anything else on disk.
//!
//! Access: with an API token configured, every request must carry it as a
//! bearer token; without one, only loopback clients are answered, so a
//! fresh install does not publish its recordings to the network.

use actix_files::NamedFile;
use actix_web::http::header::{self, ContentDisposition, DispositionParam, DispositionType};
use actix_web::{HttpRequest, HttpResponse, web};
use recorder::catalog::{ListQuery, Recording, RecordingState};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::AppState;
use crate::auth;
use crate::recording::naming;
use crate::signal::{Command, SignalError};
use crate::stream_name::StreamName;

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 1000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/recordings", web::get().to(list))
        .route("/api/recordings/{id}", web::get().to(show))
        .route("/api/recordings/{id}", web::delete().to(remove))
        .route("/recordings/{id}", web::get().to(download))
        .route("/recordings/{id}", web::head().to(download))
        .route(
            "/api/streams/{stream}/recording/{action}",
            web::post().to(control),
        );
}

/// Why an API request was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiError {
    Unauthorized,
    Forbidden,
    NotFound,
    Catalog,
    Unavailable,
}

impl ApiError {
    pub fn response(self) -> HttpResponse {
        match self {
            Self::Unauthorized => HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .body("a valid API token is required (Authorization: Bearer)"),
            Self::Forbidden => HttpResponse::Forbidden()
                .body("the API answers loopback clients only unless an API token is configured"),
            Self::NotFound => HttpResponse::NotFound().body("no such recording"),
            Self::Catalog => HttpResponse::InternalServerError().body("catalog error"),
            Self::Unavailable => HttpResponse::ServiceUnavailable().finish(),
        }
    }
}

/// Refuses the request unless it may use the API.
pub fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    // What `/api/v1` accepts (a panel session, an API token from the
    // panel) works here too.
    if web_admin::auth::principal::authenticate(&state.admin, req).is_ok() {
        return Ok(());
    }
    match state.config.api_token.as_deref() {
        Some(want) => {
            let presented = auth::bearer(
                req.headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            );
            match presented {
                Some(got) if auth::constant_time_eq(want.as_bytes(), got.as_bytes()) => Ok(()),
                _ => Err(ApiError::Unauthorized),
            }
        }
        None if req.peer_addr().is_some_and(|a| a.ip().is_loopback()) => Ok(()),
        None => Err(ApiError::Forbidden),
    }
}

#[derive(Debug, Deserialize)]
struct ListParams {
    stream: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// A recording as the API shows it.
#[derive(Debug, Serialize)]
struct RecordingJson {
    id: i64,
    stream: String,
    container: &'static str,
    content_type: &'static str,
    state: &'static str,
    started_at: String,
    ended_at: Option<String>,
    duration_ms: Option<u64>,
    video_codec: Option<String>,
    audio_codec: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    size_bytes: u64,
    file_name: String,
    dropped_frames: u64,
    error: Option<String>,
    download: String,
}

impl From<&Recording> for RecordingJson {
    fn from(r: &Recording) -> Self {
        Self {
            id: r.id,
            stream: r.stream.clone(),
            container: r.container.as_str(),
            content_type: r.container.content_type(),
            state: r.state.as_str(),
            started_at: naming::rfc3339_ms(r.started_at_ms),
            ended_at: r.ended_at_ms.map(naming::rfc3339_ms),
            duration_ms: r.duration_ms,
            video_codec: r.video_codec.clone(),
            audio_codec: r.audio_codec.clone(),
            width: r.width,
            height: r.height,
            size_bytes: r.size_bytes,
            file_name: r.file_name(),
            dropped_frames: r.dropped_frames,
            error: r.error.clone(),
            download: format!("/recordings/{}", r.id),
        }
    }
}

fn bad_request(why: String) -> HttpResponse {
    HttpResponse::BadRequest().body(why)
}

async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    params: web::Query<ListParams>,
) -> HttpResponse {
    if let Err(refused) = authorize(&req, &state) {
        return refused.response();
    }
    let parse_time = |name: &str, raw: &Option<String>| match raw {
        None => Ok(None),
        Some(raw) => naming::parse_time_ms(raw)
            .map(Some)
            .ok_or_else(|| format!("{name} must be an RFC 3339 time or Unix milliseconds")),
    };
    let from_ms = match parse_time("from", &params.from) {
        Ok(v) => v,
        Err(why) => return bad_request(why),
    };
    let to_ms = match parse_time("to", &params.to) {
        Ok(v) => v,
        Err(why) => return bad_request(why),
    };
    let query = ListQuery {
        stream: params.stream.clone(),
        from_ms,
        to_ms,
        limit: params.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE),
        offset: params.offset.unwrap_or(0),
    };
    let recordings = state.recordings.clone();
    let result = web::block(move || recordings.catalog().list(&query)).await;
    match result {
        Ok(Ok((rows, total))) => {
            let items: Vec<RecordingJson> = rows.iter().map(RecordingJson::from).collect();
            HttpResponse::Ok().json(serde_json::json!({ "items": items, "total": total }))
        }
        Ok(Err(err)) => {
            warn!("listing recordings: {err}");
            HttpResponse::InternalServerError().body("catalog error")
        }
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

/// Authorizes the request and looks the recording up by the `{id}` path
/// segment; anything that is not a catalog id is simply not found.
async fn lookup(req: &HttpRequest, state: &AppState, raw_id: &str) -> Result<Recording, ApiError> {
    authorize(req, state)?;
    let id: i64 = raw_id.parse().map_err(|_| ApiError::NotFound)?;
    let recordings = state.recordings.clone();
    match web::block(move || recordings.catalog().get(id)).await {
        Ok(Ok(Some(recording))) => Ok(recording),
        Ok(Ok(None)) => Err(ApiError::NotFound),
        Ok(Err(err)) => {
            warn!("reading recording {id}: {err}");
            Err(ApiError::Catalog)
        }
        Err(_) => Err(ApiError::Unavailable),
    }
}

async fn show(req: HttpRequest, state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    match lookup(&req, &state, &id).await {
        Ok(recording) => HttpResponse::Ok().json(RecordingJson::from(&recording)),
        Err(refused) => refused.response(),
    }
}

async fn download(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> HttpResponse {
    let recording = match lookup(&req, &state, &id).await {
        Ok(r) => r,
        Err(refused) => return refused.response(),
    };
    let file = match NamedFile::open_async(&recording.path).await {
        Ok(f) => f,
        Err(err) => {
            warn!(id = recording.id, "recording file unreadable: {err}");
            return HttpResponse::NotFound().body("recording file is missing");
        }
    };
    // The content type follows the extension (`.mp4`, `.webm`), which the
    // recorder chose from the container.
    file.set_content_disposition(ContentDisposition {
        disposition: DispositionType::Attachment,
        parameters: vec![DispositionParam::Filename(recording.file_name())],
    })
    // Range requests are what players and download managers use; a
    // file still being written grows, so no caching validators.
    .use_etag(recording.state != RecordingState::Recording)
    .use_last_modified(recording.state != RecordingState::Recording)
    .into_response(&req)
}

async fn remove(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> HttpResponse {
    let recording = match lookup(&req, &state, &id).await {
        Ok(r) => r,
        Err(refused) => return refused.response(),
    };
    if recording.state == RecordingState::Recording {
        return HttpResponse::Conflict()
            .body("the recording is still being written; stop it first");
    }
    let recordings = state.recordings.clone();
    let id = recording.id;
    match web::block(move || recordings.delete(id)).await {
        Ok(Ok(true)) => {
            info!(id, file = %recording.path.display(), "recording deleted by API");
            HttpResponse::NoContent().finish()
        }
        Ok(Ok(false)) => HttpResponse::NotFound().body("no such recording"),
        Ok(Err(err)) => {
            warn!("deleting recording {id}: {err}");
            HttpResponse::InternalServerError().body("catalog error")
        }
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

async fn control(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    if let Err(refused) = authorize(&req, &state) {
        return refused.response();
    }
    let (stream, action) = path.into_inner();
    let Some(stream) = StreamName::parse(&stream) else {
        return HttpResponse::NotFound().body("no such stream");
    };
    match action.as_str() {
        "start" => {
            let result = state
                .media
                .request(|reply| Command::StartRecording {
                    stream: stream.clone(),
                    reply,
                })
                .await;
            match result {
                Ok(Ok(())) => HttpResponse::NoContent().finish(),
                Ok(Err(SignalError::StreamNotLive)) | Err(SignalError::StreamNotLive) => {
                    HttpResponse::NotFound().body("stream is not live")
                }
                Ok(Err(err)) | Err(err) => HttpResponse::ServiceUnavailable().body(err.to_string()),
            }
        }
        "stop" => {
            if state.recordings.stop(&stream) {
                HttpResponse::NoContent().finish()
            } else {
                HttpResponse::NotFound().body("stream is not being recorded")
            }
        }
        _ => HttpResponse::NotFound().body("action must be start or stop"),
    }
}
