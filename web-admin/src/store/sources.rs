//! RTSP sources added over the API, so they survive a restart. (Sources
//! from the configuration file live there, not here.) The URL is stored
//! as given, credentials included: the camera needs them after a restart
//! too, and the database is the gateway's own, like its config file.

use rusqlite::{Row, params};

use super::{Store, StoreError, now_ms};
use crate::control::NewSource;

fn from_row(row: &Row<'_>) -> rusqlite::Result<NewSource> {
    Ok(NewSource {
        stream: row.get(0)?,
        url: row.get(1)?,
        transport: row.get(2)?,
        on_demand: row.get(3)?,
    })
}

impl Store {
    pub fn add_source(&self, new: &NewSource) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT OR REPLACE INTO rtsp_sources (stream, url, transport, on_demand, created_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![new.stream, new.url, new.transport, new.on_demand, now_ms()],
        )?;
        Ok(())
    }

    pub fn remove_source(&self, stream: &str) -> Result<(), StoreError> {
        self.db()
            .execute("DELETE FROM rtsp_sources WHERE stream = ?1", [stream])?;
        Ok(())
    }

    pub fn sources(&self) -> Result<Vec<NewSource>, StoreError> {
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT stream, url, transport, on_demand FROM rtsp_sources ORDER BY id")?;
        let rows = stmt
            .query_map([], from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_kept_and_forgotten() {
        let store = Store::in_memory().expect("store");
        let cam = NewSource {
            stream: "door".into(),
            url: "rtsp://admin:pw@10.0.0.7/s1".into(),
            transport: Some("udp".into()),
            on_demand: true,
        };
        store.add_source(&cam).expect("add");
        let kept = store.sources().expect("list");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].url, cam.url);
        assert_eq!(kept[0].transport.as_deref(), Some("udp"));
        assert!(kept[0].on_demand);
        store.remove_source("door").expect("remove");
        assert!(store.sources().expect("list").is_empty());
    }
}
