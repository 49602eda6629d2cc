//! What the panel keeps across restarts: stream keys, API tokens, restream
//! targets added over the API, settings and the audit log, in the admin
//! tables of the gateway's SQLite database (beside the recordings catalog).
//!
//! One connection behind a mutex: every query here is a few rows on an
//! indexed table, far cheaper than the HTTP request around it.

mod audit;
mod keys;
pub mod migrations;
mod restreams;
pub mod settings;
mod sources;
mod tokens;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

pub use audit::{AuditEntry, NewAuditEntry};
pub use keys::{KeyAction, KeyCheck, KeyInfo, NewKey};
pub use migrations::{LATEST_VERSION, MIGRATIONS, Migration};
pub use restreams::StoredRestream;
pub use tokens::TokenInfo;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("admin database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("admin database schema version {found} is newer than this build knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("admin database row is corrupt: {0}")]
    Corrupt(&'static str),
}

pub struct Store {
    db: Mutex<Connection>,
}

impl Store {
    /// Opens the database at `path` (creating it) and brings its admin
    /// tables to the latest schema version.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        Self::with_connection(db)
    }

    /// A store in memory, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::with_connection(Connection::open_in_memory()?)
    }

    fn with_connection(mut db: Connection) -> Result<Self, StoreError> {
        migrations::migrate(&mut db, LATEST_VERSION)?;
        Ok(Self { db: Mutex::new(db) })
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
