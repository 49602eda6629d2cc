//! Talking to the admin panel and `/api/v1` as a browser or a script does:
//! log in with the admin password (session cookie + CSRF token), or send a
//! bearer token; check the API's one error shape.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::Reply;
use crate::gateway::{Gateway, GatewayOptions};

/// The admin password the tests start gateways with.
pub const PASSWORD: &str = "correct horse battery staple";
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "whipcord_admin";
/// The header a session's state-changing requests must carry.
pub const CSRF_HEADER: &str = "X-CSRF-Token";

/// Options for a gateway with [`PASSWORD`] as its admin password.
pub fn options() -> GatewayOptions {
    GatewayOptions::default()
        .arg("--admin-password")
        .arg(PASSWORD)
}

/// How a request authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    /// A panel session: its cookie value and CSRF token.
    Session {
        cookie: String,
        csrf: String,
    },
    Bearer(String),
}

/// An HTTP client for the panel and the API that never follows redirects
/// (the panel's answers are 303s worth checking).
#[derive(Clone)]
pub struct Client {
    base: String,
    client: reqwest::Client,
    pub auth: Auth,
}

impl Client {
    pub fn new(gw: &Gateway, auth: Auth) -> Self {
        Self {
            base: gw.base_url(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(20))
                .build()
                .expect("reqwest client"),
            auth,
        }
    }

    pub fn anonymous(gw: &Gateway) -> Self {
        Self::new(gw, Auth::None)
    }

    pub fn bearer(gw: &Gateway, token: &str) -> Self {
        Self::new(gw, Auth::Bearer(token.to_owned()))
    }

    /// Logs in with `password`; the session's CSRF token comes from
    /// `GET /api/v1/session`.
    pub async fn login(gw: &Gateway, password: &str) -> Result<Self> {
        let anonymous = Self::anonymous(gw);
        let reply = anonymous.post_login(password, "/admin/").await?;
        ensure!(
            reply.status == 303,
            "login answered {}: {}",
            reply.status,
            text(&reply)
        );
        let cookie = session_cookie(&reply)
            .with_context(|| format!("login set no session cookie: {:?}", reply.headers))?
            .value;
        let mut session = Self::new(
            gw,
            Auth::Session {
                cookie,
                csrf: String::new(),
            },
        );
        let info = expect_json(session.get("/api/v1/session").await?, 200)?;
        let csrf = info["csrf"]
            .as_str()
            .filter(|c| !c.is_empty())
            .with_context(|| format!("no csrf in {info}"))?
            .to_owned();
        if let Auth::Session { csrf: slot, .. } = &mut session.auth {
            *slot = csrf;
        }
        Ok(session)
    }

    /// `POST /admin/login` as the login form sends it.
    pub async fn post_login(&self, password: &str, next: &str) -> Result<Reply> {
        let body = format!(
            "password={}&next={}",
            form_encode(password),
            form_encode(next)
        );
        self.raw(
            Method::POST,
            "/admin/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.into_bytes(),
        )
        .await
    }

    /// The session's CSRF token (empty for other kinds of auth).
    pub fn csrf(&self) -> &str {
        match &self.auth {
            Auth::Session { csrf, .. } => csrf,
            _ => "",
        }
    }

    /// A request with this client's credentials (cookie or bearer) and
    /// `headers`, but no CSRF token unless `headers` has one.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .body(body);
        match &self.auth {
            Auth::None => {}
            Auth::Session { cookie, .. } => {
                req = req.header("Cookie", format!("{SESSION_COOKIE}={cookie}"));
            }
            Auth::Bearer(token) => {
                req = req.header("Authorization", format!("Bearer {token}"));
            }
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.bytes().await?.to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.raw(Method::GET, path, &[], Vec::new()).await
    }

