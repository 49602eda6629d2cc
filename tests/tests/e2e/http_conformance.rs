//! The WHIP/WHEP HTTP surface against the real binary: status codes, headers
//! and bodies of every resource (RFC 9725 and the WHEP draft), CORS, ICE
//! server announcements, bearer tokens, and that bad input aimed at the
//! gateway leaves a live stream untouched.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use reqwest::header::HeaderMap;

use whipcord_tests::client::{
    PendingViewer, PublishOptions, Publisher, Viewer, WatchOptions, post_offer,
};
use whipcord_tests::gateway::{Gateway, GatewayOptions};
use whipcord_tests::offer::publisher_offer;
use whipcord_tests::synth::VideoCodec;

const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

// ---------------------------------------------------------------------------
// Helpers

/// An HTTP reply with everything a conformance check looks at.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }

    /// The media type of Content-Type, without parameters.
    fn content_type(&self) -> Option<String> {
        self.header("content-type")
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
    }
}

async fn send(req: reqwest::RequestBuilder) -> Result<Reply> {
    let res = tokio::time::timeout(Duration::from_secs(20), req.send())
        .await
        .context("HTTP request timed out")??;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(20), res.text())
        .await
        .context("HTTP body timed out")??;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(url: &str, content_type: &str, body: impl Into<String>) -> Result<Reply> {
    send(
        http()
            .post(url)
            .header("Content-Type", content_type)
            .body(body.into()),
    )
    .await
}

async fn patch(url: &str, content_type: &str, if_match: Option<&str>, body: &str) -> Result<Reply> {
    let mut req = http()
        .patch(url)
        .header("Content-Type", content_type)
        .body(body.to_owned());
    if let Some(tag) = if_match {
        req = req.header("If-Match", tag);
    }
    send(req).await
}

async fn options(url: &str) -> Result<Reply> {
    send(http().request(reqwest::Method::OPTIONS, url)).await
}

async fn delete(url: &str) -> Result<u16> {
    Ok(send(http().delete(url)).await?.status)
}

fn random_session_id() -> String {
    (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// The session id of a `/whip/{stream}/{id}` Location, checking its shape.
fn session_of(location: &str, prefix: &str, stream: &str) -> Result<String> {
    let expected = format!("/{prefix}/{stream}/");
    let id = location
        .strip_prefix(&expected)
        .ok_or_else(|| anyhow!("Location {location:?} does not start with {expected:?}"))?;
    ensure!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "session id in Location {location:?} is not 32 hex digits"
    );
    Ok(id.to_owned())
}

/// A real WHEP offer (recvonly audio + video, no data channel).
async fn viewer_offer() -> Result<PendingViewer> {
    PendingViewer::new(&WatchOptions {
        data_channel: false,
        ..WatchOptions::av()
    })
    .await
}

/// Removes a codec from an offer: its rtpmap/fmtp/rtcp-fb lines, those of
/// the RTX payload types that repair it, and all their payload type numbers
/// from the `m=` lines.
fn strip_codec(sdp: &str, encoding: &str) -> String {
    let lines: Vec<&str> = sdp.lines().map(|l| l.trim_end_matches('\r')).collect();
    let mut pts: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter_map(|rest| {
            let (pt, enc) = rest.split_once(' ')?;
            let name = enc.split('/').next()?;
            name.eq_ignore_ascii_case(encoding).then(|| pt.to_owned())
        })
        .collect();
    let rtx: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("a=fmtp:"))
        .filter_map(|rest| {
            let (pt, params) = rest.split_once(' ')?;
            let apt = params
                .split(';')
                .find_map(|p| p.trim().strip_prefix("apt="))?;
            pts.contains(&apt.to_owned()).then(|| pt.to_owned())
        })
        .collect();
    pts.extend(rtx);
    let mut out = Vec::new();
    for line in lines {
        let names_pt = ["a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"].iter().any(|prefix| {
            line.strip_prefix(prefix)
                .and_then(|rest| rest.split([' ', ':']).next())
                .is_some_and(|pt| pts.iter().any(|p| p == pt))
        });
        if names_pt {
            continue;
        }
        if line.starts_with("m=") {
            let fields: Vec<&str> = line.split(' ').collect();
            let (head, formats) = fields.split_at(fields.len().min(3));
            let kept: Vec<&str> = head
                .iter()
                .copied()
                .chain(
                    formats
                        .iter()
                        .copied()
                        .filter(|f| !pts.iter().any(|p| p == f)),
                )
                .collect();
            out.push(kept.join(" "));
            continue;
        }
        out.push(line.to_owned());
    }
    let mut joined = out.join("\r\n");
    joined.push_str("\r\n");
    joined
}

