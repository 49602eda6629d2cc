//! Writing key material: private files, replaced atomically so a crash
//! never leaves half a key for the next start to trip over.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::TlsError;

/// Owner read/write only: private keys and ACME account credentials.
pub const PRIVATE: u32 = 0o600;
/// Certificates are public, but live next to their keys.
pub const PUBLIC: u32 = 0o644;

/// Creates `dir` (and parents), owner-only when it is new.
pub fn create_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Writes `data` to a temporary file with `mode` beside `path`, syncs it
/// and renames it over `path`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = temp_path(path);
    let result = (|| {
        // A leftover from a crash may have other permissions: start afresh.
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        TlsError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// Reads a file, `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, TlsError> {
    match std::fs::read(path) {
        Ok(data) => Ok(Some(data)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn writes_private_files_atomically() {
        let dir = std::env::temp_dir().join(format!("whipcord-tls-disk-{}", std::process::id()));
        create_dir(&dir).expect("dir");
        let path = dir.join("k.pem");
        write_atomic(&path, b"one", PRIVATE).expect("write");
        write_atomic(&path, b"two", PRIVATE).expect("overwrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!temp_path(&path).exists());
        assert_eq!(read_optional(&dir.join("absent")).expect("read"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
