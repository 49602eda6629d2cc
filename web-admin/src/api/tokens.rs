//! API tokens made in the panel.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Page, Pagination};
use crate::Admin;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::store::TokenInfo;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/tokens", web::get().to(list))
        .route("/tokens", web::post().to(create))
        .route("/tokens/{id}", web::delete().to(revoke));
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct NewToken {
    /// What the token is for, e.g. `backup script`.
    pub name: String,
}

/// A new token and its secret, which is shown only this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    pub token: TokenInfo,
    /// Send as `Authorization: Bearer <secret>`.
    pub secret: String,
}

/// API tokens, newest first (secrets are never listed).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", params(Pagination),
    responses((status = 200, body = Page<TokenInfo>), (status = 401, body = ErrorBody)))]
pub async fn list(
    admin: web::Data<Admin>,
    page: web::Query<Pagination>,
) -> Result<HttpResponse, ApiError> {
    let (tokens, total) = admin.store.tokens(page.per_page(), page.offset())?;
    Ok(HttpResponse::Ok().json(page.wrap(tokens, total)))
}

/// Creates an API token.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    admin: web::Data<Admin>,
    principal: Principal,
    body: web::Json<NewToken>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::bad_request("name: 1 to 200 characters"));
    }
    let (token, secret) = admin.store.create_token(name)?;
    admin.audit(
        &principal.actor(),
        &req,
        "token_create",
        Some(&token.id.to_string()),
        Some(name),
    );
    Ok(HttpResponse::Created().json(CreatedToken { token, secret }))
}

/// Revokes an API token.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = i64, Path, description = "token id")),
    responses((status = 204, description = "revoked"), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    admin: web::Data<Admin>,
    principal: Principal,
    id: web::Path<i64>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if !admin.store.revoke_token(*id)? {
        return Err(ApiError::not_found("live token"));
    }
    admin.audit_by(&principal, &req, "token_revoke", Some(&id.to_string()));
    Ok(HttpResponse::NoContent().finish())
}
