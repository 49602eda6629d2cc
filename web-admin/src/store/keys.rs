//! Stream keys: publish and watch tokens for one stream or a name pattern.

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Store, StoreError, now_ms};
use crate::pattern::glob_match;
use crate::secret;

/// What a stream key allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyAction {
    Publish,
    Watch,
}

impl KeyAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Watch => "watch",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "publish" => Some(Self::Publish),
            "watch" => Some(Self::Watch),
            _ => None,
        }
    }
}

/// A stream key as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    pub id: i64,
    pub name: String,
    /// A stream name, or a pattern with `*` and `?`.
    pub stream_pattern: String,
    pub action: KeyAction,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub last_used_at_ms: Option<i64>,
}

/// A key to create.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NewKey {
    #[serde(default)]
    pub name: String,
    pub stream_pattern: String,
    pub action: KeyAction,
    /// Lifetime from now; none: until revoked.
    pub expires_in_s: Option<u64>,
}

/// What a presented token is, for one stream and action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// A live key for this stream and action.
    Valid(i64),
    /// A key, but revoked.
    Revoked(i64),
    /// A key, but expired.
    Expired(i64),
    /// A key for another stream or action.
    NotForThis(i64),
    /// Not a stream key at all.
    Unknown,
}

const COLUMNS: &str = "id, name, stream_pattern, action, created_at_ms, expires_at_ms, \
     revoked_at_ms, last_used_at_ms";

fn from_row(row: &Row<'_>) -> rusqlite::Result<(KeyInfo, bool)> {
    let action: String = row.get(3)?;
    let parsed = KeyAction::parse(&action);
    Ok((
        KeyInfo {
            id: row.get(0)?,
            name: row.get(1)?,
            stream_pattern: row.get(2)?,
            action: parsed.unwrap_or(KeyAction::Watch),
            created_at_ms: row.get(4)?,
            expires_at_ms: row.get(5)?,
            revoked_at_ms: row.get(6)?,
            last_used_at_ms: row.get(7)?,
        },
        parsed.is_some(),
    ))
}

impl KeyInfo {
    fn live_at(&self, now: i64) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms.is_none_or(|t| t > now)
    }
}

