//! The task store: one directory per task under `<state>/tasks/`, holding its
//! record (`task.json`) and, for overlay tasks, the overlay's upper and work
//! directories (the upper directory *is* the changeset).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{StateDir, TaskError, TaskId};

/// Where a task is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Lifecycle {
    /// The command is running (or the runner died while it ran).
    Running,
    /// The command ended; its changes (if any) wait for promote or discard.
    Ran {
        /// Shell-style status.
        status: i32,
    },
    /// Policy or setup refused it; nothing ran.
    Refused {
        /// Exit code given.
        code: i32,
    },
    /// The changeset was applied to the workspace.
    Promoted {
        /// Commit id, in a git workspace.
        commit: Option<String>,
    },
    /// The changeset was thrown away.
    Discarded,
    /// Waiting for a human's approval; nothing has run.
    Pending {
        /// Digest of the command and workspace the approval must match.
        command_digest: String,
    },
    /// Approved; `taskbox run --task ID` runs exactly this plan.
    Approved {
        /// The approval.
        approval: Approval,
    },
    /// A human refused it.
    Denied {
        /// Who.
        by: String,
        /// Why.
        reason: Option<String>,
    },
    /// A promoted task was undone.
    Reverted {
        /// The revert commit, in a git workspace.
        commit: Option<String>,
    },
}

impl Lifecycle {
    /// The state's name as `task list` shows it (`ran`, `refused`, ...).
    pub fn word(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v["state"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into())
    }
}

/// A human's approval, bound to the profile and command it was given for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Who approved.
    pub by: String,
    /// Why.
    pub reason: Option<String>,
    /// RFC 3339 time.
    pub at: String,
    /// Digest of the profile approved.
    pub profile_digest: String,
    /// Digest of the command and workspace approved.
    pub command_digest: String,
}

/// sha-256 over the command and the workspace: what an approval is bound to.
pub fn command_digest(argv: &[String], workspace: &Path) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for a in argv {
        h.update(a.as_bytes());
        h.update([0]);
    }
    h.update([1]);
    h.update(workspace.as_os_str().as_encoded_bytes());
    hex::encode(h.finalize())
}

/// What the store keeps about a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Id.
    pub id: TaskId,
    /// RFC 3339 creation time.
    pub created: String,
    /// Acting agent.
    pub agent: Option<String>,
    /// Accountable human.
    pub on_behalf_of: Option<String>,
    /// Profile name.
    pub profile: String,
    /// The profile as given to `-p` (a name or a path), to load it again.
    #[serde(default)]
    pub profile_ref: String,
    /// Profile digest.
    pub profile_digest: String,
    /// Command.
    pub argv: Vec<String>,
    /// Workspace (host path).
    pub workspace: PathBuf,
    /// Whether writes went to an overlay (and so there is a changeset).
    pub overlay: bool,
    /// The profile's deny paths inside the workspace, relative to it
    /// (globs kept): promote refuses a change at any of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<String>,
    /// Lifecycle state.
    pub lifecycle: Lifecycle,
}

/// Directory layout of one task.
#[derive(Debug, Clone)]
pub struct TaskDir {
    root: PathBuf,
}

impl TaskDir {
    /// The task's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The overlay's upper directory: the task's writes.
    pub fn upper(&self) -> PathBuf {
        self.root.join("upper")
    }

    /// The overlay's work directory.
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    fn record(&self) -> PathBuf {
        self.root.join("task.json")
    }
}

/// Makes `p` and its missing parents, accessible to the user only.
fn private_dir(p: &Path) -> Result<(), TaskError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(|source| TaskError::Io {
            path: p.to_path_buf(),
            source,
        })
}

impl StateDir {
    /// Where a task's files live.
    pub fn task_dir(&self, id: &TaskId) -> TaskDir {
        TaskDir {
            root: self.root().join("tasks").join(id.as_str()),
        }
    }

    /// Makes the directory the tasks live in (and the state dir), private
    /// to the user. The runner does it before it sends an overlay task's
    /// plan: the stage makes that task's directories from inside its user
    /// namespace, where root cannot create the state dir under a parent
    /// that belongs to another user.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn ensure_tasks_dir(&self) -> Result<(), TaskError> {
        private_dir(&self.root().join("tasks"))
    }

    /// Creates a task's directory (and overlay directories when asked).
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn create_task(&self, id: &TaskId, overlay: bool) -> Result<TaskDir, TaskError> {
        let dir = self.task_dir(id);
        private_dir(dir.root())?;
        if overlay {
            private_dir(&dir.upper())?;
            private_dir(&dir.work())?;
        }
        Ok(dir)
    }

    /// Writes a task's record in one `write` (a killed runner cannot leave
    /// half of it), in place: a temporary file and a rename, per save, cost
    /// more than the rest of a short task's bookkeeping. A shorter record
    /// is padded with spaces to the old length (valid JSON either way), so
    /// the file is never truncated first.
    ///
    /// # Errors
    /// When the record cannot be written.
    pub fn save(&self, rec: &TaskRecord) -> Result<(), TaskError> {
        use std::os::unix::fs::FileExt as _;
        let dir = self.task_dir(&rec.id);
        let path = dir.record();
        let mut body = serde_json::to_vec_pretty(rec).map_err(|e| TaskError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        body.push(b'\n');
        let io = |source| TaskError::Io {
            path: path.clone(),
            source,
        };
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let old = f.metadata().map_err(io)?.len();
        if let Ok(old) = usize::try_from(old)
            && old > body.len()
        {
            body.resize(old, b' ');
        }
        f.write_all_at(&body, 0).map_err(io)
    }

    /// Reads a task's record.
    ///
    /// # Errors
    /// Unknown id, unreadable or corrupt record.
    pub fn load(&self, id: &str) -> Result<TaskRecord, TaskError> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(TaskError::NotFound { id: id.to_owned() });
        }
        let path = self.task_dir(&TaskId(id.to_owned())).record();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TaskError::NotFound { id: id.to_owned() });
            }
            Err(source) => return Err(TaskError::Io { path, source }),
        };
        serde_json::from_slice(&bytes).map_err(|e| TaskError::Corrupt {
            path,
            message: e.to_string(),
        })
    }

    /// Every task's record, oldest first.
    ///
    /// # Errors
    /// When the store cannot be listed.
    pub fn list(&self) -> Result<Vec<TaskRecord>, TaskError> {
        let dir = self.root().join("tasks");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(TaskError::Io { path: dir, source }),
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids.iter().filter_map(|id| self.load(id).ok()).collect())
    }

    /// Removes a task's overlay directories (its changeset), keeping its record.
    ///
    /// # Errors
    /// When the directories cannot be removed.
    pub fn drop_changes(&self, id: &TaskId) -> Result<(), TaskError> {
        let dir = self.task_dir(id);
        for p in [dir.upper(), dir.work()] {
            make_removable(&p);
            match std::fs::remove_dir_all(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(TaskError::Io { path: p, source }),
            }
        }
        Ok(())
    }
}

impl StateDir {
    /// Removes a task entirely: record and changes.
    ///
    /// # Errors
    /// When its directory cannot be removed.
    pub fn remove(&self, id: &TaskId) -> Result<(), TaskError> {
        let dir = self.task_dir(id);
        make_removable(dir.root());
        std::fs::remove_dir_all(dir.root()).map_err(|source| TaskError::Io {
            path: dir.root().to_path_buf(),
            source,
        })
    }
}

/// overlayfs leaves its work directory mode 000; make directories traversable.
fn make_removable(p: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return;
    };
    if meta.is_dir() {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                make_removable(&e.path());
            }
        }
    }
}