/// Starts a publisher sending synthetic media for `duration` in a task.
async fn live_publisher(
    gw: &Gateway,
    stream: &str,
    options: PublishOptions,
    duration: Duration,
) -> Result<(Arc<Publisher>, tokio::task::JoinHandle<Result<()>>)> {
    let publisher = Arc::new(Publisher::connect(&gw.url(""), stream, options).await?);
    let runner = publisher.clone();
    let task = tokio::spawn(async move { runner.run(duration, Duration::from_secs(1)).await });
    Ok((publisher, task))
}

/// Waits for a spawned publisher to finish, bounded.
async fn finish(task: tokio::task::JoinHandle<Result<()>>) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .context("publisher did not finish")???;
    Ok(())
}

fn assert_no_panic(gw: &Gateway) {
    let log = gw.log();
    assert!(!log.contains("panicked"), "gateway panicked; log:\n{log}");
}

// ---------------------------------------------------------------------------
// 1. POST and DELETE

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_post_creates_a_session_resource_and_delete_ends_it() -> Result<()> {
    let gw = Gateway::start().await?;
    let (pc, offer) = publisher_offer().await?;

    let res = post(&gw.url("/whip/live"), SDP, offer).await?;
    assert_eq!(res.status, 201, "POST /whip/live: {res:?}");
    assert_eq!(res.content_type().as_deref(), Some(SDP), "{res:?}");
    let location = res.header("location").context("201 without Location")?;
    let session = session_of(location, "whip", "live")?;
    let etag = res.header("etag").context("201 without ETag")?;
    assert!(!etag.trim().is_empty(), "empty ETag");
    assert!(
        res.body.starts_with("v=0"),
        "answer is not SDP: {:?}",
        res.body
    );
    assert!(res.body.contains("a=ice-ufrag:"), "answer: {}", res.body);
    assert!(res.body.contains("a=fingerprint:"), "answer: {}", res.body);
    assert!(
        res.header("accept-patch")
            .is_some_and(|v| v.contains(SDPFRAG)),
        "Accept-Patch missing: {res:?}"
    );

    let resource = gw.url(location);
    assert_eq!(delete(&resource).await?, 200, "first DELETE");
    assert_eq!(delete(&resource).await?, 404, "second DELETE");
    let unknown = gw.url(&format!("/whip/live/{}", random_session_id()));
    assert_eq!(delete(&unknown).await?, 404, "DELETE of an unknown session");
    // An id that is not 32 hex digits names no session.
    assert_eq!(delete(&gw.url("/whip/live/not-a-session")).await?, 404);
    // The stream ended with its publisher.
    let viewer = viewer_offer().await?;
    let res = post(&gw.url("/whep/live"), SDP, viewer.offer.clone()).await?;
    assert_eq!(res.status, 404, "WHEP after the publisher left: {res:?}");
    // The id from Location names nothing any more.
    let res = patch(&resource, SDPFRAG, None, "a=end-of-candidates\r\n").await?;
    assert_eq!(res.status, 404, "PATCH of {session} after DELETE: {res:?}");

    pc.close().await?;
    assert_no_panic(&gw);
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. PATCH: trickle, ICE restart, If-Match, content type

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_trickles_restarts_and_checks_preconditions() -> Result<()> {
    let gw = Gateway::start().await?;
    let publisher = Publisher::connect(&gw.url(""), "live", PublishOptions::default()).await?;
    let resource = publisher.resource.clone();
    let etag = publisher.etag.clone().context("publisher got no ETag")?;

    let trickle = "a=mid:0\r\n\
                   a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n\
                   a=end-of-candidates\r\n";
    let res = patch(&resource, SDPFRAG, None, trickle).await?;
    assert_eq!(res.status, 204, "trickle PATCH: {res:?}");
    let res = patch(&resource, SDPFRAG, Some(&etag), trickle).await?;
    assert_eq!(res.status, 204, "trickle PATCH with the ETag: {res:?}");

    let res = patch(&resource, SDPFRAG, Some("\"not-the-etag\""), trickle).await?;
    assert_eq!(res.status, 412, "PATCH with a wrong If-Match: {res:?}");

    let res = patch(&resource, SDP, Some(&etag), trickle).await?;
    assert_eq!(
        res.status, 415,
        "PATCH with Content-Type application/sdp: {res:?}"
    );
    let res = patch(&resource, "text/plain", None, trickle).await?;
    assert_eq!(
        res.status, 415,
        "PATCH with Content-Type text/plain: {res:?}"
    );

    let restart = "a=ice-ufrag:Rst7\r\n\
                   a=ice-pwd:R3startPasswordOf24Chars\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
                   a=mid:0\r\n";
    let res = patch(&resource, SDPFRAG, Some(&etag), restart).await?;
    assert_eq!(res.status, 200, "ICE restart PATCH: {res:?}");
    assert_eq!(res.content_type().as_deref(), Some(SDPFRAG), "{res:?}");
    let lines: Vec<&str> = res.body.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("a=ice-ufrag:") && l.len() > 12),
        "restart answer without ice-ufrag: {:?}",
        res.body
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("a=ice-pwd:") && l.len() > 10),
        "restart answer without ice-pwd: {:?}",
        res.body
    );
    // Not asserted: RFC 8839 wants the answerer's ufrag and pwd to
    // change on an ICE restart, but the gateway keeps its own credentials for
    // the session's lifetime (see `restart_ice` in gateway/src/media/plane.rs).
    let new_etag = res
        .header("etag")
        .context("restart answer without ETag")?
        .to_owned();
    assert_ne!(new_etag, etag, "ICE restart kept the old ETag");

    // The old ETag no longer matches; the new one does.
    let res = patch(&resource, SDPFRAG, Some(&etag), trickle).await?;
    assert_eq!(res.status, 412, "PATCH with the pre-restart ETag: {res:?}");
    let res = patch(&resource, SDPFRAG, Some(&new_etag), trickle).await?;
    assert_eq!(res.status, 204, "PATCH with the new ETag: {res:?}");

    // A body that is not an SDP fragment.
    let res = patch(&resource, SDPFRAG, None, "hello world").await?;
    assert_eq!(res.status, 400, "PATCH with garbage: {res:?}");

    // Session OPTIONS advertises PATCH.
    let res = options(&resource).await?;
    assert_eq!(res.status, 204, "OPTIONS on the session: {res:?}");
    assert!(
        res.header("accept-patch")
            .is_some_and(|v| v.contains(SDPFRAG)),
        "{res:?}"
    );

    // PATCH on a session that does not exist.
    let unknown = gw.url(&format!("/whip/live/{}", random_session_id()));
    let res = patch(&unknown, SDPFRAG, None, trickle).await?;
    assert_eq!(res.status, 404, "PATCH on an unknown session: {res:?}");

    assert_eq!(publisher.delete().await?, 200);
    publisher.close().await?;
    assert_no_panic(&gw);
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. OPTIONS, CORS and ICE servers in Link headers

