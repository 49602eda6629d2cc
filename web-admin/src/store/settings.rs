//! Settings kept across restarts, as key/value pairs.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};

/// The argon2 hash (PHC string) of the admin password.
pub const ADMIN_PASSWORD_HASH: &str = "admin_password_hash";

impl Store {
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .db()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}
