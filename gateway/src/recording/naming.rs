//! Recording file names and times.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `{dir}/{stream}-{YYYYMMDDTHHMMSSZ}.{ext}`, with `-2`, `-3`… when a file
/// of that name exists (segments started within one second). Stream names
/// are already restricted to `[A-Za-z0-9._-]`, so they are safe in paths.
pub fn new_file_path(dir: &Path, stream: &str, started: SystemTime, ext: &str) -> PathBuf {
    let stamp = compact_utc(started);
    let first = dir.join(format!("{stream}-{stamp}.{ext}"));
    if !first.exists() {
        return first;
    }
    (2..1000)
        .map(|n| dir.join(format!("{stream}-{stamp}-{n}.{ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// `20261127T150247Z`.
pub fn compact_utc(time: SystemTime) -> String {
    rfc3339(time)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// `2026-11-27T15:02:47Z` (whole seconds).
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// RFC 3339 of Unix milliseconds, with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

pub fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses an RFC 3339 time or Unix milliseconds.
pub fn parse_time_ms(raw: &str) -> Option<i64> {
    if let Ok(ms) = raw.parse::<i64>() {
        return Some(ms);
    }
    humantime::parse_rfc3339_weak(raw).ok().map(unix_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_times() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_273_367);
        assert_eq!(rfc3339(t), "2026-11-21T15:02:47Z");
        assert_eq!(compact_utc(t), "20261121T150247Z");
        assert_eq!(
            parse_time_ms("2026-11-21T15:02:47Z"),
            Some(1_795_273_367_000)
        );
        assert_eq!(parse_time_ms("1234"), Some(1234));
        assert_eq!(parse_time_ms("yesterday"), None);
        assert_eq!(rfc3339_ms(1_795_273_367_250), "2026-11-21T15:02:47.250Z");
        let dir = std::env::temp_dir().join(format!("whipcord-naming-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = new_file_path(&dir, "cam", t, "mp4");
        std::fs::write(&a, b"x").unwrap();
        let b = new_file_path(&dir, "cam", t, "mp4");
        assert_eq!(b.file_name().unwrap(), "cam-20261121T150247Z-2.mp4");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