    /// A request as the panel's script makes it: with the CSRF token of a
    /// session, and `body` as JSON.
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Reply> {
        let csrf = self.csrf().to_owned();
        let mut headers = Vec::new();
        if !csrf.is_empty() {
            headers.push((CSRF_HEADER, csrf.as_str()));
        }
        let bytes = match body {
            Some(body) => {
                headers.push(("Content-Type", "application/json"));
                body.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        self.raw(method, path, &headers, bytes).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Reply> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Reply> {
        self.send(Method::DELETE, path, None).await
    }

    /// `POST /api/v1/tokens`: the new token's id and secret.
    pub async fn create_token(&self, name: &str) -> Result<(i64, String)> {
        let created = expect_json(
            self.post("/api/v1/tokens", &json!({"name": name})).await?,
            201,
        )?;
        let id = created["token"]["id"]
            .as_i64()
            .with_context(|| format!("no token.id in {created}"))?;
        let secret = created["secret"]
            .as_str()
            .with_context(|| format!("no secret in {created}"))?;
        Ok((id, secret.to_owned()))
    }

    /// `POST /api/v1/keys`: the new stream key's id and secret.
    pub async fn create_key(&self, pattern: &str, action: &str) -> Result<(i64, String)> {
        let body = json!({"name": format!("{action} {pattern}"), "stream_pattern": pattern, "action": action});
        let created = expect_json(self.post("/api/v1/keys", &body).await?, 201)?;
        let id = created["key"]["id"]
            .as_i64()
            .with_context(|| format!("no key.id in {created}"))?;
        let secret = created["secret"]
            .as_str()
            .with_context(|| format!("no secret in {created}"))?;
        Ok((id, secret.to_owned()))
    }

    /// The `items` of a listing that answered 200.
    pub async fn items(&self, path: &str) -> Result<Vec<Value>> {
        let body = expect_json(self.get(path).await?, 200)?;
        body["items"]
            .as_array()
            .cloned()
            .with_context(|| format!("GET {path}: no items array in {body}"))
    }

    /// The live stream `name` from `GET /api/v1/streams`, if listed.
    pub async fn stream(&self, name: &str) -> Result<Option<Value>> {
        Ok(self
            .items("/api/v1/streams")
            .await?
            .into_iter()
            .find(|s| s["name"] == name))
    }

    /// Polls `GET /api/v1/streams` until `name` satisfies `pred` (`None`:
    /// not listed), for at most `limit`; returns what it last saw.
    pub async fn wait_stream(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        pred: impl Fn(Option<&Value>) -> bool,
    ) -> Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let stream = self.stream(name).await?;
            if pred(stream.as_ref()) {
                return Ok(stream);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("stream {name} did not become {what} within {limit:?}; last: {stream:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The audit log's entries (newest first).
    pub async fn audit(&self) -> Result<Vec<Value>> {
        self.items("/api/v1/audit?per_page=500").await
    }
}

/// The body as text, for messages.
pub fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The body as JSON, once the status is `status`.
pub fn expect_json(reply: Reply, status: u16) -> Result<Value> {
    ensure!(
        reply.status == status,
        "expected {status}, got {}: {}",
        reply.status,
        text(&reply)
    );
    reply.json()
}

/// Checks the API's error shape, `{"error": {"code", "message"}}` with
/// nothing else, for `status` and `code`.
pub fn expect_error(reply: &Reply, status: u16, code: &str) -> Result<()> {
    ensure!(
        reply.status == status,
        "expected {status} {code}, got {}: {}",
        reply.status,
        text(reply)
    );
    let content_type = reply.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("application/json"),
        "error with Content-Type {content_type:?}: {}",
        text(reply)
    );
    let body = reply.json()?;
    let object = body.as_object().context("error body is not an object")?;
    let error = body["error"]
        .as_object()
        .with_context(|| format!("no error object: {body}"))?;
    ensure!(
        object.len() == 1 && error.len() == 2,
        "extra fields in the error shape: {body}"
    );
    ensure!(
        body["error"]["code"] == code,
        "error code is not {code:?}: {body}"
    );
    ensure!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no error message: {body}"
    );
    Ok(())
}

/// A `Set-Cookie` header, split up.
#[derive(Debug, Clone)]
pub struct SetCookie {
    pub value: String,
    /// Attributes as sent (`HttpOnly`, `SameSite=Strict`, `Path=/`…).
    pub attributes: Vec<String>,
}

impl SetCookie {
    /// Whether the attribute `name` (`HttpOnly`, or `SameSite=Strict` with
    /// its value) is set, ignoring case as browsers do.
    pub fn has(&self, name: &str) -> bool {
        self.attributes.iter().any(|a| a.eq_ignore_ascii_case(name))
    }

    /// Whether an attribute named `name` (any value) is set.
    pub fn has_named(&self, name: &str) -> bool {
        self.attributes.iter().any(|a| {
            a.split('=')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
        })
    }
}

/// The session cookie a reply sets, if it does.
pub fn session_cookie(reply: &Reply) -> Option<SetCookie> {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|header| {
            let mut parts = header.split(';').map(str::trim);
            let value = parts
                .next()?
                .strip_prefix(SESSION_COOKIE)?
                .strip_prefix('=')?;
            Some(SetCookie {
                value: value.to_owned(),
                attributes: parts.map(str::to_owned).collect(),
            })
        })
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Undoes `%XX` escapes (of a query parameter value).
pub fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