impl Store {
    /// Creates a key; returns it and its secret (shown once).
    pub fn create_key(&self, new: &NewKey) -> Result<(KeyInfo, String), StoreError> {
        let secret = secret::generate("wck_");
        let now = now_ms();
        let expires = new
            .expires_in_s
            .map(|s| now.saturating_add((s.min(i64::MAX as u64 / 1000) as i64) * 1000));
        let db = self.db();
        db.execute(
            "INSERT INTO stream_keys (name, stream_pattern, action, secret_sha256, \
             created_at_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                new.name,
                new.stream_pattern,
                new.action.as_str(),
                secret::digest(&secret),
                now,
                expires
            ],
        )?;
        let id = db.last_insert_rowid();
        drop(db);
        let key = self.key(id)?.ok_or(StoreError::Corrupt("key vanished"))?;
        Ok((key, secret))
    }

    pub fn key(&self, id: i64) -> Result<Option<KeyInfo>, StoreError> {
        let row = self
            .db()
            .query_row(
                &format!("SELECT {COLUMNS} FROM stream_keys WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()?;
        Ok(row.map(|(key, _)| key))
    }

    /// Keys, newest first, and how many there are.
    pub fn keys(&self, limit: u32, offset: u32) -> Result<(Vec<KeyInfo>, u64), StoreError> {
        let db = self.db();
        let total: i64 = db.query_row("SELECT COUNT(*) FROM stream_keys", [], |r| r.get(0))?;
        let mut stmt = db.prepare(&format!(
            "SELECT {COLUMNS} FROM stream_keys ORDER BY id DESC LIMIT ?1 OFFSET ?2"
        ))?;
        let keys = stmt
            .query_map(params![limit, offset], from_row)?
            .map(|r| r.map(|(key, _)| key))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((keys, total.max(0) as u64))
    }

    /// Revokes a key; false if there is no such key or it was revoked.
    pub fn revoke_key(&self, id: i64) -> Result<bool, StoreError> {
        let changed = self.db().execute(
            "UPDATE stream_keys SET revoked_at_ms = ?2 WHERE id = ?1 AND revoked_at_ms IS NULL",
            params![id, now_ms()],
        )?;
        Ok(changed > 0)
    }

    /// What `presented` is for `action` on `stream`; a valid use is noted
    /// as the key's last use.
    pub fn check_key(
        &self,
        stream: &str,
        action: KeyAction,
        presented: &str,
    ) -> Result<KeyCheck, StoreError> {
        let db = self.db();
        let row = db
            .query_row(
                &format!("SELECT {COLUMNS} FROM stream_keys WHERE secret_sha256 = ?1"),
                [secret::digest(presented)],
                from_row,
            )
            .optional()?;
        let Some((key, action_known)) = row else {
            return Ok(KeyCheck::Unknown);
        };
        let now = now_ms();
        let verdict = if key.revoked_at_ms.is_some() {
            KeyCheck::Revoked(key.id)
        } else if !key.live_at(now) {
            KeyCheck::Expired(key.id)
        } else if !action_known || key.action != action || !glob_match(&key.stream_pattern, stream)
        {
            KeyCheck::NotForThis(key.id)
        } else {
            KeyCheck::Valid(key.id)
        };
        if let KeyCheck::Valid(id) = verdict {
            db.execute(
                "UPDATE stream_keys SET last_used_at_ms = ?2 WHERE id = ?1",
                params![id, now],
            )?;
        }
        Ok(verdict)
    }

    /// Whether a live key covers `action` on `stream`: such a stream then
    /// takes only keys (or the configured token), never anonymous clients.
    pub fn stream_has_keys(&self, stream: &str, action: KeyAction) -> Result<bool, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(&format!(
            "SELECT {COLUMNS} FROM stream_keys WHERE action = ?1 AND revoked_at_ms IS NULL"
        ))?;
        let now = now_ms();
        let mut rows = stmt.query([action.as_str()])?;
        while let Some(row) = rows.next()? {
            let (key, _) = from_row(row)?;
            if key.live_at(now) && glob_match(&key.stream_pattern, stream) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_key(pattern: &str, action: KeyAction) -> NewKey {
        NewKey {
            name: "test".into(),
            stream_pattern: pattern.into(),
            action,
            expires_in_s: None,
        }
    }

    #[test]
    fn keys_check_stream_action_and_revocation() {
        let store = Store::in_memory().expect("store");
        let (key, secret) = store
            .create_key(&new_key("class-*", KeyAction::Publish))
            .expect("create");
        assert_eq!(
            store
                .check_key("class-1", KeyAction::Publish, &secret)
                .expect("check"),
            KeyCheck::Valid(key.id)
        );
        assert_eq!(
            store
                .check_key("other", KeyAction::Publish, &secret)
                .expect("check"),
            KeyCheck::NotForThis(key.id)
        );
        assert_eq!(
            store
                .check_key("class-1", KeyAction::Watch, &secret)
                .expect("check"),
            KeyCheck::NotForThis(key.id)
        );
        assert_eq!(
            store
                .check_key("class-1", KeyAction::Publish, "nope")
                .expect("check"),
            KeyCheck::Unknown
        );
        assert!(
            store
                .stream_has_keys("class-2", KeyAction::Publish)
                .expect("has")
        );
        assert!(
            !store
                .stream_has_keys("class-2", KeyAction::Watch)
                .expect("has")
        );
        assert!(
            store
                .key(key.id)
                .expect("key")
                .expect("some")
                .last_used_at_ms
                .is_some()
        );

        assert!(store.revoke_key(key.id).expect("revoke"));
        assert!(!store.revoke_key(key.id).expect("twice"));
        assert_eq!(
            store
                .check_key("class-1", KeyAction::Publish, &secret)
                .expect("check"),
            KeyCheck::Revoked(key.id)
        );
        assert!(
            !store
                .stream_has_keys("class-2", KeyAction::Publish)
                .expect("has")
        );
    }

    #[test]
    fn expired_keys_stop_working() {
        let store = Store::in_memory().expect("store");
        let (key, secret) = store
            .create_key(&NewKey {
                expires_in_s: Some(0),
                ..new_key("cam", KeyAction::Watch)
            })
            .expect("create");
        assert_eq!(
            store
                .check_key("cam", KeyAction::Watch, &secret)
                .expect("check"),
            KeyCheck::Expired(key.id)
        );
        let (keys, total) = store.keys(10, 0).expect("list");
        assert_eq!((keys.len(), total), (1, 1));
    }
}
