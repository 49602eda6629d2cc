//! Start-up recovery and retention.

use std::time::{Duration, SystemTime};

use recorder::catalog::{Catalog, Container, Finished, Recording, RecordingState};
use tracing::{info, warn};

use super::naming;

/// Rows left `recording` by a crash: the file is checked and repaired
/// (an MP4 loses its incomplete last fragment; a WebM file is cut after its
/// last whole block and gets its duration), and the row is marked
/// `recovered`, or `failed` if nothing usable is left.
pub fn recover(catalog: &Catalog) {
    let stale = match catalog.in_state(RecordingState::Recording) {
        Ok(rows) => rows,
        Err(err) => {
            warn!("cannot read the catalog for recovery: {err}");
            return;
        }
    };
    for row in stale {
        let finished = match repair(&row) {
            Ok((duration_ms, size)) => Finished {
                state: RecordingState::Recovered,
                ended_at_ms: row.started_at_ms + duration_ms as i64,
                duration_ms,
                size_bytes: size,
                dropped_frames: row.dropped_frames,
                error: None,
            },
            Err(why) => Finished {
                state: RecordingState::Failed,
                ended_at_ms: row.started_at_ms + row.duration_ms.unwrap_or(0) as i64,
                duration_ms: row.duration_ms.unwrap_or(0),
                size_bytes: std::fs::metadata(&row.path).map(|m| m.len()).unwrap_or(0),
                dropped_frames: row.dropped_frames,
                error: Some(why),
            },
        };
        info!(
            id = row.id,
            file = %row.path.display(),
            state = finished.state.as_str(),
            duration_ms = finished.duration_ms,
            "recording left open by a crash: {}",
            finished.error.as_deref().unwrap_or("recovered")
        );
        if let Err(err) = catalog.finish(row.id, &finished) {
            warn!(id = row.id, "catalog update failed: {err}");
        }
    }
}

/// Returns the media duration (ms) and size of the repaired file.
fn repair(row: &Recording) -> Result<(u64, u64), String> {
    let size = std::fs::metadata(&row.path)
        .map_err(|e| format!("file unreadable: {e}"))?
        .len();
    match row.container {
        Container::Mp4 => {
            let summary = recorder::mp4::recover(&row.path).map_err(|e| e.to_string())?;
            Ok((summary.duration.as_millis() as u64, summary.bytes))
        }
        Container::Webm => {
            if size == 0 {
                return Err("file is empty".into());
            }
            let summary = recorder::webm::recover(&row.path).map_err(|e| e.to_string())?;
            Ok((summary.duration.as_millis() as u64, summary.bytes))
        }
    }
}

pub struct Limits {
    pub max_age: Option<Duration>,
    pub max_total_bytes: Option<u64>,
}

/// Deletes finished recordings, oldest first, until both limits hold;
/// returns how many went.
pub fn enforce(catalog: &Catalog, limits: &Limits) -> usize {
    let rows = match catalog.finished_oldest_first() {
        Ok(rows) => rows,
        Err(err) => {
            warn!("retention: cannot read the catalog: {err}");
            return 0;
        }
    };
    let now_ms = naming::unix_ms(SystemTime::now());
    let mut total: u64 = rows.iter().map(|r| r.size_bytes).sum();
    let mut deleted = 0;
    for row in rows {
        let too_old = limits
            .max_age
            .is_some_and(|age| now_ms - row.started_at_ms > age.as_millis() as i64);
        let too_big = limits.max_total_bytes.is_some_and(|max| total > max);
        if !(too_old || too_big) {
            continue;
        }
        if let Err(err) = std::fs::remove_file(&row.path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            warn!(
                id = row.id,
                "retention: cannot delete {}: {err}",
                row.path.display()
            );
            continue;
        }
        if let Err(err) = catalog.delete(row.id) {
            warn!(id = row.id, "retention: catalog delete failed: {err}");
            continue;
        }
        info!(
            id = row.id,
            stream = %row.stream,
            file = %row.path.display(),
            size = row.size_bytes,
            reason = if too_old { "max age" } else { "max total size" },
            "retention deleted a recording"
        );
        total = total.saturating_sub(row.size_bytes);
        deleted += 1;
    }
    deleted
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use recorder::catalog::NewRecording;

    use super::*;

    /// A finished recording of `size` bytes that started `age` ago, with a
    /// real file behind it.
    fn add(
        catalog: &Catalog,
        dir: &std::path::Path,
        name: &str,
        age: Duration,
        size: u64,
    ) -> (i64, PathBuf) {
        let path = dir.join(format!("{name}.mp4"));
        std::fs::write(&path, vec![0u8; size as usize]).unwrap();
        let started = naming::unix_ms(SystemTime::now()) - age.as_millis() as i64;
        let id = catalog
            .insert(&NewRecording {
                stream: name.into(),
                container: Container::Mp4,
                path: path.clone(),
                started_at_ms: started,
                video_codec: None,
                audio_codec: None,
                width: None,
                height: None,
            })
            .unwrap();
        catalog
            .finish(
                id,
                &Finished {
                    state: RecordingState::Complete,
                    ended_at_ms: started + 1000,
                    duration_ms: 1000,
                    size_bytes: size,
                    dropped_frames: 0,
                    error: None,
                },
            )
            .unwrap();
        (id, path)
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("whipcord-retention-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn max_age_deletes_only_old_recordings() {
        let dir = temp_dir("age");
        let catalog = Catalog::in_memory().unwrap();
        let hour = Duration::from_secs(3600);
        let (old, old_path) = add(&catalog, &dir, "old", 30 * hour, 10);
        let (young, young_path) = add(&catalog, &dir, "young", hour, 10);
        let limits = Limits {
            max_age: Some(24 * hour),
            max_total_bytes: None,
        };
        assert_eq!(enforce(&catalog, &limits), 1);
        assert!(catalog.get(old).unwrap().is_none() && !old_path.exists());
        assert!(catalog.get(young).unwrap().is_some() && young_path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn max_total_size_deletes_oldest_first() {
        let dir = temp_dir("size");
        let catalog = Catalog::in_memory().unwrap();
        let min = Duration::from_secs(60);
        let (a, _) = add(&catalog, &dir, "a", 3 * min, 400);
        let (b, _) = add(&catalog, &dir, "b", 2 * min, 400);
        let (c, _) = add(&catalog, &dir, "c", min, 400);
        // A recording still being written is never a candidate.
        let open = catalog
            .insert(&NewRecording {
                stream: "live".into(),
                container: Container::Webm,
                path: dir.join("live.webm"),
                started_at_ms: 0,
                video_codec: None,
                audio_codec: None,
                width: None,
                height: None,
            })
            .unwrap();
        let limits = Limits {
            max_age: None,
            max_total_bytes: Some(900),
        };
        assert_eq!(enforce(&catalog, &limits), 1);
        assert!(catalog.get(a).unwrap().is_none());
        assert!(catalog.get(b).unwrap().is_some() && catalog.get(c).unwrap().is_some());
        assert!(catalog.get(open).unwrap().is_some());
        assert_eq!(enforce(&catalog, &limits), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
