//! Persistent storage behind one trait: the card commits its whole serialised state
//! atomically before it answers a command that changed it.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use zeroize::Zeroizing;

/// Storage failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError {
    message: String,
}

impl StoreError {
    pub fn new(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "card store: {}", self.message)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for StoreError {}

#[cfg(feature = "std")]
impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::new(alloc::format!("{e}"))
    }
}

/// Where the card keeps its state. `commit` must be atomic: after a crash, `load` returns
/// either the previous state or the new one, never a mix.
pub trait Store {
    /// The last committed state, or `None` for a blank card.
    fn load(&mut self) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replace the state atomically and durably.
    fn commit(&mut self, state: &[u8]) -> Result<(), StoreError>;
}

impl<T: Store + ?Sized> Store for &mut T {
    fn load(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).load()
    }
    fn commit(&mut self, state: &[u8]) -> Result<(), StoreError> {
        (**self).commit(state)
    }
}

/// In-memory store for tests and the in-process transport. It can be told to fail commits,
/// which simulates a torn write (power lost before the new state was durable).
#[derive(Default)]
pub struct MemoryStore {
    data: Option<Zeroizing<Vec<u8>>>,
    fail_commits: bool,
    commits: usize,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.data.as_ref().map(|d| d.len()))
            .field("fail_commits", &self.fail_commits)
            .field("commits", &self.commits)
            .finish()
    }
}

impl MemoryStore {
    /// A blank card.
    pub fn new() -> Self {
        Self::default()
    }

    /// A card whose store already holds `state` (e.g. copied from another card's store).
    pub fn with_state(state: Vec<u8>) -> Self {
        MemoryStore {
            data: Some(Zeroizing::new(state)),
            ..Self::default()
        }
    }

    /// While set, every commit fails and leaves the stored state as it was.
    pub fn set_fail_commits(&mut self, fail: bool) {
        self.fail_commits = fail;
    }

    /// The committed state.
    pub fn data(&self) -> Option<&[u8]> {
        self.data.as_deref().map(|v| v.as_slice())
    }

    /// Number of successful commits.
    pub fn commits(&self) -> usize {
        self.commits
    }
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.data.as_ref().map(|d| d.to_vec()))
    }

    fn commit(&mut self, state: &[u8]) -> Result<(), StoreError> {
        if self.fail_commits {
            return Err(StoreError::new("simulated power loss"));
        }
        self.data = Some(Zeroizing::new(state.to_vec()));
        self.commits += 1;
        Ok(())
    }
}

#[cfg(feature = "std")]
mod file {
    use super::{Store, StoreError};
    use std::fs::{self, File, OpenOptions};
    use std::io::{ErrorKind, Write};
    use std::path::{Path, PathBuf};

    /// A state file replaced atomically: write `FILE.tmp`, fsync it, rename it over `FILE`,
    /// fsync the directory. A missing file is a blank card.
    #[derive(Debug, Clone)]
    pub struct FileStore {
        path: PathBuf,
    }

    impl FileStore {
        pub fn new(path: impl Into<PathBuf>) -> Self {
            FileStore { path: path.into() }
        }

        pub fn path(&self) -> &Path {
            &self.path
        }

        fn tmp_path(&self) -> PathBuf {
            let mut name = self.path.as_os_str().to_owned();
            name.push(".tmp");
            PathBuf::from(name)
        }
    }

    impl Store for FileStore {
        fn load(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
            match fs::read(&self.path) {
                Ok(data) => Ok(Some(data)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::new(format!("{}: {e}", self.path.display()))),
            }
        }

        fn commit(&mut self, state: &[u8]) -> Result<(), StoreError> {
            let tmp = self.tmp_path();
            let res = (|| -> std::io::Result<()> {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    f.set_permissions(fs::Permissions::from_mode(0o600))?;
                }
                f.write_all(state)?;
                f.sync_all()?;
                drop(f);
                fs::rename(&tmp, &self.path)?;
                let dir = match self.path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                File::open(dir)?.sync_all()?;
                Ok(())
            })();
            res.map_err(|e| {
                let _ = fs::remove_file(&tmp);
                StoreError::new(format!("{}: {e}", self.path.display()))
            })
        }
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    mod tests {
        use super::*;

        #[test]
        fn file_store_round_trip() {
            let dir = tempfile::tempdir().unwrap();
            let mut s = FileStore::new(dir.path().join("card.state"));
            assert_eq!(s.load().unwrap(), None);
            s.commit(b"one").unwrap();
            s.commit(b"two").unwrap();
            assert_eq!(s.load().unwrap().as_deref(), Some(&b"two"[..]));
            assert!(!s.tmp_path().exists());
        }

        #[test]
        fn commit_into_missing_directory_fails() {
            let dir = tempfile::tempdir().unwrap();
            let mut s = FileStore::new(dir.path().join("nope/card.state"));
            assert!(s.commit(b"x").is_err());
        }
    }
}

#[cfg(feature = "std")]
pub use file::FileStore;
