//! Browser pages and their assets, embedded in the binary so the gateway
//! needs no files beside it and no CDN.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

use super::AppState;
use crate::signal::Command;
use crate::stream_name::StreamName;

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const PUBLISH_HTML: &str = include_str!("../../assets/publish.html");
const WATCH_HTML: &str = include_str!("../../assets/watch.html");
const STYLE_CSS: &str = include_str!("../../assets/style.css");
const WHIP_JS: &str = include_str!("../../assets/whip.js");
/// hls.js, vendored from npm by `scripts/update-hls.sh` (Apache-2.0).
const HLS_JS: &str = include_str!("../../assets/vendor/hls.min.js");
const HLS_JS_LICENSE: &str = include_str!("../../assets/vendor/hls.js.LICENSE");

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(|| page(INDEX_HTML)))
        .route("/publish/{stream}", web::get().to(|| page(PUBLISH_HTML)))
        .route("/watch/{stream}", web::get().to(|| page(WATCH_HTML)))
        .route(
            "/assets/style.css",
            web::get().to(|| asset(STYLE_CSS, "text/css; charset=utf-8")),
        )
        .route(
            "/assets/whip.js",
            web::get().to(|| asset(WHIP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/assets/vendor/hls.min.js",
            web::get().to(|| vendored(HLS_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/assets/vendor/hls.js.LICENSE",
            web::get().to(|| vendored(HLS_JS_LICENSE, "text/plain; charset=utf-8")),
        )
        .route("/api/streams", web::get().to(list_streams))
        .route(
            "/healthz",
            web::get().to(|| async { HttpResponse::Ok().body("ok") }),
        );
}

async fn page(html: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(html)
}

async fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// A large third-party file: cached for an hour (its URL carries no
/// version, so not forever: an upgrade must reach browsers the same day).
async fn vendored(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(body)
}

async fn list_streams(state: web::Data<AppState>) -> HttpResponse {
    match state
        .media
        .request(|reply| Command::ListStreams { reply })
        .await
    {
        Ok(streams) => {
            // Each stream with its restream targets and HLS figures, as the
            // admin panel shows them.
            let streams: Vec<serde_json::Value> = streams
                .into_iter()
                .map(|summary| {
                    let name = StreamName::parse(&summary.name);
                    let mut value = serde_json::to_value(&summary).unwrap_or_default();
                    if let Some(name) = name {
                        value["restreams"] =
                            serde_json::json!(state.bridge.targets().list(Some(&name)));
                        value["hls"] = state.bridge.hls_status(&name);
                        value["transcode"] =
                            serde_json::json!(state.bridge.transcode_figures(&name));
                    }
                    value
                })
                .collect();
            HttpResponse::Ok().json(serde_json::json!({
                "streams": streams,
                "transcodes_running": state.bridge.transcodes_running(),
            }))
        }
        Err(err) => HttpResponse::ServiceUnavailable().body(err.to_string()),
    }
}
