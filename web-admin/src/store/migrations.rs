//! Versioned schema migrations of the admin tables.
//!
//! The database file is shared with the recordings catalog (which creates
//! its own table), so the admin tables keep their own version in
//! `schema_migrations` rather than in `PRAGMA user_version`. Migrations run
//! in order at start, each in one transaction, and are never edited once
//! released: a change is a new entry at the end.

use rusqlite::{Connection, OptionalExtension, params};

use super::{StoreError, now_ms};

/// One step of the schema.
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "stream keys, API tokens, settings, audit log",
        sql: "
CREATE TABLE stream_keys (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL,
    stream_pattern  TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    secret_sha256   TEXT    NOT NULL UNIQUE,
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER,
    revoked_at_ms   INTEGER,
    last_used_at_ms INTEGER
);
CREATE TABLE api_tokens (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL,
    secret_sha256   TEXT    NOT NULL UNIQUE,
    created_at_ms   INTEGER NOT NULL,
    revoked_at_ms   INTEGER,
    last_used_at_ms INTEGER
);
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms   INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    client  TEXT,
    action  TEXT    NOT NULL,
    target  TEXT,
    detail  TEXT
);
CREATE INDEX audit_log_at ON audit_log (at_ms);
",
    },
    Migration {
        version: 2,
        description: "restream targets added over the API",
        sql: "
CREATE TABLE restream_targets (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    stream        TEXT    NOT NULL,
    url           TEXT    NOT NULL,
    transcode     INTEGER NOT NULL DEFAULT 0,
    enhanced      INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
);
",
    },
    Migration {
        version: 3,
        description: "RTSP sources added over the API",
        sql: "
CREATE TABLE rtsp_sources (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    stream        TEXT    NOT NULL UNIQUE,
    url           TEXT    NOT NULL,
    transport     TEXT,
    on_demand     INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
);
",
    },
];

/// The schema version this build writes.
pub const LATEST_VERSION: i64 = 3;

/// The admin schema version of `db` (0: no admin tables yet).
pub fn current_version(db: &Connection) -> Result<i64, StoreError> {
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            component     TEXT    NOT NULL,
            version       INTEGER NOT NULL,
            applied_at_ms INTEGER NOT NULL,
            PRIMARY KEY (component, version)
        );",
    )?;
    let version: Option<i64> = db
        .query_row(
            "SELECT MAX(version) FROM schema_migrations WHERE component = 'admin'",
            [],
            |row| row.get(0),
        )
        .optional()?
        .flatten();
    Ok(version.unwrap_or(0))
}

/// Applies every migration above the current version, up to `target`.
pub fn migrate(db: &mut Connection, target: i64) -> Result<(), StoreError> {
    let current = current_version(db)?;
    if current > LATEST_VERSION {
        return Err(StoreError::TooNew {
            found: current,
            known: LATEST_VERSION,
        });
    }
    for migration in MIGRATIONS
        .iter()
        .filter(|m| m.version > current && m.version <= target)
    {
        let tx = db.transaction()?;
        tx.execute_batch(migration.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (component, version, applied_at_ms) \
             VALUES ('admin', ?1, ?2)",
            params![migration.version, now_ms()],
        )?;
        tx.commit()?;
        tracing::info!(
            version = migration.version,
            "admin database migrated: {}",
            migration.description
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(LATEST_VERSION));
    }

    #[test]
    fn every_version_upgrades_to_latest() {
        for start in 0..=LATEST_VERSION {
            let mut db = Connection::open_in_memory().expect("db");
            migrate(&mut db, start).expect("to start version");
            assert_eq!(current_version(&db).expect("version"), start);
            migrate(&mut db, LATEST_VERSION).expect("to latest");
            assert_eq!(current_version(&db).expect("version"), LATEST_VERSION);
            // Running again is a no-op.
            migrate(&mut db, LATEST_VERSION).expect("again");
        }
    }

    #[test]
    fn refuses_a_newer_database() {
        let mut db = Connection::open_in_memory().expect("db");
        migrate(&mut db, LATEST_VERSION).expect("latest");
        db.execute(
            "INSERT INTO schema_migrations VALUES ('admin', ?1, 0)",
            params![LATEST_VERSION + 1],
        )
        .expect("insert");
        assert!(matches!(
            migrate(&mut db, LATEST_VERSION),
            Err(StoreError::TooNew { .. })
        ));
    }
}
