//! Tasks: ids and where their state lives.
//!
//! Owns the state directory layout. Refuses to place state anywhere a sandbox
//! can reach (the native backend hides the state directory from every task).

mod store;

use std::path::{Path, PathBuf};

pub use store::{Approval, Lifecycle, TaskDir, TaskRecord, command_digest};

/// Why the task store failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No task by that id.
    #[error("no task `{id}`. Hint: `taskbox task list`")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// File I/O in the store.
    #[error("task store: cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be parsed.
    #[error("task store: {path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
}

/// A task id: a ULID, sortable by creation time.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct TaskId(pub(crate) String);

impl TaskId {
    /// A fresh id: the time, and 80 bits straight from the kernel's
    /// `getrandom`. (`Ulid::generate` seeds a ChaCha generator first, whose
    /// CPU feature probe and, in a static binary, `/dev/random` poll and
    /// `/dev/urandom` read cost more than the rest of the id; it remains
    /// the fallback.)
    pub fn new() -> Self {
        let mut bits = [0u8; 16];
        // SAFETY: getrandom writes at most `bits.len()` bytes into `bits`.
        let n = unsafe { libc::getrandom(bits.as_mut_ptr().cast(), bits.len(), 0) };
        if usize::try_from(n).ok() != Some(bits.len()) {
            return Self(ulid::Ulid::generate().to_string());
        }
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self(ulid::Ulid::from_parts(ms, u128::from_le_bytes(bits)).to_string())
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The runner's state directory: audit log, per-task directories.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// `$TASKBOX_STATE_DIR`, else `$XDG_STATE_HOME/taskbox`, else `~/.local/state/taskbox`.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Self {
        let root = get("TASKBOX_STATE_DIR")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                get("XDG_STATE_HOME")
                    .filter(|s| s.starts_with('/'))
                    .map(|s| PathBuf::from(s).join("taskbox"))
            })
            .unwrap_or_else(|| {
                PathBuf::from(get("HOME").unwrap_or_else(|| "/".into()))
                    .join(".local/state/taskbox")
            });
        Self {
            root: crate::profile::normalize(&std::path::absolute(&root).unwrap_or(root)),
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The audit log.
    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit.log")
    }

    /// A task's private temporary directory on the host (Landlock-only mode).
    pub fn task_tmp(&self, id: &TaskId) -> PathBuf {
        self.root.join("tmp").join(id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifecycle_reads_as_its_state_name() {
        // What `task list` shows and what the refusals of promote, revert
        // and discard say (not Rust's debug form).
        assert_eq!(Lifecycle::Refused { code: 126 }.word(), "refused");
        assert_eq!(Lifecycle::Ran { status: 0 }.word(), "ran");
        assert_eq!(Lifecycle::Promoted { commit: None }.word(), "promoted");
    }

    #[test]
    fn task_ids_are_ulids_of_now_and_never_repeat() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let ids: Vec<TaskId> = (0..1000).map(|_| TaskId::new()).collect();
        let mut uniq: Vec<&str> = ids.iter().map(TaskId::as_str).collect();
        uniq.sort_unstable();
        uniq.dedup();
        assert_eq!(uniq.len(), ids.len());
        for id in &ids {
            let u = ulid::Ulid::from_string(id.as_str()).unwrap();
            let ms = u128::from(u.timestamp_ms());
            assert!(ms >= before && ms < before + 60_000, "{id:?}");
            assert_ne!(u.random(), 0, "{id:?}");
        }
    }

    #[test]
    fn state_dir_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            StateDir::from_env(env(&[("TASKBOX_STATE_DIR", "/s"), ("HOME", "/h")])).root(),
            Path::new("/s")
        );
        assert_eq!(
            StateDir::from_env(env(&[("XDG_STATE_HOME", "/x"), ("HOME", "/h")])).root(),
            Path::new("/x/taskbox")
        );
        assert_eq!(
            StateDir::from_env(env(&[("HOME", "/h")])).root(),
            Path::new("/h/.local/state/taskbox")
        );
    }

    #[test]
    fn ids_are_unique_ulids() {
        let a = TaskId::new();
        let b = TaskId::new();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 26);
    }
}
