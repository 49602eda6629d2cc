//! WHIP (RFC 9725) and WHEP resources. Both have the same shape: POST an
//! offer to the endpoint, get 201 with the answer and a session resource URL;
//! PATCH that resource to trickle or restart ICE; DELETE it to leave.
#![expect(
    clippy::result_large_err,
    reason = "helpers return the ready error response; once per request"
)]

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use tracing::{info, warn};

use super::AppState;
use crate::auth::{self, Action};
use crate::config::IceServer;
use crate::sdpfrag::SdpFragment;
use crate::signal::{
    ClientInfo, Command, PatchOutcome, PatchRequest, Role, SessionId, SignalError,
};
use crate::stream_name::StreamName;

const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

pub fn routes(cfg: &mut web::ServiceConfig) {
    for role in [Role::Publisher, Role::Viewer] {
        let prefix = role.path_prefix();
        cfg.service(
            web::resource(format!("/{prefix}/{{stream}}"))
                .app_data(web::Data::new(role))
                .route(web::post().to(post_offer))
                .route(web::method(actix_web::http::Method::OPTIONS).to(options_endpoint)),
        )
        .service(
            web::resource(format!("/{prefix}/{{stream}}/{{session}}"))
                .app_data(web::Data::new(role))
                .route(web::patch().to(patch_session))
                .route(web::delete().to(delete_session))
                .route(web::method(actix_web::http::Method::OPTIONS).to(options_session)),
        );
    }
}

fn text(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(message.into())
}

fn signal_error(err: &SignalError) -> HttpResponse {
    let status = match err {
        SignalError::BadOffer(_) => StatusCode::BAD_REQUEST,
        SignalError::StreamNotLive | SignalError::UnknownSession => StatusCode::NOT_FOUND,
        SignalError::StreamBusy => StatusCode::CONFLICT,
        SignalError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        SignalError::UnsupportedCodec(_) => StatusCode::NOT_ACCEPTABLE,
        SignalError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        SignalError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    text(status, err.to_string())
}

fn content_type_is(req: &HttpRequest, want: &str) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

fn stream_name(raw: &str) -> Result<StreamName, HttpResponse> {
    StreamName::parse(raw).ok_or_else(|| {
        text(
            StatusCode::BAD_REQUEST,
            "invalid stream name: use 1-64 characters of A-Z a-z 0-9 _ - .",
        )
    })
}

/// `Link` header values announcing the configured ICE servers (RFC 9725 §4.6).
pub fn ice_server_links(servers: &[IceServer]) -> Vec<String> {
    let mut links = Vec::new();
    for server in servers {
        for url in &server.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if url.starts_with("turn") {
                if let Some(user) = &server.username {
                    link.push_str(&format!("; username=\"{user}\""));
                }
                if let Some(cred) = &server.credential {
                    link.push_str(&format!(
                        "; credential=\"{cred}\"; credential-type=\"password\""
                    ));
                }
            }
            links.push(link);
        }
    }
    links
}

fn append_links(res: &mut HttpResponse, state: &AppState) {
    for link in ice_server_links(&state.config.ice_servers) {
        if let Ok(value) = HeaderValue::from_str(&link) {
            res.headers_mut().append(header::LINK, value);
        }
    }
}

fn authorize(
    req: &HttpRequest,
    state: &AppState,
    stream: &StreamName,
    role: Role,
) -> Result<Option<i64>, HttpResponse> {
    let action = match role {
        Role::Publisher => Action::Publish,
        Role::Viewer => Action::Watch,
    };
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let keys = Some(state.admin.store());
    auth::check(&state.config, keys, stream, action, auth::bearer(header)).map_err(|err| {
        warn!(%stream, ?role, peer = ?req.peer_addr(), "refused: {err}");
        HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .content_type("text/plain; charset=utf-8")
            .body(err.to_string())
    })
}