fn check_ice_links(links: &[String], what: &str) {
    let stun: Vec<&String> = links
        .iter()
        .filter(|l| l.contains("<stun:stun.example.org:3478>"))
        .collect();
    let turn: Vec<&String> = links
        .iter()
        .filter(|l| l.contains("<turn:turn.example.org:3478?transport=udp>"))
        .collect();
    assert_eq!(stun.len(), 1, "{what}: STUN Link: {links:?}");
    assert_eq!(turn.len(), 1, "{what}: TURN Link: {links:?}");
    assert!(
        stun[0].contains("rel=\"ice-server\""),
        "{what}: {}",
        stun[0]
    );
    assert!(
        !stun[0].contains("username") && !stun[0].contains("credential"),
        "{what}: STUN Link carries TURN credentials: {}",
        stun[0]
    );
    for needle in ["rel=\"ice-server\"", "username=\"u\"", "credential=\"p\""] {
        assert!(
            turn[0].contains(needle),
            "{what}: {needle} missing in {}",
            turn[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_cors_and_ice_server_links() -> Result<()> {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .arg("--ice-server")
            .arg("stun:stun.example.org:3478")
            .arg("--ice-server")
            .arg("turn:turn.example.org:3478?transport=udp")
            .arg("--ice-username")
            .arg("u")
            .arg("--ice-credential")
            .arg("p"),
    )
    .await?;

    for endpoint in ["/whip/x", "/whep/x"] {
        let res = options(&gw.url(endpoint)).await?;
        assert_eq!(res.status, 204, "OPTIONS {endpoint}: {res:?}");
        assert_eq!(
            res.header("access-control-allow-origin"),
            Some("*"),
            "OPTIONS {endpoint}: {res:?}"
        );
        let methods = res
            .header("access-control-allow-methods")
            .context("no Access-Control-Allow-Methods")?;
        for m in ["POST", "PATCH", "DELETE", "OPTIONS"] {
            assert!(
                methods.contains(m),
                "{endpoint}: {m} not allowed: {methods}"
            );
        }
        let allowed = res
            .header("access-control-allow-headers")
            .context("no Access-Control-Allow-Headers")?
            .to_ascii_lowercase();
        for h in ["authorization", "content-type", "if-match"] {
            assert!(allowed.contains(h), "{endpoint}: header {h} not allowed");
        }
        assert_eq!(res.header("accept-post"), Some(SDP), "{endpoint}: {res:?}");
        check_ice_links(&res.all("link"), &format!("OPTIONS {endpoint}"));
    }

    let (pc, offer) = publisher_offer().await?;
    let res = post(&gw.url("/whip/x"), SDP, offer).await?;
    assert_eq!(res.status, 201, "POST /whip/x: {res:?}");
    check_ice_links(&res.all("link"), "POST 201");
    assert_eq!(res.header("access-control-allow-origin"), Some("*"));
    let expose = res
        .header("access-control-expose-headers")
        .context("POST 201 without Access-Control-Expose-Headers")?
        .to_ascii_lowercase();
    for h in ["location", "etag", "link"] {
        assert!(
            expose.split(',').any(|e| e.trim() == h),
            "{h} is not exposed: {expose}"
        );
    }
    let location = res.header("location").context("no Location")?;
    assert_eq!(delete(&gw.url(location)).await?, 200);
    pc.close().await?;
    assert_no_panic(&gw);
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. Bearer tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_guard_publishing_and_watching() -> Result<()> {
    let gw = Gateway::start_with(
        GatewayOptions::default()
            .arg("--publish-token")
            .arg("secret")
            .arg("--watch-token")
            .arg("watch-secret"),
    )
    .await?;
    let whip = gw.url("/whip/live");
    let whep = gw.url("/whep/live");
    let (pc, offer) = publisher_offer().await?;

    let res = post_offer(&whip, &offer, None).await?;
    assert_eq!(res.status, 401, "WHIP without a token: {res:?}");
    let res = post_offer(&whip, &offer, Some("wrong")).await?;
    assert_eq!(res.status, 401, "WHIP with a wrong token: {res:?}");
    let res = post_offer(&whip, &offer, Some("watch-secret")).await?;
    assert_eq!(res.status, 401, "WHIP with the watch token: {res:?}");
    let raw = send(
        http()
            .post(&whip)
            .header("Content-Type", SDP)
            .header("Authorization", "Basic c2VjcmV0")
            .body(offer.clone()),
    )
    .await?;
    assert_eq!(raw.status, 401, "WHIP with Basic auth: {raw:?}");
    assert!(
        raw.header("www-authenticate")
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("bearer")),
        "401 without WWW-Authenticate: Bearer: {raw:?}"
    );

    let res = post_offer(&whip, &offer, Some("secret")).await?;
    assert_eq!(res.status, 201, "WHIP with the token: {res:?}");
    let resource = gw.url(res.location.as_deref().context("no Location")?);
    // Deleting needs the token too.
    assert_eq!(whipcord_tests::client::delete(&resource, None).await?, 401);
    assert_eq!(
        whipcord_tests::client::delete(&resource, Some("wrong")).await?,
        401
    );
    assert_eq!(
        whipcord_tests::client::delete(&resource, Some("secret")).await?,
        200
    );
    pc.close().await?;

    // Watching: a live stream, then viewers with and without the token.
    let (publisher, task) = live_publisher(
        &gw,
        "live",
        PublishOptions {
            token: Some("secret".into()),
            ..PublishOptions::default()
        },
        Duration::from_secs(4),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pending = viewer_offer().await?;
    let res = post_offer(&whep, &pending.offer, None).await?;
    assert_eq!(res.status, 401, "WHEP without a token: {res:?}");
    let res = post_offer(&whep, &pending.offer, Some("wrong")).await?;
    assert_eq!(res.status, 401, "WHEP with a wrong token: {res:?}");
    let res = post_offer(&whep, &pending.offer, Some("secret")).await?;
    assert_eq!(res.status, 401, "WHEP with the publish token: {res:?}");
    let viewer = Viewer::connect(
        &gw.url(""),
        "live",
        WatchOptions {
            token: Some("watch-secret".into()),
            ..WatchOptions::av()
        },
    )
    .await?;
    viewer
        .wait_tracks(2, 1, Duration::from_secs(3))
        .await
        .context("viewer with the watch token got no media")?;
    assert_eq!(viewer.delete().await?, 200);
    viewer.close().await?;
    finish(task).await?;
    assert_eq!(publisher.delete().await?, 200);
    assert_no_panic(&gw);
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. A second publisher: 409, or takeover

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_publisher_on_a_live_stream_gets_409() -> Result<()> {
    let gw = Gateway::start().await?;
    let (first, task) = live_publisher(
        &gw,
        "live",
        PublishOptions::default(),
        Duration::from_secs(4),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (pc, offer) = publisher_offer().await?;
    let res = post(&gw.url("/whip/live"), SDP, offer.clone()).await?;
    assert_eq!(
        res.status, 409,
        "second publisher on a live stream: {res:?}"
    );
    // Another stream is free.
    let res = post(&gw.url("/whip/other"), SDP, offer).await?;
    assert_eq!(res.status, 201, "publisher on another stream: {res:?}");
    assert_eq!(
        delete(&gw.url(res.header("location").context("no Location")?)).await?,
        200
    );
    finish(task).await?;
    // The first publisher was not disturbed.
    assert_eq!(first.delete().await?, 200);
    pc.close().await?;
    assert_no_panic(&gw);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_takeover_replaces_a_live_publisher() -> Result<()> {
    let gw = Gateway::start_with(GatewayOptions::default().arg("--publisher-takeover")).await?;
    let (first, task) = live_publisher(
        &gw,
        "live",
        PublishOptions::default(),
        Duration::from_secs(4),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (pc, offer) = publisher_offer().await?;
    let res = post(&gw.url("/whip/live"), SDP, offer).await?;
    assert_eq!(res.status, 201, "takeover: {res:?}");
    // The replaced publisher's session is gone; the new one is there.
    assert_eq!(first.delete().await?, 404, "replaced publisher's DELETE");
    let location = res.header("location").context("no Location")?;
    assert_eq!(delete(&gw.url(location)).await?, 200);
    task.abort();
    let _ = task.await;
    pc.close().await?;
    assert_no_panic(&gw);
    Ok(())
}

// ---------------------------------------------------------------------------
// 6. Bad requests get precise errors

/// A 2 MB body; the gateway may answer before reading it all, so a reset
/// while sending also counts as refusal, as long as the gateway lives.
async fn post_huge(url: &str, content_type: &str) -> Result<Option<Reply>> {
    let mut body = String::from("v=0\r\n");
    while body.len() < 2 * 1024 * 1024 {
        body.push_str("a=x-padding:0123456789abcdef0123456789abcdef0123456789abcdef\r\n");
    }
    match post(url, content_type, body).await {
        Ok(reply) => Ok(Some(reply)),
        Err(err) if err.downcast_ref::<reqwest::Error>().is_some() => {
            eprintln!("2 MB POST ended without a response: {err:#}");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_errors() -> Result<()> {
    let gw = Gateway::start().await?;
    let (pc, offer) = publisher_offer().await?;
    let whip = gw.url("/whip/a");

    let res = post(&whip, "text/plain", offer.clone()).await?;
    assert_eq!(res.status, 415, "text/plain offer: {res:?}");
    let res = send(http().post(&whip).body(offer.clone())).await?;
    assert_eq!(res.status, 415, "offer without Content-Type: {res:?}");

    let res = post(&whip, SDP, "hello").await?;
    assert_eq!(res.status, 400, "garbage SDP: {res:?}");
    let res = post(&whip, SDP, "").await?;
    assert_eq!(res.status, 400, "empty body: {res:?}");
    let res = post(&whip, SDP, "v=0\r\ns=-\r\n").await?;
    assert_eq!(res.status, 400, "SDP without media: {res:?}");

    if let Some(res) = post_huge(&whip, SDP).await? {
        assert_eq!(res.status, 413, "2 MB body: {res:?}");
    }

    let res = post(&gw.url("/whip/bad!name"), SDP, offer.clone()).await?;
    assert_eq!(res.status, 400, "invalid stream name: {res:?}");

    // A viewer's offer sends nothing: not a WHIP offer.
    let viewer = viewer_offer().await?;
    let res = post(&whip, SDP, viewer.offer.clone()).await?;
    assert_eq!(res.status, 400, "recvonly offer to WHIP: {res:?}");

    // WHEP on a stream nobody publishes.
    let res = post(&gw.url("/whep/nobody"), SDP, viewer.offer.clone()).await?;
    assert_eq!(
        res.status, 404,
        "WHEP on a stream that is not live: {res:?}"
    );

    // A session only exists under its own stream and role.
    let res = post(&whip, SDP, offer).await?;
    assert_eq!(res.status, 201, "POST /whip/a: {res:?}");
    let location = res.header("location").context("no Location")?.to_owned();
    let session = session_of(&location, "whip", "a")?;
    let frag = "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n";
    let res = patch(
        &gw.url(&format!("/whip/otherstream/{session}")),
        SDPFRAG,
        None,
        frag,
    )
    .await?;
    assert_eq!(
        res.status, 404,
        "PATCH to another stream's session: {res:?}"
    );
    let res = patch(&gw.url(&format!("/whep/a/{session}")), SDPFRAG, None, frag).await?;
    assert_eq!(res.status, 404, "PATCH to a WHIP session via WHEP: {res:?}");
    assert_eq!(
        delete(&gw.url(&format!("/whip/otherstream/{session}"))).await?,
        404,
        "DELETE via another stream"
    );
    assert_eq!(
        delete(&gw.url(&format!("/whep/a/{session}"))).await?,
        404,
        "DELETE via WHEP"
    );
    // None of that touched the session.
    let res = patch(&gw.url(&location), SDPFRAG, None, frag).await?;
    assert_eq!(res.status, 204, "PATCH to the real session: {res:?}");
    assert_eq!(delete(&gw.url(&location)).await?, 200);

    let health = send(http().get(gw.url("/healthz"))).await?;
    assert_eq!(health.status, 200);
    pc.close().await?;
    assert_no_panic(&gw);
    Ok(())
}

// ---------------------------------------------------------------------------
// 7. A viewer that cannot receive the published codec

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_without_the_published_codec_is_told_which() -> Result<()> {
    let gw = Gateway::start().await?;
    let (publisher, task) = live_publisher(
        &gw,
        "live",
        PublishOptions {
            video: Some(VideoCodec::Vp8),
            ..PublishOptions::default()
        },
        Duration::from_secs(4),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let pending = viewer_offer().await?;
    assert!(pending.offer.contains("VP8/90000"), "{}", pending.offer);
    let offer = strip_codec(&pending.offer, "VP8");
    assert!(
        !offer.to_ascii_uppercase().contains("VP8"),
        "VP8 left in the offer:\n{offer}"
    );
    let video_line = offer
        .lines()
        .find(|l| l.starts_with("m=video"))
        .context("no m=video")?;
    assert!(
        video_line.split(' ').count() > 3,
        "no video codec left: {video_line}"
    );

    let res = post_offer(&gw.url("/whep/live"), &offer, None).await?;
    assert!(
        (400..500).contains(&res.status),
        "viewer without VP8 answered {}: {}",
        res.status,
        res.body
    );
    assert_eq!(res.status, 406, "viewer without VP8: {res:?}");
    assert!(
        res.body.contains("VP8"),
        "body does not name VP8: {:?}",
        res.body
    );

    // The unmodified offer is fine.
    let res = post_offer(&gw.url("/whep/live"), &pending.offer, None).await?;
    assert_eq!(res.status, 201, "viewer with VP8: {res:?}");
    assert_eq!(
        delete(&gw.url(res.location.as_deref().context("no Location")?)).await?,
        200
    );

    finish(task).await?;
    assert_eq!(publisher.delete().await?, 200);
    assert_no_panic(&gw);
    Ok(())
}

// ---------------------------------------------------------------------------
// 8. Bad input does not disturb a live stream

/// Garbage datagrams shaped to reach each demux branch (STUN, DTLS, RTP/RTCP
/// by first byte), plus random ones and an empty one.
fn garbage_datagrams(n: usize) -> Vec<Vec<u8>> {
    let firsts = [0x00u8, 0x01, 0x14, 0x16, 0x17, 0x80, 0x81, 0x90, 0xc8, 0xff];
    (0..n)
        .map(|i| {
            if i == 0 {
                return Vec::new();
            }
            let len = 1 + rand::random::<u16>() as usize % 1200;
            let mut d: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
            if i % 2 == 0 {
                d[0] = firsts[i % firsts.len()];
            }
            if i % 5 == 0 && d.len() >= 8 {
                // STUN magic cookie with a random transaction.
                d[0] = 0x00;
                d[1] = 0x01;
                d[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
            }
            d
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_does_not_disturb_a_live_stream() -> Result<()> {
    let gw = Gateway::start().await?;
    let base = gw.url("");
    let (publisher, task) = live_publisher(
        &gw,
        "live",
        PublishOptions::default(),
        Duration::from_secs(8),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let viewer = Viewer::connect(&base, "live", WatchOptions::av()).await?;
    viewer.wait_tracks(2, 1, Duration::from_secs(3)).await?;
    let before = viewer.snapshot();
    let publisher_session = publisher
        .resource
        .rsplit('/')
        .next()
        .context("publisher resource")?
        .to_owned();

    // HTTP abuse, concurrently with the media.
    let whip = gw.url("/whip/live");
    let whep = gw.url("/whep/live");
    let res = post(&whep, SDP, "hello").await?;
    assert_eq!(res.status, 400, "garbage SDP: {res:?}");
    let res = post(&whip, SDP, "hello").await?;
    assert_eq!(
        res.status, 400,
        "garbage SDP to a live WHIP endpoint: {res:?}"
    );
    if let Some(res) = post_huge(&whep, SDP).await? {
        assert!((400..500).contains(&res.status), "2 MB body: {res:?}");
    }
    let res = post(&whep, "text/plain", viewer.answer.clone()).await?;
    assert_eq!(res.status, 415, "wrong content type: {res:?}");
    let frag = "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let res = patch(
        &gw.url(&format!("/whip/otherstream/{publisher_session}")),
        SDPFRAG,
        None,
        frag,
    )
    .await?;
    assert_eq!(
        res.status, 404,
        "PATCH to another stream's session: {res:?}"
    );
    let res = patch(
        &gw.url(&format!("/whip/live/{publisher_session}")),
        SDPFRAG,
        Some("\"wrong\""),
        "a=ice-ufrag:evil\r\na=ice-pwd:evilevilevilevilevilevil\r\n",
    )
    .await?;
    assert_eq!(res.status, 412, "restart with a wrong If-Match: {res:?}");
    assert_eq!(
        delete(&gw.url(&format!("/whep/live/{publisher_session}"))).await?,
        404,
        "DELETE of the publisher via WHEP"
    );
    assert_eq!(
        delete(&gw.url(&format!("/whip/otherstream/{publisher_session}"))).await?,
        404,
        "DELETE of the publisher via another stream"
    );

    // UDP garbage at the media port.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    for d in garbage_datagrams(50) {
        udp.send_to(&d, gw.media)?;
    }

    // Media keeps flowing, without loss.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = viewer.snapshot();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = viewer.snapshot();
    assert_eq!(after.len(), 2, "viewer tracks: {after:?}");
    for t in &after {
        let b = before
            .iter()
            .find(|x| x.kind == t.kind)
            .map_or(0, |x| x.packets);
        let d = during
            .iter()
            .find(|x| x.kind == t.kind)
            .map_or(0, |x| x.packets);
        assert!(
            d > b && t.packets > d,
            "{} stalled: {b} -> {d} -> {}",
            t.kind,
            t.packets
        );
        assert_eq!(t.lost(), 0, "{} lost packets", t.kind);
    }

    let health = send(http().get(gw.url("/healthz"))).await?;
    assert_eq!(health.status, 200, "healthz: {health:?}");

    finish(task).await?;
    assert_eq!(viewer.delete().await?, 200);
    assert_eq!(publisher.delete().await?, 200);
    viewer.close().await?;
    let health = send(http().get(gw.url("/healthz"))).await?;
    assert_eq!(health.status, 200, "healthz at the end: {health:?}");
    assert_no_panic(&gw);
    Ok(())
}
