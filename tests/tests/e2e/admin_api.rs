//! The admin panel's backend and the REST API `/api/v1`, end to end
//! against the real binary: who may call what (panel sessions with their
//! CSRF token, API tokens, the token set at start), login rate limiting,
//! the OpenAPI document, `/metrics`, and the live controls (viewers,
//! publishers, stream keys, recordings) with real WebRTC peers.
//!
//! The OpenAPI document and the metrics text are checked with reference
//! implementations in Python (`scripts/pyenv.sh` sets them up).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use reqwest::Method;
use serde_json::{Value, json};
use whipcord_tests::admin::{
    self, Auth, CSRF_HEADER, Client, expect_error, expect_json, percent_decode, session_cookie,
    text,
};
use whipcord_tests::client::{PublishOptions, Publisher, Viewer, WatchOptions};
use whipcord_tests::gateway::Gateway;
use whipcord_tests::python;
use whipcord_tests::synth::VideoCodec;

/// The panel's pages; each needs a session.
const PANEL_PAGES: [&str; 6] = [
    "/admin/",
    "/admin/streams/x",
    "/admin/recordings",
    "/admin/keys",
    "/admin/tokens",
    "/admin/audit",
];

/// The token given with `--api-token`.
const CONFIGURED_TOKEN: &str = "configured-api-token-0123456789";
const METRICS_TOKEN: &str = "metrics-token-0123456789";
/// What OBS sends, so `software` has something to recognise.
const OBS_USER_AGENT: &str = "Mozilla/5.0 (OBS-Studio/31.0.2; Linux x86_64)";

/// The counters that must grow while media flows in and out.
const MEDIA_COUNTERS: [&str; 4] = [
    "whipcord_packets_received_total",
    "whipcord_bytes_received_total",
    "whipcord_packets_sent_total",
    "whipcord_bytes_sent_total",
];

/// Validates `sys.argv[1]` as an OpenAPI 3.1 document.
const VALIDATE_OPENAPI: &str = r#"
import json, sys
from openapi_spec_validator import OpenAPIV31SpecValidator
with open(sys.argv[1]) as f:
    doc = json.load(f)
version = str(doc.get("openapi", ""))
if not version.startswith("3.1"):
    sys.exit("openapi is %r, not 3.1.x" % version)
errors = list(OpenAPIV31SpecValidator(doc).iter_errors())
for error in errors:
    print("%s: %s" % (type(error).__name__, str(error).splitlines()[0]), file=sys.stderr)
if errors:
    sys.exit("%d error(s)" % len(errors))
print("valid")
"#;

/// Parses `sys.argv[1]` with Prometheus' own parser; prints its samples.
const PARSE_METRICS: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
with open(sys.argv[1]) as f:
    text = f.read()
samples = []
for family in text_string_to_metric_families(text):
    for s in family.samples:
        samples.append({"type": family.type, "name": s.name,
                        "labels": s.labels, "value": s.value})
print(json.dumps(samples))
"#;

/// Publishes synthetic H264 and Opus as `stream`; a refusal is an error
/// naming the status.
async fn publish(base: &str, stream: &str, token: Option<&str>) -> Result<Publisher> {
    let limit = Duration::from_secs(20);
    let options = PublishOptions {
        token: token.map(str::to_owned),
        ..PublishOptions::default()
    };
    tokio::time::timeout(limit, Publisher::connect(base, stream, options))
        .await
        .with_context(|| format!("publishing {stream} took over {limit:?}"))?
}

/// Prints the gateway's log when a test failed: a returned error does not
/// unwind, so `Gateway`'s drop does not print it.
fn with_log(gw: &Gateway, result: Result<()>) -> Result<()> {
    if result.is_err() {
        eprintln!("---- gateway log ----\n{}", gw.log());
    }
    result
}

