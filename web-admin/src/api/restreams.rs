//! Restream targets: list, add, remove, retry.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{Page, Pagination};
use crate::Admin;
use crate::auth::Principal;
use crate::control::{NewRestream, RestreamInfo};
use crate::error::{ApiError, ErrorBody};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/restreams", web::get().to(list))
        .route("/restreams", web::post().to(add))
        .route("/restreams/{id}", web::delete().to(remove))
        .route("/restreams/{id}/retry", web::post().to(retry));
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RestreamFilter {
    /// Only this stream's targets.
    pub stream: Option<String>,
}

/// Restream targets with their live status.
#[utoipa::path(get, path = "/api/v1/restreams", tag = "restreams",
    params(RestreamFilter, Pagination),
    responses((status = 200, body = Page<RestreamInfo>), (status = 401, body = ErrorBody)))]
pub async fn list(
    admin: web::Data<Admin>,
    filter: web::Query<RestreamFilter>,
    page: web::Query<Pagination>,
) -> HttpResponse {
    let targets = admin.control.restreams(filter.stream.as_deref());
    HttpResponse::Ok().json(page.slice(targets))
}

/// Adds a target; it goes live with the stream (at once if it is live)
/// and is kept across restarts.
#[utoipa::path(post, path = "/api/v1/restreams", tag = "restreams", request_body = NewRestream,
    responses((status = 201, body = RestreamInfo), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn add(
    admin: web::Data<Admin>,
    principal: Principal,
    body: web::Json<NewRestream>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let info = admin.control.add_restream(&body).await?;
    match admin.store.add_restream(&body) {
        Ok(row) => {
            admin
                .stored_restreams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(info.id, row);
        }
        Err(err) => {
            // A target that would silently vanish at restart is worse than
            // a refused request.
            let _ = admin.control.remove_restream(info.id);
            return Err(err.into());
        }
    }
    admin.audit(
        &principal.actor(),
        &req,
        "restream_add",
        Some(&info.stream),
        Some(&info.url),
    );
    Ok(HttpResponse::Created().json(info))
}

/// Removes a target (targets from the configuration file cannot be).
#[utoipa::path(delete, path = "/api/v1/restreams/{id}", tag = "restreams",
    params(("id" = u64, Path, description = "target id")),
    responses((status = 204, description = "removed"), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn remove(
    admin: web::Data<Admin>,
    principal: Principal,
    id: web::Path<u64>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin.control.remove_restream(*id)?;
    let row = admin
        .stored_restreams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    if let Some(row) = row {
        admin.store.remove_restream(row)?;
    }
    admin.audit_by(&principal, &req, "restream_remove", Some(&id.to_string()));
    Ok(HttpResponse::NoContent().finish())
}

/// Reconnects a target now instead of waiting out its backoff.
#[utoipa::path(post, path = "/api/v1/restreams/{id}/retry", tag = "restreams",
    params(("id" = u64, Path, description = "target id")),
    responses((status = 204, description = "reconnecting"), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn retry(
    admin: web::Data<Admin>,
    principal: Principal,
    id: web::Path<u64>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin.control.retry_restream(*id)?;
    admin.audit_by(&principal, &req, "restream_retry", Some(&id.to_string()));
    Ok(HttpResponse::NoContent().finish())
}
