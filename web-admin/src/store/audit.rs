//! The audit log: every admin action, who did it and from where.

use rusqlite::{Row, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Store, StoreError, now_ms};

/// One logged action.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    /// `admin` (a panel session), `token:{id}`, `env-token` or `anonymous`.
    pub actor: String,
    /// The client's address.
    pub client: Option<String>,
    /// What was done: `login`, `login_failed`, `kick`, `key_create`…
    pub action: String,
    /// What it was done to: a stream, a key id…
    pub target: Option<String>,
    pub detail: Option<String>,
}

/// An action to log.
#[derive(Debug, Clone)]
pub struct NewAuditEntry<'a> {
    pub actor: &'a str,
    pub client: Option<&'a str>,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub detail: Option<&'a str>,
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.get(0)?,
        at_ms: row.get(1)?,
        actor: row.get(2)?,
        client: row.get(3)?,
        action: row.get(4)?,
        target: row.get(5)?,
        detail: row.get(6)?,
    })
}

impl Store {
    pub fn audit(&self, entry: &NewAuditEntry<'_>) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO audit_log (at_ms, actor, client, action, target, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                now_ms(),
                entry.actor,
                entry.client,
                entry.action,
                entry.target,
                entry.detail
            ],
        )?;
        Ok(())
    }

    /// Entries, newest first, and how many there are.
    pub fn audit_entries(
        &self,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<AuditEntry>, u64), StoreError> {
        let db = self.db();
        let total: i64 = db.query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get(0))?;
        let mut stmt = db.prepare(
            "SELECT id, at_ms, actor, client, action, target, detail FROM audit_log \
             ORDER BY id DESC LIMIT ?1 OFFSET ?2",
        )?;
        let entries = stmt
            .query_map(params![limit, offset], from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((entries, total.max(0) as u64))
    }
}
