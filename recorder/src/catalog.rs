//! The recordings catalog: one SQLite table, one row per recording file.
//!
//! SQLite (bundled, WAL mode) because a self-hosted gateway should need no
//! database server, and a crash must not lose the index: the row goes in
//! before the first byte of media does, in state `recording`, so a file
//! left behind by `kill -9` is found again at the next start-up.
//!
//! Times are Unix milliseconds (UTC); formatting belongs to the callers.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Row, params};

/// Where a recording stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordingState {
    /// Being written now (or, at start-up, left behind by a crash).
    Recording,
    /// Finished cleanly.
    Complete,
    /// Cut off by a crash, then checked and repaired at start-up.
    Recovered,
    /// Closed because writing failed (disk full, I/O error).
    Failed,
}

impl RecordingState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recording => "recording",
            Self::Complete => "complete",
            Self::Recovered => "recovered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "recording" => Self::Recording,
            "complete" => Self::Complete,
            "recovered" => Self::Recovered,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// The container of a recording file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Container {
    Mp4,
    Webm,
}

impl Container {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mp4 => "mp4",
            Self::Webm => "webm",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mp4" => Some(Self::Mp4),
            "webm" => Some(Self::Webm),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        self.as_str()
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Mp4 => "video/mp4",
            Self::Webm => "video/webm",
        }
    }
}

/// What is known when a recording starts.
#[derive(Debug, Clone)]
pub struct NewRecording {
    pub stream: String,
    pub container: Container,
    pub path: PathBuf,
    pub started_at_ms: i64,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// A catalog row.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    pub id: i64,
    pub stream: String,
    pub container: Container,
    pub path: PathBuf,
    pub state: RecordingState,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub duration_ms: Option<u64>,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub size_bytes: u64,
    pub dropped_frames: u64,
    pub error: Option<String>,
}

impl Recording {
    /// The file's name, without its directory.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// How a recording ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub state: RecordingState,
    pub ended_at_ms: i64,
    pub duration_ms: u64,
    pub size_bytes: u64,
    pub dropped_frames: u64,
    pub error: Option<String>,
}

/// A listing request; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub stream: Option<String>,
    /// Recordings that started at or after this time.
    pub from_ms: Option<i64>,
    /// Recordings that started before this time.
    pub to_ms: Option<i64>,
    pub limit: u32,
    pub offset: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("catalog row {id} is corrupt: {what}")]
    Corrupt { id: i64, what: &'static str },
}

pub struct Catalog {
    db: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS recordings (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    stream          TEXT    NOT NULL,
    container       TEXT    NOT NULL,
    path            TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    started_at_ms   INTEGER NOT NULL,
    ended_at_ms     INTEGER,
    duration_ms     INTEGER,
    video_codec     TEXT,
    audio_codec     TEXT,
    width           INTEGER,
    height          INTEGER,
    size_bytes      INTEGER NOT NULL DEFAULT 0,
    dropped_frames  INTEGER NOT NULL DEFAULT 0,
    error           TEXT
);
CREATE INDEX IF NOT EXISTS recordings_stream_started ON recordings (stream, started_at_ms);
CREATE INDEX IF NOT EXISTS recordings_started ON recordings (started_at_ms);
";

const COLUMNS: &str = "id, stream, container, path, state, started_at_ms, ended_at_ms, \
     duration_ms, video_codec, audio_codec, width, height, size_bytes, dropped_frames, error";

impl Catalog {
    /// Opens (or creates) the catalog at `path`.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        let db = Connection::open(path)?;
        // WAL: readers (the download API) never wait for the writer, and a
        // crash leaves a consistent database.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        Ok(Self { db })
    }

    /// An in-memory catalog, for tests.
    pub fn in_memory() -> Result<Self, CatalogError> {
        let db = Connection::open_in_memory()?;
        db.execute_batch(SCHEMA)?;
        Ok(Self { db })
    }

