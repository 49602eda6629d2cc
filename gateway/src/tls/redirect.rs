//! `--http-redirect-listen`: a plain-HTTP listener that sends every request
//! to the same host and path on the HTTPS port (308 keeps the method and
//! body, so a WHIP POST to the old URL lands on the new one).

use std::net::SocketAddr;

use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

/// Builds and binds the redirect server; the caller runs it.
pub fn server(listen: SocketAddr, https_port: u16) -> std::io::Result<actix_web::dev::Server> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(HttpsPort(https_port)))
            .default_service(web::to(redirect))
    })
    .workers(1)
    .shutdown_timeout(1)
    .disable_signals()
    .bind(listen)?
    .run();
    Ok(server)
}

struct HttpsPort(u16);

async fn redirect(req: HttpRequest, port: web::Data<HttpsPort>) -> HttpResponse {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    match host.and_then(|host| location(host, path, port.0)) {
        Some(location) => HttpResponse::PermanentRedirect()
            .insert_header((header::LOCATION, location))
            .finish(),
        None => {
            HttpResponse::BadRequest().body("a valid Host header is needed to redirect to HTTPS\n")
        }
    }
}

/// `https://{host}[:{port}]{path}` for a `Host` header value, or `None`
/// when the host is not a plain name or address (nothing a client sent
/// can smuggle another URL into the Location header).
pub fn location(host: &str, path_and_query: &str, https_port: u16) -> Option<String> {
    let name = host_without_port(host.trim())?;
    let valid = if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if !valid {
        return None;
    }
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    Some(if https_port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{https_port}{path}")
    })
}

/// `example.org:80` → `example.org`, `[::1]:80` → `[::1]`.
fn host_without_port(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        let end = host.find(']')?;
        let rest = &host[end + 1..];
        if rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port) {
            return Some(&host[..=end]);
        }
        return None;
    }
    match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) => Some(name),
        Some(_) => None,
        None => Some(host),
    }
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_to_the_https_port_keeping_host_path_and_query() {
        assert_eq!(
            location("example.org:8081", "/whip/cam?x=1", 8443).as_deref(),
            Some("https://example.org:8443/whip/cam?x=1")
        );
        assert_eq!(
            location("Example.org", "/", 443).as_deref(),
            Some("https://Example.org/")
        );
        assert_eq!(
            location("[::1]:80", "/watch/a", 8443).as_deref(),
            Some("https://[::1]:8443/watch/a")
        );
        assert_eq!(
            location("127.0.0.1", "/", 8443).as_deref(),
            Some("https://127.0.0.1:8443/")
        );
    }

    #[test]
    fn refuses_hosts_that_are_not_names() {
        for bad in [
            "",
            "evil.org/x",
            "a@b",
            "x:y",
            "[::1",
            "[nope]",
            "host:99999999",
            "a b",
        ] {
            assert_eq!(location(bad, "/", 8443), None, "{bad:?}");
        }
    }

    #[actix_web::test]
    async fn answers_308_with_the_location() {
        use actix_web::test;
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(HttpsPort(8443)))
                .default_service(web::to(redirect)),
        )
        .await;
        let req = test::TestRequest::post()
            .uri("/whip/cam")
            .insert_header((header::HOST, "gw.example:8080"))
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status(), 308);
        assert_eq!(
            res.headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok()),
            Some("https://gw.example:8443/whip/cam")
        );
    }
}
