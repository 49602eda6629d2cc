//! The panel's pages: login, logout, and the one shell page every panel
//! route serves (its script renders the page for the path and talks to
//! `/api/v1`). Assets are embedded in the binary: no files beside it, no
//! CDN.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use crate::Admin;
use crate::auth::principal::{CSRF_HEADER, SESSION_COOKIE};
use crate::secret::constant_time_eq;

const LOGIN_HTML: &str = include_str!("../assets/login.html");
const ADMIN_HTML: &str = include_str!("../assets/admin.html");
const ADMIN_JS: &str = include_str!("../assets/admin.js");
const ADMIN_CSS: &str = include_str!("../assets/admin.css");

/// The panel's pages load only their own scripts and styles (none are
/// inline), so an injected `<script>` would not run.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; media-src 'self' blob:; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/login", web::get().to(login_page))
        .route("/admin/login", web::post().to(login))
        .route("/admin/logout", web::post().to(logout))
        .route(
            "/admin/assets/admin.js",
            web::get().to(|| asset(ADMIN_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/admin/assets/admin.css",
            web::get().to(|| asset(ADMIN_CSS, "text/css; charset=utf-8")),
        )
        .route("/admin", web::get().to(|| async { see_other("/admin/") }))
        .route("/admin/{tail:.*}", web::get().to(shell));
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

fn html(body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        // The panel must not be framed by another site (clickjacking).
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .body(body)
}

async fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

fn logged_in(admin: &Admin, req: &HttpRequest) -> bool {
    req.cookie(SESSION_COOKIE)
        .is_some_and(|c| admin.sessions.touch(c.value()).is_some())
}

/// Every panel page: the shell for a session, the login page otherwise.
async fn shell(admin: web::Data<Admin>, req: HttpRequest) -> HttpResponse {
    if logged_in(&admin, &req) {
        return html(ADMIN_HTML);
    }
    let next = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/admin/");
    see_other(&format!("/admin/login?next={}", url_encode(next)))
}

async fn login_page(admin: web::Data<Admin>, req: HttpRequest) -> HttpResponse {
    if logged_in(&admin, &req) {
        return see_other("/admin/");
    }
    html(LOGIN_HTML)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    password: String,
    #[serde(default)]
    next: String,
}

/// Where to go after logging in: only a panel path, so the login form is
/// no open redirect.
fn safe_next(next: &str) -> &str {
    if next.starts_with("/admin/") && !next.starts_with("/admin//") && !next.contains('\\') {
        next
    } else {
        "/admin/"
    }
}

/// Whether a form post comes from our own pages. SameSite=Strict protects
/// requests that carry the session cookie; the login form has no session
/// yet, so its origin is checked instead (browsers always send `Origin` on
/// a cross-site POST).
fn same_origin(req: &HttpRequest) -> bool {
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let host = req.connection_info().host().to_owned();
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(&host))
}

async fn login(
    admin: web::Data<Admin>,
    req: HttpRequest,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    if !same_origin(&req) {
        return HttpResponse::Forbidden().body("cross-site login refused\n");
    }
    let ip = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    if let Err(wait) = admin.limiter.check(ip) {
        admin.audit(
            "anonymous",
            &req,
            "login_refused",
            None,
            Some("rate limited"),
        );
        return HttpResponse::TooManyRequests()
            .insert_header((header::RETRY_AFTER, wait.as_secs().max(1).to_string()))
            .content_type("text/html; charset=utf-8")
            .body(format!(
                "<!doctype html><meta charset=utf-8><title>Too many attempts</title>\
                 <p>Too many failed logins from this address. Try again in {} s. \
                 <a href=\"/admin/login?error=rate\">Back</a></p>",
                wait.as_secs().max(1)
            ));
    }
    let stored = admin
        .store
        .setting(crate::store::settings::ADMIN_PASSWORD_HASH)
        .ok()
        .flatten()
        .unwrap_or_default();
    let password = form.password.clone();
    // argon2 takes tens of milliseconds by design: off the HTTP worker.
    let ok = web::block(move || crate::auth::password::verify(&password, &stored))
        .await
        .unwrap_or(false);
    let next = safe_next(&form.next).to_owned();
    if !ok {
        admin.limiter.failed(ip);
        admin.audit("anonymous", &req, "login_failed", None, None);
        return see_other(&format!(
            "/admin/login?error=invalid&next={}",
            url_encode(&next)
        ));
    }
    admin.limiter.succeeded(ip);
    let cookie_value = admin.sessions.create(crate::client_address(&req));
    admin.audit("admin", &req, "login", None, None);
    let cookie = Cookie::build(SESSION_COOKIE, cookie_value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(admin.config.secure_cookies)
        .finish();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, next))
        .cookie(cookie)
        .finish()
}

#[derive(Debug, Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    admin: web::Data<Admin>,
    req: HttpRequest,
    form: Option<web::Form<LogoutForm>>,
) -> HttpResponse {
    let Some(cookie) = req.cookie(SESSION_COOKIE) else {
        return see_other("/admin/login");
    };
    let Some(session) = admin.sessions.touch(cookie.value()) else {
        return see_other("/admin/login");
    };
    let presented = req
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| form.map(|f| f.into_inner().csrf))
        .unwrap_or_default();
    if !constant_time_eq(presented.as_bytes(), session.csrf.as_bytes()) {
        return actix_web::ResponseError::error_response(&crate::error::ApiError::csrf());
    }
    admin.sessions.remove(cookie.value());
    admin.audit("admin", &req, "logout", None, None);
    let mut gone = Cookie::build(SESSION_COOKIE, "")
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(admin.config.secure_cookies)
        .finish();
    gone.make_removal();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/admin/login"))
        .cookie(gone)
        .finish()
}

/// Percent-encodes a query parameter value.
fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_only_a_panel_path() {
        assert_eq!(safe_next("/admin/streams/cam"), "/admin/streams/cam");
        assert_eq!(safe_next("https://evil.example/"), "/admin/");
        assert_eq!(safe_next("//evil.example/admin/"), "/admin/");
        assert_eq!(safe_next("/admin//evil.example"), "/admin/");
        assert_eq!(url_encode("/admin/x?a=b"), "/admin/x%3Fa%3Db");
    }
}