    /// Registers a recording about to be written; returns its id.
    pub fn insert(&self, new: &NewRecording) -> Result<i64, CatalogError> {
        self.db.execute(
            "INSERT INTO recordings (stream, container, path, state, started_at_ms, \
             video_codec, audio_codec, width, height) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                new.stream,
                new.container.as_str(),
                new.path.to_string_lossy(),
                RecordingState::Recording.as_str(),
                new.started_at_ms,
                new.video_codec,
                new.audio_codec,
                new.width,
                new.height,
            ],
        )?;
        Ok(self.db.last_insert_rowid())
    }

    /// Records progress of a running recording (size, duration), so a crash
    /// leaves a useful row even before recovery.
    pub fn progress(
        &self,
        id: i64,
        size_bytes: u64,
        duration_ms: u64,
        dropped_frames: u64,
    ) -> Result<(), CatalogError> {
        self.db.execute(
            "UPDATE recordings SET size_bytes = ?2, duration_ms = ?3, dropped_frames = ?4 \
             WHERE id = ?1",
            params![
                id,
                size_bytes as i64,
                duration_ms as i64,
                dropped_frames as i64
            ],
        )?;
        Ok(())
    }

    pub fn finish(&self, id: i64, finished: &Finished) -> Result<(), CatalogError> {
        self.db.execute(
            "UPDATE recordings SET state = ?2, ended_at_ms = ?3, duration_ms = ?4, \
             size_bytes = ?5, dropped_frames = ?6, error = ?7 WHERE id = ?1",
            params![
                id,
                finished.state.as_str(),
                finished.ended_at_ms,
                finished.duration_ms as i64,
                finished.size_bytes as i64,
                finished.dropped_frames as i64,
                finished.error,
            ],
        )?;
        Ok(())
    }

    pub fn get(&self, id: i64) -> Result<Option<Recording>, CatalogError> {
        let sql = format!("SELECT {COLUMNS} FROM recordings WHERE id = ?1");
        let row = self.db.query_row(&sql, params![id], raw_row).optional()?;
        row.map(RawRow::parse).transpose()
    }

    /// Matching recordings, newest first, and how many match in all.
    pub fn list(&self, query: &ListQuery) -> Result<(Vec<Recording>, u64), CatalogError> {
        let filter = "WHERE (?1 IS NULL OR stream = ?1) \
             AND (?2 IS NULL OR started_at_ms >= ?2) AND (?3 IS NULL OR started_at_ms < ?3)";
        let total: i64 = self.db.query_row(
            &format!("SELECT COUNT(*) FROM recordings {filter}"),
            params![query.stream, query.from_ms, query.to_ms],
            |r| r.get(0),
        )?;
        let sql = format!(
            "SELECT {COLUMNS} FROM recordings {filter} \
             ORDER BY started_at_ms DESC, id DESC LIMIT ?4 OFFSET ?5"
        );
        let mut statement = self.db.prepare(&sql)?;
        let rows = statement
            .query_map(
                params![
                    query.stream,
                    query.from_ms,
                    query.to_ms,
                    query.limit,
                    query.offset
                ],
                raw_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let recordings = rows
            .into_iter()
            .map(RawRow::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((recordings, total.max(0) as u64))
    }

    /// Recordings in a given state, oldest first.
    pub fn in_state(&self, state: RecordingState) -> Result<Vec<Recording>, CatalogError> {
        let sql =
            format!("SELECT {COLUMNS} FROM recordings WHERE state = ?1 ORDER BY started_at_ms, id");
        self.select(&sql, params![state.as_str()])
    }

    /// Finished recordings (any state but `recording`), oldest first: the
    /// order retention deletes them in.
    pub fn finished_oldest_first(&self) -> Result<Vec<Recording>, CatalogError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM recordings WHERE state != 'recording' \
             ORDER BY started_at_ms, id"
        );
        self.select(&sql, [])
    }

    /// How many recordings there are and the bytes they take.
    pub fn totals(&self) -> Result<(u64, u64), CatalogError> {
        let (count, bytes): (i64, i64) = self.db.query_row(
            "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM recordings",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok((count.max(0) as u64, bytes.max(0) as u64))
    }

    pub fn delete(&self, id: i64) -> Result<bool, CatalogError> {
        Ok(self
            .db
            .execute("DELETE FROM recordings WHERE id = ?1", params![id])?
            > 0)
    }

    fn select(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Recording>, CatalogError> {
        let mut statement = self.db.prepare(sql)?;
        let rows = statement
            .query_map(params, raw_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(RawRow::parse).collect()
    }
}

/// A row as SQLite holds it, before its enums are checked.
struct RawRow {
    id: i64,
    stream: String,
    container: String,
    path: String,
    state: String,
    started_at_ms: i64,
    ended_at_ms: Option<i64>,
    duration_ms: Option<i64>,
    video_codec: Option<String>,
    audio_codec: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    size_bytes: i64,
    dropped_frames: i64,
    error: Option<String>,
}

fn raw_row(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: r.get(0)?,
        stream: r.get(1)?,
        container: r.get(2)?,
        path: r.get(3)?,
        state: r.get(4)?,
        started_at_ms: r.get(5)?,
        ended_at_ms: r.get(6)?,
        duration_ms: r.get(7)?,
        video_codec: r.get(8)?,
        audio_codec: r.get(9)?,
        width: r.get(10)?,
        height: r.get(11)?,
        size_bytes: r.get(12)?,
        dropped_frames: r.get(13)?,
        error: r.get(14)?,
    })
}

