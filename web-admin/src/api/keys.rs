//! Stream keys: publish and watch tokens for a stream or a name pattern.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Page, Pagination};
use crate::Admin;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::store::{KeyInfo, NewKey};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/keys", web::get().to(list))
        .route("/keys", web::post().to(create))
        .route("/keys/{id}", web::delete().to(revoke));
}

/// A new key and its secret, which is shown only this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    pub key: KeyInfo,
    /// The token to publish or watch with (`Authorization: Bearer`).
    pub secret: String,
}

/// Stream keys, newest first (secrets are never listed).
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", params(Pagination),
    responses((status = 200, body = Page<KeyInfo>), (status = 401, body = ErrorBody)))]
pub async fn list(
    admin: web::Data<Admin>,
    page: web::Query<Pagination>,
) -> Result<HttpResponse, ApiError> {
    let (keys, total) = admin.store.keys(page.per_page(), page.offset())?;
    Ok(HttpResponse::Ok().json(page.wrap(keys, total)))
}

/// Longest accepted key name and pattern.
const MAX_TEXT: usize = 200;

/// Creates a key. Once a live publish (watch) key covers a stream, that
/// stream takes only keys or the configured token for publishing
/// (watching).
#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", request_body = NewKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    admin: web::Data<Admin>,
    principal: Principal,
    body: web::Json<NewKey>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let pattern = body.stream_pattern.trim();
    if pattern.is_empty()
        || pattern.len() > MAX_TEXT
        || body.name.len() > MAX_TEXT
        || !pattern
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.*?".contains(c))
    {
        return Err(ApiError::bad_request(
            "stream_pattern: a stream name, or a pattern of letters, digits, - _ . with * and ?",
        ));
    }
    let new = NewKey {
        stream_pattern: pattern.to_owned(),
        ..body.into_inner()
    };
    let (key, secret) = admin.store.create_key(&new)?;
    admin.audit(
        &principal.actor(),
        &req,
        "key_create",
        Some(&key.id.to_string()),
        Some(&format!("{} {}", key.action.as_str(), key.stream_pattern)),
    );
    Ok(HttpResponse::Created().json(CreatedKey { key, secret }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RevokeQuery {
    /// Also end the live sessions that authenticated with this key.
    pub end_sessions: Option<bool>,
}

/// Revokes a key: new sessions with it are refused at once.
#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys",
    params(("id" = i64, Path, description = "key id"), RevokeQuery),
    responses((status = 204, description = "revoked"), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    admin: web::Data<Admin>,
    principal: Principal,
    id: web::Path<i64>,
    query: web::Query<RevokeQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if admin.store.key(*id)?.is_none() {
        return Err(ApiError::not_found("key"));
    }
    admin.store.revoke_key(*id)?;
    let mut detail = None;
    if query.end_sessions == Some(true) {
        let ended = admin.control.end_sessions_with_key(*id).await?;
        detail = Some(format!("ended {ended} session(s)"));
    }
    admin.audit(
        &principal.actor(),
        &req,
        "key_revoke",
        Some(&id.to_string()),
        detail.as_deref(),
    );
    Ok(HttpResponse::NoContent().finish())
}