/// A path of the OpenAPI document with plausible values in its
/// parameters.
fn fill_path_parameters(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push_str(match &rest[open + 1..open + close] {
            "name" => "cam",
            "session" => "0123456789abcdef",
            "action" => "start",
            _ => "1",
        });
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Where a 303 points.
fn location(reply: &whipcord_tests::api::Reply) -> &str {
    reply.header("location").unwrap_or_default()
}

/// The error of a publish attempt the gateway was to refuse with `status`.
fn expect_refused<T>(attempt: Result<T>, status: u16, what: &str) -> Result<()> {
    match attempt {
        Ok(_) => bail!("{what}: publishing was accepted"),
        Err(err) => {
            let message = format!("{err:#}");
            ensure!(
                message.contains(&format!("answered {status}")),
                "{what}: expected a {status}, got: {message}"
            );
            Ok(())
        }
    }
}

/// Whether the audit log has an entry for `action` (on `target`, if
/// given) by `actor`.
fn audited(log: &[Value], actor: &str, action: &str, target: Option<&str>) -> bool {
    log.iter().any(|e| {
        e["actor"] == actor
            && e["action"] == action
            && target.is_none_or(|t| e["target"].as_str() == Some(t))
    })
}

// ---------------------------------------------------------------------------
// Nothing without credentials; the OpenAPI document and its docs page.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_is_valid_and_every_route_needs_credentials() -> Result<()> {
    // No interpreter is a failure, found before the slow part.
    python::interpreter()?;
    let gw = Gateway::start_with(admin::options()).await?;
    with_log(
        &gw,
        openapi_is_valid_and_every_route_needs_credentials_checks(&gw).await,
    )
}

async fn openapi_is_valid_and_every_route_needs_credentials_checks(gw: &Gateway) -> Result<()> {
    let anonymous = Client::anonymous(gw);

    for page in PANEL_PAGES {
        let reply = anonymous.get(page).await?;
        ensure!(reply.status == 303, "GET {page}: {}", reply.status);
        let next = location(&reply)
            .strip_prefix("/admin/login?next=")
            .with_context(|| format!("GET {page} sent to {:?}", location(&reply)))?;
        ensure!(
            percent_decode(next) == page,
            "GET {page}: next={next} does not lead back"
        );
    }

    let reply = anonymous.get("/api/v1/openapi.json").await?;
    ensure!(reply.status == 200, "openapi.json: {}", reply.status);
    let doc = reply.json()?;

    let docs = anonymous.get("/api/v1/docs").await?;
    ensure!(docs.status == 200, "docs page: {}", docs.status);
    let content_type = docs.header("content-type").unwrap_or_default();
    ensure!(content_type.starts_with("text/html"), "{content_type}");
    ensure!(
        text(&docs).to_ascii_lowercase().contains("<html"),
        "docs page is not HTML"
    );

    let paths = doc["paths"].as_object().context("no paths")?;
    let mut operations = Vec::new();
    for (template, item) in paths {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes())?;
                operations.push((method, fill_path_parameters(template)));
            }
        }
    }
    // The document lists the whole API, not a part of it: a few that must
    // be there, and the size of the rest.
    for (method, path) in [
        (Method::GET, "/api/v1/streams"),
        (
            Method::DELETE,
            "/api/v1/streams/cam/viewers/0123456789abcdef",
        ),
        (Method::POST, "/api/v1/streams/cam/recording/start"),
        (Method::GET, "/api/v1/recordings/1/download"),
        (Method::POST, "/api/v1/keys"),
        (Method::DELETE, "/api/v1/tokens/1"),
        (Method::GET, "/api/v1/audit"),
    ] {
        ensure!(
            operations.iter().any(|(m, p)| *m == method && p == path),
            "{method} {path} is not in the document"
        );
    }
    ensure!(
        operations.len() >= 20,
        "only {} operations",
        operations.len()
    );
    // Routes the document does not list answer the same way: the
    // authentication comes before routing.
    operations.push((Method::GET, "/api/v1/no-such-route".into()));
    operations.push((Method::POST, "/api/v1/streams/cam/no-such-thing".into()));
    operations.push((Method::PUT, "/api/v1/streams".into()));

    let forged_cookie = Client::new(
        gw,
        Auth::Session {
            cookie: "forged".into(),
            csrf: "forged".into(),
        },
    );
    let bad_bearer = Client::bearer(gw, "wct_not-a-real-token");
    for client in [&anonymous, &forged_cookie, &bad_bearer] {
        for (method, path) in &operations {
            let reply = client.send(method.clone(), path, None).await?;
            expect_error(&reply, 401, "unauthorized")
                .with_context(|| format!("{method} {path} as {:?}", client.auth))?;
            ensure!(
                reply.header("www-authenticate") == Some("Bearer"),
                "{method} {path}: no WWW-Authenticate: Bearer"
            );
        }
    }

    // Last, so that a document the validator rejects still has every
    // route checked above.
    let verdict = python::run(VALIDATE_OPENAPI, &reply.body)
        .await
        .context("openapi-spec-validator rejected /api/v1/openapi.json")?;
    ensure!(verdict.trim() == "valid", "validator said: {verdict}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Logging in, CSRF, API tokens, the old API, error shapes, logging out.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_csrf_tokens_and_logout() -> Result<()> {
    let gw = Gateway::start_with(admin::options().arg("--api-token").arg(CONFIGURED_TOKEN)).await?;
    with_log(&gw, sessions_csrf_tokens_and_logout_checks(&gw).await)
}