async fn post_offer(
    req: HttpRequest,
    path: web::Path<String>,
    role: web::Data<Role>,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let role = **role;
    let stream = match stream_name(&path) {
        Ok(s) => s,
        Err(res) => return res,
    };
    let key_id = match authorize(&req, &state, &stream, role) {
        Ok(key_id) => key_id,
        Err(res) => return res,
    };
    if !content_type_is(&req, SDP) {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/sdp",
        );
    }
    let Ok(offer) = std::str::from_utf8(&body) else {
        return text(StatusCode::BAD_REQUEST, "offer is not UTF-8");
    };
    if !offer.trim_start().starts_with("v=0") {
        return text(StatusCode::BAD_REQUEST, "offer is not an SDP document");
    }
    let client = ClientInfo {
        address: req.peer_addr(),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        key_id,
    };
    let offer = offer.to_owned();
    let stream_for_cmd = stream.clone();
    let result = state
        .media
        .request(|reply| Command::Offer {
            role,
            stream: stream_for_cmd,
            offer,
            client,
            reply,
        })
        .await
        .and_then(|r| r);
    match result {
        Ok(answer) => {
            info!(%stream, ?role, session = %answer.session, "session created");
            let location = format!("/{}/{}/{}", role.path_prefix(), stream, answer.session);
            let mut res = HttpResponse::Created()
                .content_type(SDP)
                .insert_header((header::LOCATION, location))
                .insert_header((header::ETAG, answer.etag))
                .insert_header(("Accept-Patch", SDPFRAG))
                .body(answer.sdp);
            append_links(&mut res, &state);
            res
        }
        Err(err) => {
            warn!(%stream, ?role, "offer refused: {err}");
            signal_error(&err)
        }
    }
}

async fn options_endpoint(state: web::Data<AppState>) -> HttpResponse {
    let mut res = HttpResponse::NoContent()
        .insert_header(("Accept-Post", SDP))
        .finish();
    append_links(&mut res, &state);
    res
}

async fn options_session() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header(("Accept-Patch", SDPFRAG))
        .finish()
}

fn session_path(raw: &(String, String)) -> Result<(StreamName, SessionId), HttpResponse> {
    let stream = stream_name(&raw.0)?;
    let session =
        SessionId::parse(&raw.1).ok_or_else(|| text(StatusCode::NOT_FOUND, "no such session"))?;
    Ok((stream, session))
}

async fn patch_session(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    role: web::Data<Role>,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> HttpResponse {
    let role = **role;
    let (stream, session) = match session_path(&path) {
        Ok(v) => v,
        Err(res) => return res,
    };
    if let Err(res) = authorize(&req, &state, &stream, role) {
        return res;
    }
    if !content_type_is(&req, SDPFRAG) {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/trickle-ice-sdpfrag",
        );
    }
    let fragment = match std::str::from_utf8(&body)
        .map_err(|_| "body is not UTF-8".to_owned())
        .and_then(|b| SdpFragment::parse(b).map_err(|e| e.to_string()))
    {
        Ok(f) => f,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
    };
    let if_match = req
        .headers()
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let request = PatchRequest { if_match, fragment };
    let result = state
        .media
        .request(|reply| Command::Patch {
            role,
            stream,
            session,
            request,
            reply,
        })
        .await
        .and_then(|r| r);
    match result {
        Ok(PatchOutcome::Trickled) => HttpResponse::NoContent().finish(),
        Ok(PatchOutcome::Restarted { sdpfrag, etag }) => HttpResponse::Ok()
            .content_type(SDPFRAG)
            .insert_header((header::ETAG, etag))
            .body(sdpfrag),
        Err(err) => signal_error(&err),
    }
}

async fn delete_session(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    role: web::Data<Role>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let role = **role;
    let (stream, session) = match session_path(&path) {
        Ok(v) => v,
        Err(res) => return res,
    };
    if let Err(res) = authorize(&req, &state, &stream, role) {
        return res;
    }
    let session_for_log = session.clone();
    let result = state
        .media
        .request(|reply| Command::Delete {
            role,
            stream,
            session,
            reply,
        })
        .await
        .and_then(|r| r);
    match result {
        Ok(()) => {
            info!(session = %session_for_log, ?role, "session deleted");
            HttpResponse::Ok().finish()
        }
        Err(err) => signal_error(&err),
    }
}
