//! The REST API, `/api/v1`: one module per resource. Every route in the
//! scope is authenticated by [`require_auth`] before its handler runs;
//! only the OpenAPI document and its docs page are public.

mod audit;
mod keys;
pub mod openapi;
mod recordings;
mod restreams;
mod server;
mod sources;
mod streams;
mod tokens;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::Admin;
use crate::auth::Principal;
use crate::auth::principal::authenticate;
use crate::error::{self, ApiError};

pub const PREFIX: &str = "/api/v1";

const DEFAULT_PER_PAGE: u32 = 50;
const MAX_PER_PAGE: u32 = 500;

/// Page selection of a listing.
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Pagination {
    /// 1-based page number [default: 1].
    pub page: Option<u32>,
    /// Items per page, at most 500 [default: 50].
    pub per_page: Option<u32>,
}

impl Pagination {
    pub fn page(self) -> u32 {
        self.page.unwrap_or(1).max(1)
    }

    pub fn per_page(self) -> u32 {
        self.per_page
            .unwrap_or(DEFAULT_PER_PAGE)
            .clamp(1, MAX_PER_PAGE)
    }

    pub fn offset(self) -> u32 {
        (self.page() - 1).saturating_mul(self.per_page())
    }

    /// The page of an in-memory list.
    pub fn slice<T>(self, all: Vec<T>) -> Page<T> {
        let total = all.len() as u64;
        let items = all
            .into_iter()
            .skip(self.offset() as usize)
            .take(self.per_page() as usize)
            .collect();
        self.wrap(items, total)
    }

    pub fn wrap<T>(self, items: Vec<T>, total: u64) -> Page<T> {
        Page {
            items,
            total,
            page: self.page(),
            per_page: self.per_page(),
        }
    }
}

/// One page of a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Items in the whole listing.
    pub total: u64,
    pub page: u32,
    pub per_page: u32,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/openapi.json", web::get().to(openapi::document))
        .route("/api/v1/docs", web::get().to(openapi::docs_page))
        .service(
            web::scope(PREFIX)
                .wrap(from_fn(require_auth))
                .app_data(error::json_config())
                .app_data(error::query_config())
                .app_data(error::path_config())
                .configure(server::routes)
                .configure(streams::routes)
                .configure(recordings::routes)
                .configure(restreams::routes)
                .configure(sources::routes)
                .configure(keys::routes)
                .configure(tokens::routes)
                .configure(audit::routes)
                .default_service(web::to(|| async {
                    Err::<actix_web::HttpResponse, _>(ApiError::not_found("API route"))
                })),
        );
}

/// Authenticates every request of the scope, leaving the [`Principal`] in
/// the request's extensions for the handler.
async fn require_auth(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<impl MessageBody>>, actix_web::Error> {
    let admin = req
        .app_data::<web::Data<Admin>>()
        .cloned()
        .ok_or_else(|| ApiError::internal("admin state missing"))?;
    match authenticate(&admin, req.request()) {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.call(req).await.map(|res| res.map_into_left_body())
        }
        Err(err) => {
            let response = err.error_response();
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(
            req.extensions()
                .get::<Principal>()
                .cloned()
                .ok_or_else(|| ApiError::unauthorized("not authenticated")),
        )
    }
}
