//! The admin panel and the REST API `/api/v1`, served by the gateway on its
//! one HTTP port.
//!
//! This crate owns who may do what (the admin password and its sessions,
//! API tokens, stream keys), what is kept across restarts (the admin tables
//! of the SQLite database), the panel's pages, the API's OpenAPI document
//! and `/metrics`. It reaches the running gateway only through
//! [`control::Control`], which the gateway implements.

pub mod api;
pub mod auth;
pub mod control;
pub mod error;
pub mod metrics;
pub mod pages;
pub mod pattern;
pub mod secret;
pub mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use tracing::{info, warn};

/// Implementations of [`Control`] need the same attribute as its declaration.
pub use async_trait::async_trait;
use auth::{LoginLimiter, Principal, Sessions};
pub use control::{Control, ControlError};
use store::{KeyAction, KeyCheck, NewAuditEntry, Store, StoreError};

/// The panel's settings, from the gateway's configuration.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// The admin password; none: keep the stored one, or generate one.
    pub admin_password: Option<String>,
    /// A bearer token for the API set at start.
    pub api_token: Option<String>,
    /// A bearer token `/metrics` requires; none: open.
    pub metrics_token: Option<String>,
    pub session_idle: Duration,
    /// Mark cookies `Secure` (the gateway serves HTTPS).
    pub secure_cookies: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] auth::password::HashError),
}

/// The panel's state, shared by every HTTP worker.
pub struct Admin {
    config: AdminConfig,
    store: Store,
    sessions: Sessions,
    limiter: LoginLimiter,
    control: Arc<dyn Control>,
    http_metrics: metrics::HttpMetrics,
    /// Restream targets added over the API: the gateway's target id → the
    /// stored row, so removing one forgets it across restarts too.
    stored_restreams: Mutex<HashMap<u64, i64>>,
    started: Instant,
}

impl Admin {
    /// Opens the admin tables in the database at `db_path` (migrating
    /// them), sets up the admin password, and re-adds the restream targets
    /// and RTSP sources added over the API before the last stop.
    pub async fn open(
        db_path: &Path,
        config: AdminConfig,
        control: Arc<dyn Control>,
    ) -> Result<Self, AdminError> {
        let store = Store::open(db_path)?;
        Self::with_store(store, config, control).await
    }

    pub async fn with_store(
        store: Store,
        config: AdminConfig,
        control: Arc<dyn Control>,
    ) -> Result<Self, AdminError> {
        init_password(&store, config.admin_password.as_deref())?;
        let admin = Self {
            sessions: Sessions::new(config.session_idle),
            config,
            store,
            limiter: LoginLimiter::default(),
            control,
            http_metrics: metrics::HttpMetrics::default(),
            stored_restreams: Mutex::new(HashMap::new()),
            started: Instant::now(),
        };
        admin.restore_restreams().await?;
        admin.restore_sources()?;
        Ok(admin)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn http_metrics(&self) -> &metrics::HttpMetrics {
        &self.http_metrics
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Checks a stream key for `action` on `stream`. The gateway combines
    /// this with its configured tokens.
    pub fn check_stream_key(
        &self,
        stream: &str,
        action: KeyAction,
        presented: &str,
    ) -> Result<KeyCheck, StoreError> {
        self.store.check_key(stream, action, presented)
    }

    /// Whether a live key covers `action` on `stream`.
    pub fn stream_has_keys(&self, stream: &str, action: KeyAction) -> Result<bool, StoreError> {
        self.store.stream_has_keys(stream, action)
    }

    /// Logs an admin action; a failure to log is itself logged, never
    /// fatal to the action.
    pub fn audit(
        &self,
        actor: &str,
        req: &HttpRequest,
        action: &str,
        target: Option<&str>,
        detail: Option<&str>,
    ) {
        let client = client_address(req);
        let entry = NewAuditEntry {
            actor,
            client: client.as_deref(),
            action,
            target,
            detail,
        };
        info!(
            actor,
            action,
            target,
            client = client.as_deref(),
            "admin action"
        );
        if let Err(err) = self.store.audit(&entry) {
            warn!("audit log: {err}");
        }
    }

    fn audit_by(
        &self,
        principal: &Principal,
        req: &HttpRequest,
        action: &str,
        target: Option<&str>,
    ) {
        self.audit(&principal.actor(), req, action, target, None);
    }

    fn restore_sources(&self) -> Result<(), StoreError> {
        for stored in self.store.sources()? {
            if let Err(err) = self.control.add_source(&stored) {
                warn!(
                    stream = stored.stream,
                    "stored RTSP source not restored: {err}"
                );
            }
        }
        Ok(())
    }

    async fn restore_restreams(&self) -> Result<(), StoreError> {
        for stored in self.store.restreams()? {
            let new = control::NewRestream {
                stream: stored.stream.clone(),
                url: stored.url.clone(),
                transcode: stored.transcode,
                enhanced: stored.enhanced,
            };
            match self.control.add_restream(&new).await {
                Ok(info) => {
                    self.stored_restreams
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(info.id, stored.id);
                }
                Err(err) => warn!(
                    stream = stored.stream,
                    "stored restream target not restored: {err}"
                ),
            }
        }
        Ok(())
    }
}

/// Mounts the panel, `/api/v1` and `/metrics`. The app must hold the
/// [`Admin`] as `web::Data<Admin>`; wrap the app in
/// [`metrics::count_requests`] to count requests by route.
pub fn configure(cfg: &mut actix_web::web::ServiceConfig) {
    pages::configure(cfg);
    api::configure(cfg);
    cfg.route("/metrics", actix_web::web::get().to(metrics::endpoint));
}

/// The client's address as logged: the TCP peer (a reverse proxy's
/// forwarded headers are not trusted, they are trivially forged).
pub fn client_address(req: &HttpRequest) -> Option<String> {
    req.peer_addr().map(|a| a.ip().to_string())
}

fn init_password(store: &Store, configured: Option<&str>) -> Result<(), AdminError> {
    use store::settings::ADMIN_PASSWORD_HASH;
    let stored = store.setting(ADMIN_PASSWORD_HASH)?;
    match (configured, stored) {
        (Some(password), Some(hash)) if auth::password::verify(password, &hash) => {}
        (Some(password), _) => {
            store.set_setting(ADMIN_PASSWORD_HASH, &auth::password::hash(password)?)?;
            info!("admin password set from the configuration");
        }
        (None, Some(_)) => {}
        (None, None) => {
            let password = auth::password::generate();
            store.set_setting(ADMIN_PASSWORD_HASH, &auth::password::hash(&password)?)?;
            // Printed once: only the hash is kept, so this line is the one
            // chance to read it.
            warn!(
                "generated admin password (shown only now; set WHIPCORD_ADMIN_PASSWORD to choose one): {password}"
            );
        }
    }
    Ok(())
}
