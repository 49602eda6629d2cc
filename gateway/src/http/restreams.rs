//! The restream REST API: `GET /api/restreams[?stream=]`,
//! `GET /api/restreams/{id}`, `POST /api/restreams` (`{"stream", "url",
//! "transcode"}`) and `DELETE /api/restreams/{id}`. Same access rule as
//! the recordings API. Stream keys go in, never out.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use tracing::warn;

use super::AppState;
use super::recordings::authorize;
use crate::bridge::{NewTarget, TargetId};
use crate::signal::{Command, SignalError};
use crate::stream_name::StreamName;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/restreams", web::get().to(list))
        .route("/api/restreams", web::post().to(create))
        .route("/api/restreams/{id}", web::get().to(show))
        .route("/api/restreams/{id}", web::delete().to(remove));
}

#[derive(Debug, Deserialize)]
struct ListParams {
    stream: Option<String>,
}

async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    params: web::Query<ListParams>,
) -> HttpResponse {
    if let Err(err) = authorize(&req, &state) {
        return err.response();
    }
    let stream = match params.stream.as_deref().map(StreamName::parse) {
        Some(None) => return HttpResponse::BadRequest().body("invalid stream name"),
        Some(Some(name)) => Some(name),
        None => None,
    };
    let targets = state.bridge.targets().list(stream.as_ref());
    HttpResponse::Ok().json(serde_json::json!({ "restreams": targets }))
}

fn parse_id(raw: &str) -> Option<TargetId> {
    raw.parse().ok()
}

async fn show(req: HttpRequest, state: web::Data<AppState>, id: web::Path<String>) -> HttpResponse {
    if let Err(err) = authorize(&req, &state) {
        return err.response();
    }
    match parse_id(&id).and_then(|id| state.bridge.targets().get(id)) {
        Some(target) => HttpResponse::Ok().json(target),
        None => HttpResponse::NotFound().body("no such restream target"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    stream: String,
    url: String,
    #[serde(default)]
    transcode: bool,
    #[serde(default)]
    enhanced: bool,
}

async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<CreateBody>,
) -> HttpResponse {
    if let Err(err) = authorize(&req, &state) {
        return err.response();
    }
    let body = body.into_inner();
    let Some(stream) = StreamName::parse(&body.stream) else {
        return HttpResponse::BadRequest().body("invalid stream name");
    };
    let added = state.bridge.targets().add(NewTarget {
        stream: stream.clone(),
        url: body.url,
        transcode: body.transcode,
        enhanced: body.enhanced,
        ca_file: None,
        from_config: false,
    });
    let entry = match added {
        Ok(entry) => entry,
        Err(err) => return HttpResponse::BadRequest().body(err.to_string()),
    };
    // A live stream starts (or keeps) its bridge session now; one that is
    // not live gets it when it goes live.
    match state
        .media
        .request(|reply| Command::StartBridge { stream, reply })
        .await
    {
        Ok(Ok(()) | Err(SignalError::StreamNotLive)) => {}
        Ok(Err(err)) | Err(err) => warn!(id = entry.id, "restream target not started: {err}"),
    }
    match state.bridge.targets().get(entry.id) {
        Some(target) => HttpResponse::Created()
            .insert_header((
                actix_web::http::header::LOCATION,
                format!("/api/restreams/{}", entry.id),
            ))
            .json(target),
        None => HttpResponse::NotFound().body("no such restream target"),
    }
}

async fn remove(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> HttpResponse {
    if let Err(err) = authorize(&req, &state) {
        return err.response();
    }
    match parse_id(&id) {
        Some(id) if state.bridge.targets().remove(id) => HttpResponse::NoContent().finish(),
        _ => HttpResponse::NotFound().body("no such restream target"),
    }
}
