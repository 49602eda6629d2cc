//! Who sent a request: a panel session (cookie + CSRF token) or a bearer
//! token (made in the panel, or the one set at start).

use actix_web::HttpRequest;
use actix_web::http::{Method, header};

use crate::Admin;
use crate::error::ApiError;
use crate::secret::constant_time_eq;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "whipcord_admin";
/// The header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The admin, through a panel session.
    Admin { csrf: String },
    /// An API token from the database.
    Token { id: i64, name: String },
    /// The token set with `--api-token` / `WHIPCORD_API_TOKEN`.
    ConfiguredToken,
}

impl Principal {
    /// How the audit log names the caller.
    pub fn actor(&self) -> String {
        match self {
            Self::Admin { .. } => "admin".into(),
            Self::Token { id, name } => format!("token:{id}:{name}"),
            Self::ConfiguredToken => "configured-token".into(),
        }
    }
}

/// Extracts `Authorization: Bearer …`.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    bearer_token(
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Methods that change state and so need CSRF protection under a cookie.
pub fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Works out who sent `req`. A bearer token wins over a cookie; a cookie
/// session must echo its CSRF token on state-changing requests.
pub fn authenticate(admin: &Admin, req: &HttpRequest) -> Result<Principal, ApiError> {
    if let Some(presented) = bearer(req) {
        if let Some(want) = admin.config.api_token.as_deref()
            && constant_time_eq(want.as_bytes(), presented.as_bytes())
        {
            return Ok(Principal::ConfiguredToken);
        }
        return match admin.store.check_token(presented)? {
            Some(token) => Ok(Principal::Token {
                id: token.id,
                name: token.name,
            }),
            None => Err(ApiError::unauthorized("invalid or revoked API token")),
        };
    }
    let Some(cookie) = req.cookie(SESSION_COOKIE) else {
        return Err(ApiError::unauthorized(
            "log in to the panel or send Authorization: Bearer <API token>",
        ));
    };
    let Some(session) = admin.sessions.touch(cookie.value()) else {
        return Err(ApiError::unauthorized("session expired; log in again"));
    };
    if is_state_changing(req.method()) {
        let presented = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), session.csrf.as_bytes()) {
            return Err(ApiError::csrf());
        }
    }
    Ok(Principal::Admin { csrf: session.csrf })
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn parses_bearer() {
        assert_eq!(bearer_token(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), None);
        assert_eq!(bearer_token(Some("Bearer ")), None);
        assert_eq!(bearer_token(None), None);
    }
}
