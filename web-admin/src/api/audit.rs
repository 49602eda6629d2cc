//! The audit log.

use actix_web::{HttpResponse, web};

use super::{Page, Pagination};
use crate::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::store::AuditEntry;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/audit", web::get().to(list));
}

/// Admin actions, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(Pagination),
    responses((status = 200, body = Page<AuditEntry>), (status = 401, body = ErrorBody)))]
pub async fn list(
    admin: web::Data<Admin>,
    page: web::Query<Pagination>,
) -> Result<HttpResponse, ApiError> {
    let (entries, total) = admin.store.audit_entries(page.per_page(), page.offset())?;
    Ok(HttpResponse::Ok().json(page.wrap(entries, total)))
}
