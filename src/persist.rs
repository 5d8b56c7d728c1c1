//! Durable storage of the hub's own objects (DESIGN 5.1): `<data-dir>/objects.json`.
//!
//! Every change is written before it is applied and acknowledged: the new list goes to a
//! temporary file in the same directory, which is fsynced, renamed over `objects.json`
//! (atomic on POSIX filesystems), and the directory is fsynced so the rename itself is
//! durable. A crash at any moment leaves either the old or the new complete file, never a
//! broken one; a leftover temporary file is ignored and removed at the next start.
//!
//! When `objects.json` exists it is the hub's objects on start, exactly what was last
//! acknowledged; the config's `[[objects]]` only seed a data directory that has none.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::protocol::wire::Object;

/// The file name in the data directory.
pub const FILE_NAME: &str = "objects.json";
const TEMP_NAME: &str = "objects.json.tmp";

/// Persistence failures.
#[derive(Debug, Error)]
pub enum PersistError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file does not hold what this program writes.
    #[error("{path}: not a p2ppi-hub objects file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    objects: Vec<Object>,
}

/// The hub objects file of one data directory.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    dir: PathBuf,
}

impl ObjectStore {
    /// The store in `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.to_owned(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The persisted objects, or `None` when nothing was ever persisted.
    ///
    /// # Errors
    /// [`PersistError`] when the file cannot be read or is not ours.
    pub fn load(&self) -> Result<Option<Vec<Object>>, PersistError> {
        let _ = fs::remove_file(self.dir.join(TEMP_NAME));
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(PersistError::Io { path, source }),
        };
        let file: FileFormat = serde_json::from_str(&text).map_err(|e| PersistError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if file.version != 1 {
            return Err(PersistError::Corrupt {
                path,
                reason: format!("unknown version {}", file.version),
            });
        }
        Ok(Some(file.objects))
    }

    /// Writes `objects` durably (temp file, fsync, rename, directory fsync).
    ///
    /// # Errors
    /// [`PersistError::Io`] naming the step's file; the previous file is then intact.
    pub fn save(&self, objects: &[Object]) -> Result<(), PersistError> {
        let body = serde_json::to_vec_pretty(&FileFormat {
            version: 1,
            objects: objects.to_vec(),
        })
        .expect("objects serialize");
        write_atomically(&self.path(), &body)
    }
}

/// Replaces `path` with `body` durably: the body goes to `<path>.tmp` in the same
/// directory, which is fsynced and renamed over `path` (atomic on POSIX filesystems), then
/// the directory is fsynced so the rename itself is durable. A crash at any moment leaves
/// either the old or the new complete file. Every file the hub or its CLI rewrites goes
/// through here (`objects.json`, `blocked.json`, `crl.pem`).
///
/// # Errors
/// [`PersistError::Io`] naming the step's file; the previous file is then intact.
pub fn write_atomically(path: &Path, body: &[u8]) -> Result<(), PersistError> {
    write_file(path, body, false)
}

/// [`write_atomically`] for a secret (a private key): the file is created owner-only (0600)
/// before anything is written to it.
///
/// # Errors
/// [`PersistError::Io`] naming the step's file; the previous file is then intact.
pub fn write_secret_atomically(path: &Path, body: &[u8]) -> Result<(), PersistError> {
    write_file(path, body, true)
}

fn write_file(path: &Path, body: &[u8], private: bool) -> Result<(), PersistError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PersistError::Io { path, source }
    };
    let mut temp_name = path.file_name().unwrap_or_default().to_owned();
    temp_name.push(".tmp");
    let temp = path.with_file_name(temp_name);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&temp).map_err(io(&temp))?;
    file.write_all(body).map_err(io(&temp))?;
    file.sync_all().map_err(io(&temp))?;
    drop(file);
    fs::rename(&temp, path).map_err(io(path))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_and_nothing_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::new(dir.path());
        assert_eq!(store.load().unwrap(), None);
        let objects = vec![Object::new("a", "1"), Object::new("a", "2 \"quoted\" ✓")];
        store.save(&objects).unwrap();
        assert_eq!(store.load().unwrap(), Some(objects));
        store.save(&[]).unwrap();
        assert_eq!(store.load().unwrap(), Some(vec![]));
    }

    #[test]
    fn a_leftover_temp_file_is_ignored_and_a_broken_file_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::new(dir.path());
        store.save(&[Object::new("a", "1")]).unwrap();
        fs::write(dir.path().join(TEMP_NAME), "{half").unwrap();
        assert_eq!(store.load().unwrap(), Some(vec![Object::new("a", "1")]));
        assert!(!dir.path().join(TEMP_NAME).exists());
        fs::write(store.path(), "{half").unwrap();
        assert!(matches!(store.load(), Err(PersistError::Corrupt { .. })));
    }
}
