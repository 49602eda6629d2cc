//! Restream targets added over the API, so they survive a restart.
//! (Targets from the configuration file live there, not here.)

use rusqlite::{Row, params};

use super::{Store, StoreError, now_ms};
use crate::control::NewRestream;

/// A stored target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRestream {
    pub id: i64,
    pub stream: String,
    pub url: String,
    pub transcode: bool,
    pub enhanced: bool,
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<StoredRestream> {
    Ok(StoredRestream {
        id: row.get(0)?,
        stream: row.get(1)?,
        url: row.get(2)?,
        transcode: row.get(3)?,
        enhanced: row.get(4)?,
    })
}

impl Store {
    pub fn add_restream(&self, new: &NewRestream) -> Result<i64, StoreError> {
        let db = self.db();
        db.execute(
            "INSERT INTO restream_targets (stream, url, transcode, enhanced, created_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![new.stream, new.url, new.transcode, new.enhanced, now_ms()],
        )?;
        Ok(db.last_insert_rowid())
    }

    pub fn remove_restream(&self, id: i64) -> Result<(), StoreError> {
        self.db()
            .execute("DELETE FROM restream_targets WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn restreams(&self) -> Result<Vec<StoredRestream>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT id, stream, url, transcode, enhanced FROM restream_targets ORDER BY id",
        )?;
        let rows = stmt
            .query_map([], from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
