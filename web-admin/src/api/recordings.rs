//! The recordings catalog: listing, totals, download, deletion.

use actix_files::NamedFile;
use actix_web::http::header::{ContentDisposition, DispositionParam, DispositionType};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{Page, Pagination};
use crate::Admin;
use crate::auth::Principal;
use crate::control::{RecordingFilter, RecordingInfo, RecordingTotals};
use crate::error::{ApiError, ErrorBody};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/recordings", web::get().to(list))
        .route("/recordings/totals", web::get().to(totals))
        .route("/recordings/{id}", web::get().to(show))
        .route("/recordings/{id}", web::delete().to(remove))
        .route("/recordings/{id}/download", web::get().to(download))
        .route("/recordings/{id}/download", web::head().to(download));
}

/// Recordings, newest first.
#[utoipa::path(get, path = "/api/v1/recordings", tag = "recordings",
    params(RecordingFilter, Pagination),
    responses((status = 200, body = Page<RecordingInfo>), (status = 401, body = ErrorBody)))]
pub async fn list(
    admin: web::Data<Admin>,
    filter: web::Query<RecordingFilter>,
    page: web::Query<Pagination>,
) -> Result<HttpResponse, ApiError> {
    let (items, total) = admin
        .control
        .recordings(&filter, page.per_page(), page.offset())?;
    Ok(HttpResponse::Ok().json(page.wrap(items, total)))
}

/// Space used by recordings, against the retention limits.
#[utoipa::path(get, path = "/api/v1/recordings/totals", tag = "recordings",
    responses((status = 200, body = RecordingTotals), (status = 401, body = ErrorBody)))]
pub async fn totals(admin: web::Data<Admin>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(admin.control.recording_totals()?))
}

/// One recording.
#[utoipa::path(get, path = "/api/v1/recordings/{id}", tag = "recordings",
    params(("id" = i64, Path, description = "recording id")),
    responses((status = 200, body = RecordingInfo), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn show(admin: web::Data<Admin>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(admin.control.recording(*id)?))
}

/// Deletes a recording and its file (a recording still being written
/// cannot be deleted: stop it first).
#[utoipa::path(delete, path = "/api/v1/recordings/{id}", tag = "recordings",
    params(("id" = i64, Path, description = "recording id")),
    responses((status = 204, description = "deleted"), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn remove(
    admin: web::Data<Admin>,
    principal: Principal,
    id: web::Path<i64>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin.control.delete_recording(*id)?;
    admin.audit_by(&principal, &req, "recording_delete", Some(&id.to_string()));
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// `1`: serve for playing in the browser rather than as an attachment.
    pub inline: Option<u8>,
}

/// The recording's file (Range requests work).
#[utoipa::path(get, path = "/api/v1/recordings/{id}/download", tag = "recordings",
    params(("id" = i64, Path, description = "recording id"), DownloadQuery),
    responses((status = 200, description = "the media file", content_type = "video/mp4"),
              (status = 206, description = "part of the media file"),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn download(
    admin: web::Data<Admin>,
    id: web::Path<i64>,
    query: web::Query<DownloadQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let file = admin.control.recording_file(*id)?;
    let named = NamedFile::open_async(&file.path)
        .await
        .map_err(|_| ApiError::not_found("recording file"))?;
    let disposition = if query.inline == Some(1) {
        DispositionType::Inline
    } else {
        DispositionType::Attachment
    };
    Ok(named
        .set_content_type(actix_files::file_extension_to_mime(file.extension))
        .set_content_disposition(ContentDisposition {
            disposition,
            parameters: vec![DispositionParam::Filename(file.file_name)],
        })
        .into_response(&req))
}
