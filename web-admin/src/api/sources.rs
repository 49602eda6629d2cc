//! RTSP sources (cameras) the gateway pulls: their state; adding and
//! removing them at run time.

use actix_web::{HttpRequest, HttpResponse, web};

use super::{Page, Pagination};
use crate::Admin;
use crate::auth::Principal;
use crate::control::{NewSource, SourceInfo};
use crate::error::{ApiError, ErrorBody};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/sources", web::get().to(list))
        .route("/sources", web::post().to(add))
        .route("/sources/{stream}", web::delete().to(remove));
}

/// RTSP sources with their connection state and last error.
#[utoipa::path(get, path = "/api/v1/sources", tag = "sources",
    params(Pagination),
    responses((status = 200, body = Page<SourceInfo>), (status = 401, body = ErrorBody)))]
pub async fn list(admin: web::Data<Admin>, page: web::Query<Pagination>) -> HttpResponse {
    HttpResponse::Ok().json(page.slice(admin.control.sources()))
}

/// Adds a camera: pulled at once (or with its first viewer when
/// `on_demand`) and kept across restarts. The answer shows the URL
/// without its credentials.
#[utoipa::path(post, path = "/api/v1/sources", tag = "sources", request_body = NewSource,
    responses((status = 201, body = SourceInfo), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn add(
    admin: web::Data<Admin>,
    principal: Principal,
    body: web::Json<NewSource>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let info = admin.control.add_source(&body)?;
    if let Err(err) = admin.store.add_source(&body) {
        // A source that would silently vanish at restart is worse than a
        // refused request.
        let _ = admin.control.remove_source(&info.stream);
        return Err(err.into());
    }
    admin.audit(
        &principal.actor(),
        &req,
        "source_add",
        Some(&info.stream),
        Some(&info.url),
    );
    Ok(HttpResponse::Created().json(info))
}

/// Removes a camera added over the API: its stream ends (sources from the
/// configuration file cannot be removed here).
#[utoipa::path(delete, path = "/api/v1/sources/{stream}", tag = "sources",
    params(("stream" = String, Path, description = "the source's stream")),
    responses((status = 204, description = "removed"), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn remove(
    admin: web::Data<Admin>,
    principal: Principal,
    stream: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin.control.remove_source(&stream)?;
    admin.store.remove_source(&stream)?;
    admin.audit_by(&principal, &req, "source_remove", Some(&stream));
    Ok(HttpResponse::NoContent().finish())
}
