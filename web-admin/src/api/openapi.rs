//! The OpenAPI 3.1 document of `/api/v1`, generated from the handlers'
//! annotations and the types they take and return, and its docs page.

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{audit, keys, recordings, restreams, server, sources, streams, tokens};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Whipcord API",
        description = "Manage a Whipcord gateway: live streams, viewers, recordings, restream \
                       targets, RTSP sources, stream keys, API tokens and the audit log. Authenticate with \
                       `Authorization: Bearer <API token>`, or with an admin panel session \
                       cookie plus the `X-CSRF-Token` header on state-changing requests. \
                       Errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        server::session, server::stats, server::events,
        streams::list, streams::show, streams::viewers, streams::kick,
        streams::stop_publisher, streams::recording,
        recordings::list, recordings::totals, recordings::show, recordings::remove,
        recordings::download,
        restreams::list, restreams::add, restreams::remove, restreams::retry,
        sources::list, sources::add, sources::remove,
        keys::list, keys::create, keys::revoke,
        tokens::list, tokens::create, tokens::revoke,
        audit::list,
    ),
    modifiers(&Security, &UniqueOperationIds),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "server", description = "Session, server figures and live events"),
        (name = "streams", description = "Live streams, viewers and publishers"),
        (name = "recordings", description = "The recordings catalog"),
        (name = "restreams", description = "RTMP restream targets"),
        (name = "sources", description = "RTSP cameras the gateway pulls"),
        (name = "keys", description = "Stream keys for publishing and watching"),
        (name = "tokens", description = "API tokens"),
        (name = "audit", description = "The audit log"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::auth::principal::SESSION_COOKIE,
            ))),
        );
    }
}

/// Prefixes each operation id (the handler's function name, so `list`
/// several times) with its tag: OpenAPI requires them unique, and client
/// generators name methods after them (`keys_list`, `tokens_create`).
struct UniqueOperationIds;

impl Modify for UniqueOperationIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
            ];
            for operation in operations.into_iter().flatten() {
                let tag = operation
                    .tags
                    .as_ref()
                    .and_then(|t| t.first())
                    .cloned()
                    .unwrap_or_default();
                if let Some(id) = &operation.operation_id {
                    operation.operation_id = Some(format!("{tag}_{id}"));
                }
                for (status, response) in operation.responses.responses.iter_mut() {
                    if let utoipa::openapi::RefOr::T(response) = response
                        && response.description.is_empty()
                    {
                        response.description = status_description(status).to_owned();
                    }
                }
            }
        }
    }
}

/// What a status means across this API, for responses the handler's
/// annotation does not describe itself.
fn status_description(status: &str) -> &'static str {
    match status {
        "200" => "Success",
        "201" => "Created",
        "204" => "Done",
        "400" => "A parameter or the body is invalid",
        "401" => "No valid API token or panel session",
        "403" => "A panel session without its X-CSRF-Token on a state change",
        "404" => "No such resource",
        "409" => "The resource is in a state that does not allow this",
        _ => "See the error body",
    }
}

/// The document as JSON.
pub fn json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".into())
}

pub async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json())
}

const DOCS_HTML: &str = include_str!("../../assets/docs.html");

pub async fn docs_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            "Content-Security-Policy",
            crate::pages::CONTENT_SECURITY_POLICY,
        ))
        .body(DOCS_HTML)
}
