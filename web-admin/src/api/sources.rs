//! RTSP sources (cameras) the gateway pulls: their state.

use actix_web::{HttpResponse, web};

use super::{Page, Pagination};
use crate::Admin;
use crate::control::SourceInfo;
use crate::error::ErrorBody;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/sources", web::get().to(list));
}

/// RTSP sources with their connection state and last error.
#[utoipa::path(get, path = "/api/v1/sources", tag = "sources",
    params(Pagination),
    responses((status = 200, body = Page<SourceInfo>), (status = 401, body = ErrorBody)))]
pub async fn list(admin: web::Data<Admin>, page: web::Query<Pagination>) -> HttpResponse {
    HttpResponse::Ok().json(page.slice(admin.control.sources()))
}