async fn sessions_csrf_tokens_and_logout_checks(gw: &Gateway) -> Result<()> {
    let anonymous = Client::anonymous(gw);

    let wrong = anonymous
        .post_login("not the password", "/admin/keys")
        .await?;
    ensure!(wrong.status == 303, "wrong password: {}", wrong.status);
    ensure!(
        location(&wrong).starts_with("/admin/login?error=invalid"),
        "wrong password sent to {:?}",
        location(&wrong)
    );
    ensure!(
        session_cookie(&wrong).is_none(),
        "a wrong password got a cookie"
    );

    let right = anonymous.post_login(admin::PASSWORD, "/admin/keys").await?;
    ensure!(right.status == 303, "right password: {}", right.status);
    ensure!(location(&right) == "/admin/keys", "{:?}", location(&right));
    let cookie = session_cookie(&right).context("no session cookie")?;
    ensure!(
        cookie.has("HttpOnly") && cookie.has("SameSite=Strict"),
        "cookie attributes {:?}",
        cookie.attributes
    );
    // Plain HTTP: a Secure cookie would never come back.
    ensure!(!cookie.has_named("Secure"), "{:?}", cookie.attributes);

    let fresh = Client::new(
        gw,
        Auth::Session {
            cookie: cookie.value.clone(),
            csrf: String::new(),
        },
    );
    let info = expect_json(fresh.get("/api/v1/session").await?, 200)?;
    ensure!(info["actor"] == "admin", "{info}");
    let csrf = info["csrf"]
        .as_str()
        .filter(|c| c.len() >= 16)
        .with_context(|| format!("no CSRF token: {info}"))?
        .to_owned();
    let session = Client::new(
        gw,
        Auth::Session {
            cookie: cookie.value.clone(),
            csrf: csrf.clone(),
        },
    );
    for page in PANEL_PAGES {
        let reply = session.get(page).await?;
        ensure!(
            reply.status == 200,
            "GET {page} logged in: {}",
            reply.status
        );
    }

    // State changes need the session's CSRF token.
    let body = json!({"name": "backup script"}).to_string().into_bytes();
    let json_type = ("Content-Type", "application/json");
    for (what, headers) in [
        ("no CSRF header", vec![json_type]),
        (
            "a wrong CSRF token",
            vec![json_type, (CSRF_HEADER, "wrong")],
        ),
    ] {
        let reply = session
            .raw(Method::POST, "/api/v1/tokens", &headers, body.clone())
            .await?;
        expect_error(&reply, 403, "csrf").with_context(|| format!("POST with {what}"))?;
        let reply = session
            .raw(Method::DELETE, "/api/v1/keys/1", &headers[1..], Vec::new())
            .await?;
        expect_error(&reply, 403, "csrf").with_context(|| format!("DELETE with {what}"))?;
    }
    ensure!(
        session.items("/api/v1/tokens").await?.is_empty(),
        "a refused request made a token"
    );
    let (token_id, secret) = session.create_token("backup script").await?;

    // The token: any request, no CSRF.
    let token = Client::bearer(gw, &secret);
    expect_json(token.get("/api/v1/streams").await?, 200)?;
    let me = expect_json(token.get("/api/v1/session").await?, 200)?;
    ensure!(
        me["csrf"].is_null(),
        "a bearer caller got a CSRF token: {me}"
    );
    ensure!(
        me["actor"] == format!("token:{token_id}:backup script"),
        "{me}"
    );
    let (key_id, _) = token.create_key("by-token-*", "publish").await?;

    // The secret is shown once, never listed.
    for lister in [&session, &token] {
        let reply = lister.get("/api/v1/tokens").await?;
        let listing = text(&reply);
        ensure!(
            !listing.contains(&secret) && !listing.contains("\"secret\""),
            "listing has a secret: {listing}"
        );
        let items = expect_json(reply, 200)?["items"].clone();
        ensure!(
            items
                .as_array()
                .is_some_and(|i| i.iter().any(|t| t["id"] == token_id)),
            "token {token_id} not listed: {items}"
        );
    }

    // The token set at start works on /api/v1, and state changes need no
    // CSRF there either.
    let configured = Client::bearer(gw, CONFIGURED_TOKEN);
    expect_json(configured.get("/api/v1/streams").await?, 200)?;
    configured
        .create_token("made by the configured token")
        .await?;

    // The old API takes both kinds of token.
    for (who, client) in [("configured token", &configured), ("panel token", &token)] {
        let reply = client.get("/api/recordings").await?;
        ensure!(
            reply.status == 200,
            "GET /api/recordings with the {who}: {}",
            reply.status
        );
    }
    let reply = Client::bearer(gw, "wct_not-a-real-token")
        .get("/api/recordings")
        .await?;
    ensure!(reply.status == 401, "bogus token on /api: {}", reply.status);

    // One error shape.
    let reply = session
        .raw(
            Method::POST,
            "/api/v1/keys",
            &[json_type, (CSRF_HEADER, &csrf)],
            b"{\"stream_pattern\": ".to_vec(),
        )
        .await?;
    expect_error(&reply, 400, "bad_request").context("truncated JSON")?;
    let reply = session
        .post("/api/v1/keys", &json!({"stream_pattern": "cam"}))
        .await?;
    expect_error(&reply, 400, "bad_request").context("no action")?;
    expect_error(
        &session.get("/api/v1/recordings/999999").await?,
        404,
        "not_found",
    )
    .context("GET unknown recording")?;
    expect_error(
        &session.delete("/api/v1/recordings/999999").await?,
        404,
        "not_found",
    )
    .context("DELETE unknown recording")?;
    expect_error(
        &session.delete("/api/v1/tokens/999999").await?,
        404,
        "not_found",
    )
    .context("DELETE unknown token")?;

    // Revoking a token shuts it out of both APIs at once.
    let reply = session
        .delete(&format!("/api/v1/tokens/{token_id}"))
        .await?;
    ensure!(
        reply.status == 204,
        "revoke: {} {}",
        reply.status,
        text(&reply)
    );
    expect_error(&token.get("/api/v1/streams").await?, 401, "unauthorized")
        .context("revoked token")?;
    let reply = token.get("/api/recordings").await?;
    ensure!(
        reply.status == 401,
        "revoked token on /api: {}",
        reply.status
    );
    let tokens = session.items("/api/v1/tokens").await?;
    let listed = tokens
        .iter()
        .find(|t| t["id"] == token_id)
        .context("revoked token not listed")?;
    ensure!(listed["revoked_at_ms"].is_i64(), "{listed}");

    let log = session.audit().await?;
    let token_actor = format!("token:{token_id}:backup script");
    for (actor, action, target) in [
        ("anonymous", "login_failed", None),
        ("admin", "login", None),
        ("admin", "token_create", Some(token_id.to_string())),
        (token_actor.as_str(), "key_create", Some(key_id.to_string())),
        ("admin", "token_revoke", Some(token_id.to_string())),
    ] {
        ensure!(
            audited(&log, actor, action, target.as_deref()),
            "no audit entry {actor} {action} {target:?}: {log:?}"
        );
    }

    // Logging out needs the CSRF token too, then ends the session.
    let reply = session
        .raw(Method::POST, "/admin/logout", &[], Vec::new())
        .await?;
    expect_error(&reply, 403, "csrf").context("logout without CSRF")?;
    expect_json(session.get("/api/v1/session").await?, 200).context("after refused logout")?;
    let reply = session
        .raw(
            Method::POST,
            "/admin/logout",
            &[(CSRF_HEADER, &csrf)],
            Vec::new(),
        )
        .await?;
    ensure!(reply.status == 303, "logout: {}", reply.status);
    ensure!(location(&reply) == "/admin/login", "{:?}", location(&reply));
    let cleared = session_cookie(&reply).context("logout did not clear the cookie")?;
    ensure!(cleared.value.is_empty(), "{cleared:?}");
    expect_error(&session.get("/api/v1/session").await?, 401, "unauthorized")
        .context("after logout")?;
    let reply = session.get("/admin/").await?;
    ensure!(
        reply.status == 303 && location(&reply).starts_with("/admin/login"),
        "panel after logout: {} {:?}",
        reply.status,
        location(&reply)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Login rate limiting.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_passwords_lock_the_client_out() -> Result<()> {
    let gw = Gateway::start_with(admin::options().arg("--api-token").arg(CONFIGURED_TOKEN)).await?;
    with_log(
        &gw,
        repeated_wrong_passwords_lock_the_client_out_checks(&gw).await,
    )
}

async fn repeated_wrong_passwords_lock_the_client_out_checks(gw: &Gateway) -> Result<()> {
    let anonymous = Client::anonymous(gw);
    let mut statuses = Vec::new();
    for attempt in 1..=10 {
        let reply = anonymous
            .post_login(&format!("wrong guess {attempt}"), "/admin/")
            .await?;
        match reply.status {
            303 => ensure!(
                location(&reply).starts_with("/admin/login?error=invalid"),
                "attempt {attempt} sent to {:?}",
                location(&reply)
            ),
            429 => {
                let wait: u64 = reply
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .with_context(|| {
                        format!("429 without Retry-After seconds: {:?}", reply.headers)
                    })?;
                ensure!((1..=15 * 60).contains(&wait), "Retry-After: {wait}");
            }
            other => bail!("attempt {attempt} answered {other}: {}", text(&reply)),
        }
        statuses.push(reply.status);
    }
    // A typo or two costs nothing; then every further attempt is refused.
    let first_refused = statuses
        .iter()
        .position(|s| *s == 429)
        .with_context(|| format!("never locked out: {statuses:?}"))?;
    ensure!(
        (1..=7).contains(&first_refused) && statuses[first_refused..].iter().all(|s| *s == 429),
        "statuses {statuses:?}"
    );

    // While locked, the right password is refused too.
    let reply = anonymous.post_login(admin::PASSWORD, "/admin/").await?;
    ensure!(
        reply.status == 429 && reply.header("retry-after").is_some(),
        "right password while locked: {} {:?}",
        reply.status,
        reply.headers
    );
    ensure!(session_cookie(&reply).is_none(), "locked out, yet a cookie");

    let log = Client::bearer(gw, CONFIGURED_TOKEN).audit().await?;
    let count = |action: &str| log.iter().filter(|e| e["action"] == action).count();
    ensure!(
        count("login_failed") == first_refused && count("login_refused") == 11 - first_refused,
        "audit log: {log:?}"
    );
    ensure!(count("login") == 0, "a login got through: {log:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// /metrics.

/// One scrape, parsed by prometheus_client.
struct Scrape(Vec<Value>);

impl Scrape {
    async fn take(metrics: &Client) -> Result<Self> {
        let reply = metrics.get("/metrics").await?;
        ensure!(reply.status == 200, "/metrics: {}", reply.status);
        let content_type = reply.header("content-type").unwrap_or_default();
        ensure!(
            content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
            "/metrics Content-Type {content_type}"
        );
        let parsed = python::run(PARSE_METRICS, &reply.body)
            .await
            .with_context(|| format!("parsing:\n{}", text(&reply)))?;
        let samples: Value =
            serde_json::from_str(&parsed).with_context(|| format!("parser output: {parsed}"))?;
        Ok(Self(samples.as_array().cloned().unwrap_or_default()))
    }

    /// The one unlabelled sample `name`, checked to be of `kind`.
    fn value(&self, name: &str, kind: &str) -> Result<f64> {
        let sample = self
            .0
            .iter()
            .find(|s| s["name"] == name)
            .with_context(|| format!("no {name} in {:?}", self.0))?;
        ensure!(sample["type"] == kind, "{name} is not a {kind}: {sample}");
        sample["value"]
            .as_f64()
            .with_context(|| format!("{name}: {sample}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_watched_stream() -> Result<()> {
    // No interpreter is a failure, found before the slow part.
    python::interpreter()?;
    let gw = Gateway::start_with(
        admin::options()
            .arg("--api-token")
            .arg(CONFIGURED_TOKEN)
            .arg("--metrics-token")
            .arg(METRICS_TOKEN),
    )
    .await?;
    with_log(&gw, metrics_follow_a_watched_stream_checks(&gw).await)
}

async fn metrics_follow_a_watched_stream_checks(gw: &Gateway) -> Result<()> {
    let base = gw.base_url();
    for (who, client) in [
        ("no token", Client::anonymous(gw)),
        ("a wrong token", Client::bearer(gw, "wrong")),
        ("the API token", Client::bearer(gw, CONFIGURED_TOKEN)),
    ] {
        let reply = client.get("/metrics").await?;
        ensure!(reply.status == 401, "/metrics with {who}: {}", reply.status);
    }
    let metrics = Client::bearer(gw, METRICS_TOKEN);
    let api = Client::bearer(gw, CONFIGURED_TOKEN);

    let publisher =
        Arc::new(Publisher::connect(&base, "metered", PublishOptions::default()).await?);
    let runner = publisher.spawn_run(Duration::from_secs(40), Duration::from_secs(1));
    let viewer = Viewer::connect(&base, "metered", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 5, Duration::from_secs(5)).await?;
    expect_json(api.get("/api/v1/streams").await?, 200)?;

    let first = Scrape::take(&metrics).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = Scrape::take(&metrics).await?;
    for name in MEDIA_COUNTERS {
        let (before, after) = (
            first.value(name, "counter")?,
            second.value(name, "counter")?,
        );
        ensure!(after > before, "{name} went from {before} to {after}");
    }
    ensure!(second.value("whipcord_streams", "gauge")? == 1.0);
    ensure!(second.value("whipcord_viewers", "gauge")? == 1.0);
    ensure!(
        second.0.iter().any(|s| {
            s["name"] == "whipcord_http_requests_total"
                && s["type"] == "counter"
                && s["labels"]["route"] == "/api/v1/streams"
                && s["labels"]["method"] == "GET"
                && s["labels"]["status"] == "200"
        }),
        "no whipcord_http_requests_total series for /api/v1/streams: {:?}",
        second.0
    );
    runner.abort();
    Ok(())
}

// ---------------------------------------------------------------------------
// Live streams, viewers and recordings with real peers.

fn codecs(stream: &Value) -> Vec<(String, String)> {
    stream["tracks"]
        .as_array()
        .map(|tracks| {
            tracks
                .iter()
                .map(|t| {
                    (
                        t["kind"].as_str().unwrap_or_default().to_owned(),
                        t["codec"].as_str().unwrap_or_default().to_ascii_lowercase(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls the recordings of `stream` until one satisfies `pred`.
async fn wait_recording(
    session: &Client,
    stream: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let limit = Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let items = session
            .items(&format!("/api/v1/recordings?stream={stream}"))
            .await?;
        if let Some(item) = items.iter().find(|i| pred(i)) {
            return Ok(item.clone());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no recording of {stream} became {what} within {limit:?}: {items:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_viewers_kick_and_recording_control() -> Result<()> {
    let gw = Gateway::start_with(admin::options()).await?;
    with_log(
        &gw,
        streams_viewers_kick_and_recording_control_checks(&gw).await,
    )
}

async fn streams_viewers_kick_and_recording_control_checks(gw: &Gateway) -> Result<()> {
    let session = Client::login(gw, admin::PASSWORD).await?;
    // A real, decodable clip: the recorder waits for a keyframe whose SPS
    // it can read, which the synthetic source does not have.
    let publisher = Arc::new(
        Publisher::connect(
            &gw.base_url(),
            "cam",
            PublishOptions {
                // The publisher presents itself as OBS.
                user_agent: Some(OBS_USER_AGENT.into()),
                ..PublishOptions::media(VideoCodec::H264)
            },
        )
        .await?,
    );
    let runner = publisher.spawn_run_media(Duration::from_secs(50));

    let stream = session
        .wait_stream(
            "cam",
            "listed with two tracks",
            Duration::from_secs(10),
            |s| s.is_some_and(|s| codecs(s).len() == 2),
        )
        .await?
        .context("not listed")?;
    let mut tracks = codecs(&stream);
    tracks.sort();
    ensure!(
        tracks
            == [
                ("audio".into(), "opus".into()),
                ("video".into(), "h264".into())
            ],
        "tracks {tracks:?}"
    );
    let who = &stream["publisher"];
    ensure!(who["user_agent"] == OBS_USER_AGENT, "publisher {who}");
    ensure!(who["software"] == "OBS 31.0.2", "publisher {who}");
    ensure!(who["key_id"].is_null(), "publisher {who}");
    let publisher_session = who["session"].as_str().context("no publisher session")?;
    ensure!(
        publisher
            .resource
            .ends_with(&format!("/{publisher_session}")),
        "publisher session {publisher_session} is not {}",
        publisher.resource
    );
    ensure!(stream["viewers"] == 0, "{stream}");
    ensure!(stream["recording"]["active"] == true, "{stream}");

    let mut viewer = Viewer::connect(&gw.base_url(), "cam", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 1, Duration::from_secs(5)).await?;
    session
        .wait_stream("cam", "watched once", Duration::from_secs(5), |s| {
            s.is_some_and(|s| s["viewers"] == 1)
        })
        .await?;
    let viewers = session.items("/api/v1/streams/cam/viewers").await?;
    ensure!(viewers.len() == 1, "{viewers:?}");
    let viewer_session = viewers[0]["session"]
        .as_str()
        .context("no viewer session")?
        .to_owned();
    ensure!(
        viewer.resource.ends_with(&format!("/{viewer_session}")),
        "viewer session {viewer_session} is not {}",
        viewer.resource
    );

    let kick = format!("/api/v1/streams/cam/viewers/{viewer_session}");
    let reply = session.delete(&kick).await?;
    ensure!(
        reply.status == 204,
        "kick: {} {}",
        reply.status,
        text(&reply)
    );
    viewer.wait_ended(Duration::from_secs(10)).await?;
    session
        .wait_stream("cam", "unwatched", Duration::from_secs(5), |s| {
            s.is_some_and(|s| s["viewers"] == 0)
        })
        .await?;
    let viewers = session.items("/api/v1/streams/cam/viewers").await?;
    ensure!(viewers.is_empty(), "{viewers:?}");
    expect_error(&session.delete(&kick).await?, 404, "not_found").context("kick twice")?;

    // Recording: on by default; stop, then start again.
    let reply = session
        .send(Method::POST, "/api/v1/streams/cam/recording/stop", None)
        .await?;
    ensure!(expect_json(reply, 200)? == json!({"active": false}), "stop");
    session
        .wait_stream("cam", "not recorded", Duration::from_secs(5), |s| {
            s.is_some_and(|s| s["recording"]["active"] == false)
        })
        .await?;
    let reply = session
        .send(Method::POST, "/api/v1/streams/cam/recording/stop", None)
        .await?;
    expect_error(&reply, 409, "conflict").context("stop twice")?;
    let finished =
        wait_recording(&session, "cam", "complete", |r| r["state"] == "complete").await?;
    let reply = session
        .send(Method::POST, "/api/v1/streams/cam/recording/start", None)
        .await?;
    ensure!(expect_json(reply, 200)? == json!({"active": true}), "start");
    session
        .wait_stream("cam", "recorded", Duration::from_secs(5), |s| {
            s.is_some_and(|s| s["recording"]["active"] == true)
        })
        .await?;
    let current =
        wait_recording(&session, "cam", "recording", |r| r["state"] == "recording").await?;

    let id = finished["id"].as_i64().context("recording id")?;
    let download = format!("/api/v1/recordings/{id}/download");
    ensure!(finished["download_url"] == download.as_str(), "{finished}");
    let whole = session.get(&download).await?;
    ensure!(whole.status == 200, "download: {}", whole.status);
    ensure!(whole.body.len() > 100, "{} bytes", whole.body.len());
    let part = session
        .raw(
            Method::GET,
            &download,
            &[("Range", "bytes=0-99")],
            Vec::new(),
        )
        .await?;
    ensure!(part.status == 206, "range: {} {}", part.status, text(&part));
    ensure!(part.body == whole.body[..100], "range body differs");
    let range = format!("bytes 0-99/{}", whole.body.len());
    ensure!(
        part.header("content-range") == Some(range.as_str()),
        "Content-Range {:?}, expected {range}",
        part.header("content-range")
    );

    let current_id = current["id"].as_i64().context("recording id")?;
    let reply = session
        .delete(&format!("/api/v1/recordings/{current_id}"))
        .await?;
    expect_error(&reply, 409, "conflict").context("delete while recording")?;
    let reply = session.delete(&format!("/api/v1/recordings/{id}")).await?;
    ensure!(
        reply.status == 204,
        "delete: {} {}",
        reply.status,
        text(&reply)
    );
    expect_error(
        &session.get(&format!("/api/v1/recordings/{id}")).await?,
        404,
        "not_found",
    )
    .context("deleted recording")?;

    // Ending the publisher ends the stream.
    let reply = session.delete("/api/v1/streams/cam/publisher").await?;
    ensure!(reply.status == 204, "stop publisher: {}", reply.status);
    session
        .wait_stream("cam", "gone", Duration::from_secs(5), |s| s.is_none())
        .await?;

    let log = session.audit().await?;
    let kicked = format!("cam/{viewer_session}");
    for (action, target) in [
        ("kick", kicked.as_str()),
        ("recording_stop", "cam"),
        ("recording_start", "cam"),
        ("recording_delete", &id.to_string()),
        ("stop_publisher", "cam"),
    ] {
        ensure!(
            audited(&log, "admin", action, Some(target)),
            "no audit entry {action} {target}: {log:?}"
        );
    }
    runner.abort();
    Ok(())
}

// ---------------------------------------------------------------------------
// Stream keys.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_keys_gate_publishing_and_revoking_ends_sessions() -> Result<()> {
    let gw = Gateway::start_with(admin::options()).await?;
    with_log(
        &gw,
        stream_keys_gate_publishing_and_revoking_ends_sessions_checks(&gw).await,
    )
}

async fn stream_keys_gate_publishing_and_revoking_ends_sessions_checks(gw: &Gateway) -> Result<()> {
    let base = gw.base_url();
    let session = Client::login(gw, admin::PASSWORD).await?;
    let (key_id, secret) = session.create_key("keyed-*", "publish").await?;

    expect_refused(publish(&base, "keyed-1", None).await, 401, "no token")?;
    expect_refused(
        publish(&base, "keyed-1", Some("wck_guessed")).await,
        401,
        "a guessed token",
    )?;
    let publisher = Arc::new(
        publish(&base, "keyed-1", Some(&secret))
            .await
            .context("publishing with the key")?,
    );
    let runner = publisher.spawn_run(Duration::from_secs(40), Duration::from_secs(1));
    let stream = session
        .wait_stream("keyed-1", "live", Duration::from_secs(10), |s| s.is_some())
        .await?
        .context("not listed")?;
    ensure!(
        stream["publisher"]["key_id"] == key_id,
        "publisher {}",
        stream["publisher"]
    );

    let reply = session.get("/api/v1/keys").await?;
    ensure!(
        !text(&reply).contains(&secret),
        "key listing has the secret"
    );
    let keys = expect_json(reply, 200)?;
    ensure!(
        keys["items"].as_array().is_some_and(|k| k.iter().any(|k| {
            k["id"] == key_id && k["stream_pattern"] == "keyed-*" && k["action"] == "publish"
        })),
        "{keys}"
    );

    let reply = session
        .delete(&format!("/api/v1/keys/{key_id}?end_sessions=true"))
        .await?;
    ensure!(
        reply.status == 204,
        "revoke: {} {}",
        reply.status,
        text(&reply)
    );
    session
        .wait_stream("keyed-1", "gone", Duration::from_secs(5), |s| s.is_none())
        .await?;
    expect_refused(
        publish(&base, "keyed-1", Some(&secret)).await,
        401,
        "the revoked key",
    )?;

    let keys = session.items("/api/v1/keys").await?;
    let listed = keys
        .iter()
        .find(|k| k["id"] == key_id)
        .context("key not listed")?;
    ensure!(listed["revoked_at_ms"].is_i64(), "{listed}");
    let log = session.audit().await?;
    let target = key_id.to_string();
    ensure!(
        log.iter().any(|e| e["action"] == "key_revoke"
            && e["target"] == target.as_str()
            && e["detail"] == "ended 1 session(s)"),
        "audit log: {log:?}"
    );
    runner.abort();
    Ok(())
}