impl RawRow {
    fn parse(self) -> Result<Recording, CatalogError> {
        let id = self.id;
        Ok(Recording {
            id,
            stream: self.stream,
            container: Container::parse(&self.container).ok_or(CatalogError::Corrupt {
                id,
                what: "container",
            })?,
            path: PathBuf::from(self.path),
            state: RecordingState::parse(&self.state)
                .ok_or(CatalogError::Corrupt { id, what: "state" })?,
            started_at_ms: self.started_at_ms,
            ended_at_ms: self.ended_at_ms,
            duration_ms: self.duration_ms.map(|d| d.max(0) as u64),
            video_codec: self.video_codec,
            audio_codec: self.audio_codec,
            width: self.width,
            height: self.height,
            size_bytes: self.size_bytes.max(0) as u64,
            dropped_frames: self.dropped_frames.max(0) as u64,
            error: self.error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(stream: &str, started: i64) -> NewRecording {
        NewRecording {
            stream: stream.into(),
            container: Container::Mp4,
            path: PathBuf::from(format!("/r/{stream}-{started}.mp4")),
            started_at_ms: started,
            video_codec: Some("H264".into()),
            audio_codec: Some("opus".into()),
            width: Some(640),
            height: Some(360),
        }
    }

    #[test]
    fn insert_finish_get() {
        let c = Catalog::in_memory().unwrap();
        let id = c.insert(&new("a", 1000)).unwrap();
        let row = c.get(id).unwrap().unwrap();
        assert_eq!(row.state, RecordingState::Recording);
        assert_eq!(row.file_name(), "a-1000.mp4");
        c.finish(
            id,
            &Finished {
                state: RecordingState::Complete,
                ended_at_ms: 11_000,
                duration_ms: 10_000,
                size_bytes: 1234,
                dropped_frames: 2,
                error: None,
            },
        )
        .unwrap();
        let row = c.get(id).unwrap().unwrap();
        assert_eq!(row.state, RecordingState::Complete);
        assert_eq!(row.duration_ms, Some(10_000));
        assert_eq!(row.size_bytes, 1234);
        assert!(c.get(id + 1).unwrap().is_none());
    }

    #[test]
    fn list_filters_pages_newest_first() {
        let c = Catalog::in_memory().unwrap();
        for t in 0..5 {
            c.insert(&new("a", t * 1000)).unwrap();
            c.insert(&new("b", t * 1000 + 1)).unwrap();
        }
        let (rows, total) = c
            .list(&ListQuery {
                stream: Some("a".into()),
                limit: 2,
                offset: 1,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(total, 5);
        let starts: Vec<_> = rows.iter().map(|r| r.started_at_ms).collect();
        assert_eq!(starts, vec![3000, 2000]);
        let (rows, total) = c
            .list(&ListQuery {
                from_ms: Some(2000),
                to_ms: Some(4000),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(total, 4);
        assert_eq!(rows.len(), 4);
    }

    #[test]
    fn delete_and_states() {
        let c = Catalog::in_memory().unwrap();
        let a = c.insert(&new("a", 1)).unwrap();
        let b = c.insert(&new("a", 2)).unwrap();
        assert_eq!(c.in_state(RecordingState::Recording).unwrap().len(), 2);
        assert!(c.finished_oldest_first().unwrap().is_empty());
        assert!(c.delete(a).unwrap());
        assert!(!c.delete(a).unwrap());
        assert_eq!(c.in_state(RecordingState::Recording).unwrap()[0].id, b);
    }
}
