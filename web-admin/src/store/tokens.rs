//! API tokens: bearer tokens for `/api/v1`, made in the panel.

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Store, StoreError, now_ms};
use crate::secret;

/// An API token as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub created_at_ms: i64,
    pub last_used_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// How stale a token's last-use time may get before a request writes it:
/// a busy script must not cost a database write per call.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

const COLUMNS: &str = "id, name, created_at_ms, last_used_at_ms, revoked_at_ms";

fn from_row(row: &Row<'_>) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        id: row.get(0)?,
        name: row.get(1)?,
        created_at_ms: row.get(2)?,
        last_used_at_ms: row.get(3)?,
        revoked_at_ms: row.get(4)?,
    })
}

impl Store {
    /// Creates a token; returns it and its secret (shown once).
    pub fn create_token(&self, name: &str) -> Result<(TokenInfo, String), StoreError> {
        let secret = secret::generate("wct_");
        let db = self.db();
        db.execute(
            "INSERT INTO api_tokens (name, secret_sha256, created_at_ms) VALUES (?1, ?2, ?3)",
            params![name, secret::digest(&secret), now_ms()],
        )?;
        let id = db.last_insert_rowid();
        let token = db.query_row(
            &format!("SELECT {COLUMNS} FROM api_tokens WHERE id = ?1"),
            [id],
            from_row,
        )?;
        Ok((token, secret))
    }

    /// Tokens, newest first, and how many there are.
    pub fn tokens(&self, limit: u32, offset: u32) -> Result<(Vec<TokenInfo>, u64), StoreError> {
        let db = self.db();
        let total: i64 = db.query_row("SELECT COUNT(*) FROM api_tokens", [], |r| r.get(0))?;
        let mut stmt = db.prepare(&format!(
            "SELECT {COLUMNS} FROM api_tokens ORDER BY id DESC LIMIT ?1 OFFSET ?2"
        ))?;
        let tokens = stmt
            .query_map(params![limit, offset], from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((tokens, total.max(0) as u64))
    }

    pub fn revoke_token(&self, id: i64) -> Result<bool, StoreError> {
        let changed = self.db().execute(
            "UPDATE api_tokens SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
            params![id, now_ms()],
        )?;
        Ok(changed > 0)
    }

    /// The live token whose secret is `presented`, noting its use.
    pub fn check_token(&self, presented: &str) -> Result<Option<TokenInfo>, StoreError> {
        let db = self.db();
        let token = db
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM api_tokens \
                     WHERE secret_sha256 = ?1 AND revoked_at_ms IS NULL"
                ),
                [secret::digest(presented)],
                from_row,
            )
            .optional()?;
        if let Some(token) = &token {
            let now = now_ms();
            if token
                .last_used_at_ms
                .is_none_or(|t| now - t > LAST_USED_RESOLUTION_MS)
            {
                db.execute(
                    "UPDATE api_tokens SET last_used_at_ms = ?2 WHERE id = ?1",
                    params![token.id, now],
                )?;
            }
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_work_until_revoked() {
        let store = Store::in_memory().expect("store");
        let (token, secret) = store.create_token("ci").expect("create");
        assert_eq!(
            store.check_token(&secret).expect("check").map(|t| t.id),
            Some(token.id)
        );
        assert!(store.check_token("wct_nope").expect("check").is_none());
        assert!(store.revoke_token(token.id).expect("revoke"));
        assert!(store.check_token(&secret).expect("check").is_none());
        let (tokens, total) = store.tokens(10, 0).expect("list");
        assert_eq!(total, 1);
        assert!(tokens[0].revoked_at_ms.is_some());
        assert!(tokens[0].last_used_at_ms.is_some());
    }
}
