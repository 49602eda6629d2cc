//! Live streams, their viewers and publisher, and recording control.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Page, Pagination};
use crate::Admin;
use crate::auth::Principal;
use crate::control::{StreamInfo, ViewerInfo};
use crate::error::{ApiError, ErrorBody};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/streams", web::get().to(list))
        .route("/streams/{name}", web::get().to(show))
        .route("/streams/{name}/viewers", web::get().to(viewers))
        .route("/streams/{name}/viewers/{session}", web::delete().to(kick))
        .route(
            "/streams/{name}/publisher",
            web::delete().to(stop_publisher),
        )
        .route(
            "/streams/{name}/recording/{action}",
            web::post().to(recording),
        );
}

/// Live streams.
#[utoipa::path(get, path = "/api/v1/streams", tag = "streams", params(Pagination),
    responses((status = 200, body = Page<StreamInfo>), (status = 401, body = ErrorBody)))]
pub async fn list(
    admin: web::Data<Admin>,
    page: web::Query<Pagination>,
) -> Result<HttpResponse, ApiError> {
    let streams = admin.control.streams().await?;
    Ok(HttpResponse::Ok().json(page.slice(streams)))
}

async fn find(admin: &Admin, name: &str) -> Result<StreamInfo, ApiError> {
    admin
        .control
        .streams()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ApiError::not_found("live stream"))
}

/// One live stream.
#[utoipa::path(get, path = "/api/v1/streams/{name}", tag = "streams",
    params(("name" = String, Path, description = "stream name")),
    responses((status = 200, body = StreamInfo), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn show(
    admin: web::Data<Admin>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(find(&admin, &name).await?))
}

/// The WHEP viewers of a live stream.
#[utoipa::path(get, path = "/api/v1/streams/{name}/viewers", tag = "streams",
    params(("name" = String, Path, description = "stream name"), Pagination),
    responses((status = 200, body = Page<ViewerInfo>), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn viewers(
    admin: web::Data<Admin>,
    name: web::Path<String>,
    page: web::Query<Pagination>,
) -> Result<HttpResponse, ApiError> {
    let viewers = admin.control.viewers(&name).await?;
    Ok(HttpResponse::Ok().json(page.slice(viewers)))
}

/// Ends one viewer's WHEP session.
#[utoipa::path(delete, path = "/api/v1/streams/{name}/viewers/{session}", tag = "streams",
    params(("name" = String, Path, description = "stream name"),
           ("session" = String, Path, description = "WHEP session id")),
    responses((status = 204, description = "the session ended"), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn kick(
    admin: web::Data<Admin>,
    principal: Principal,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (name, session) = path.into_inner();
    admin.control.kick_viewer(&name, &session).await?;
    admin.audit_by(&principal, &req, "kick", Some(&format!("{name}/{session}")));
    Ok(HttpResponse::NoContent().finish())
}

/// Ends the stream's publisher session.
#[utoipa::path(delete, path = "/api/v1/streams/{name}/publisher", tag = "streams",
    params(("name" = String, Path, description = "stream name")),
    responses((status = 204, description = "the publisher was disconnected"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn stop_publisher(
    admin: web::Data<Admin>,
    principal: Principal,
    name: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin.control.stop_publisher(&name).await?;
    admin.audit_by(&principal, &req, "stop_publisher", Some(&name));
    Ok(HttpResponse::NoContent().finish())
}

/// Whether a stream is being recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingState {
    pub active: bool,
}

/// Starts or stops recording a live stream (`action`: `start` or `stop`).
#[utoipa::path(post, path = "/api/v1/streams/{name}/recording/{action}", tag = "streams",
    params(("name" = String, Path, description = "stream name"),
           ("action" = String, Path, description = "`start` or `stop`")),
    responses((status = 200, body = RecordingState), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn recording(
    admin: web::Data<Admin>,
    principal: Principal,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (name, action) = path.into_inner();
    let active = match action.as_str() {
        "start" => true,
        "stop" => false,
        _ => return Err(ApiError::bad_request("action must be start or stop")),
    };
    admin.control.set_recording(&name, active).await?;
    admin.audit_by(
        &principal,
        &req,
        &format!("recording_{action}"),
        Some(&name),
    );
    Ok(HttpResponse::Ok().json(RecordingState { active }))
}
