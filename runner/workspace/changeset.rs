//! The `Changeset` of an overlay task: a walk of the upper directory only, so
//! its cost grows with the number of changed files, not the workspace.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use super::{WorkspaceError, display_path};

/// What kind of filesystem entry changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryType {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else (fifo, socket, device).
    Other,
}

/// How an entry changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ChangeKind {
    /// New.
    Added,
    /// Content (or symlink target) changed.
    Modified,
    /// Removed.
    Deleted,
    /// Moved from another path, content unchanged.
    Renamed {
        /// The old path, relative to the workspace.
        #[serde(serialize_with = "ser_path")]
        from: PathBuf,
    },
    /// Only the permission bits changed.
    ModeChanged {
        /// Old mode bits.
        old: u32,
        /// New mode bits.
        new: u32,
    },
}

/// One changed entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Path relative to the workspace.
    #[serde(serialize_with = "ser_path")]
    pub path: PathBuf,
    /// How.
    pub kind: ChangeKind,
    /// Entry type (of the new entry; of the old one for deletions).
    pub entry: EntryType,
}

/// Everything an overlay task changed, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changeset {
    /// The changes.
    pub changes: Vec<Change>,
}

fn ser_path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&display_path(p))
}

impl Changeset {
    /// Counts per kind: (added, modified, deleted, renamed, mode changes).
    pub fn counts(&self) -> (usize, usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0, 0);
        for ch in &self.changes {
            match ch.kind {
                ChangeKind::Added => c.0 += 1,
                ChangeKind::Modified => c.1 += 1,
                ChangeKind::Deleted => c.2 += 1,
                ChangeKind::Renamed { .. } => c.3 += 1,
                ChangeKind::ModeChanged { .. } => c.4 += 1,
            }
        }
        c
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

fn entry_type(m: &std::fs::Metadata) -> EntryType {
    let t = m.file_type();
    if t.is_symlink() {
        EntryType::Symlink
    } else if t.is_dir() {
        EntryType::Dir
    } else if t.is_file() {
        EntryType::File
    } else {
        EntryType::Other
    }
}

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(p: &Path) -> bool {
    // overlayfs mounted with userxattr marks replaced directories with user.overlay.opaque.
    xattr_is(p, "user.overlay.opaque") || xattr_is(p, "trusted.overlay.opaque")
}

fn xattr_is(p: &Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let (Ok(path), Ok(name)) = (
        std::ffi::CString::new(p.as_os_str().as_bytes()),
        std::ffi::CString::new(name),
    ) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and live for the call; `buf` is
    // a valid buffer of the length passed.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

fn same_content(a: &Path, b: &Path) -> Result<bool, WorkspaceError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| WorkspaceError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    Ok(read(a)? == read(b)?)
}

/// Reads the changes an overlay task made: `upper` is its upper directory,
/// `lower` the workspace it was mounted over.
///
/// # Errors
/// When either layer cannot be read.
pub fn changeset(upper: &Path, lower: &Path) -> Result<Changeset, WorkspaceError> {
    let mut changes = Vec::new();
    walk(upper, lower, Path::new(""), &mut changes)?;
    detect_renames(upper, lower, &mut changes)?;
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Changeset { changes })
}

fn walk(
    upper: &Path,
    lower: &Path,
    rel: &Path,
    out: &mut Vec<Change>,
) -> Result<(), WorkspaceError> {
    let dir = upper.join(rel);
    let entries = std::fs::read_dir(&dir).map_err(|source| WorkspaceError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        let r = rel.join(&name);
        let up = upper.join(&r);
        let lo = lower.join(&r);
        let um = std::fs::symlink_metadata(&up).map_err(|source| WorkspaceError::Read {
            path: up.clone(),
            source,
        })?;
        let lm = std::fs::symlink_metadata(&lo).ok();
        if is_whiteout(&um) {
            if let Some(lm) = lm {
                out.push(Change {
                    path: r,
                    kind: ChangeKind::Deleted,
                    entry: entry_type(&lm),
                });
            }
            continue;
        }
        let ut = entry_type(&um);
        match (ut, lm.as_ref().map(entry_type)) {
            (EntryType::Dir, Some(EntryType::Dir)) => {
                let lm = lm.as_ref().map_or(0, |m| m.mode() & 0o7777);
                if um.mode() & 0o7777 != lm {
                    out.push(Change {
                        path: r.clone(),
                        kind: ChangeKind::ModeChanged {
                            old: lm,
                            new: um.mode() & 0o7777,
                        },
                        entry: ut,
                    });
                }
                if is_opaque(&up) {
                    deleted_below(&lo, &up, &r, out);
                }
                walk(upper, lower, &r, out)?;
            }
            (EntryType::Dir, old) => {
                if let Some(old) = old {
                    out.push(Change {
                        path: r.clone(),
                        kind: ChangeKind::Deleted,
                        entry: old,
                    });
                }
                out.push(Change {
                    path: r.clone(),
                    kind: ChangeKind::Added,
                    entry: ut,
                });
                walk(upper, lower, &r, out)?;
            }
            (_, None) => out.push(Change {
                path: r,
                kind: ChangeKind::Added,
                entry: ut,
            }),
            (EntryType::File, Some(EntryType::File)) => {
                if !same_content(&up, &lo)? {
                    out.push(Change {
                        path: r,
                        kind: ChangeKind::Modified,
                        entry: ut,
                    });
                } else if let Some(lm) = &lm
                    && um.mode() & 0o7777 != lm.mode() & 0o7777
                {
                    let kind = ChangeKind::ModeChanged {
                        old: lm.mode() & 0o7777,
                        new: um.mode() & 0o7777,
                    };
                    out.push(Change {
                        path: r,
                        kind,
                        entry: ut,
                    });
                }
            }
            (EntryType::Symlink, Some(EntryType::Symlink)) => {
                if std::fs::read_link(&up).ok() != std::fs::read_link(&lo).ok() {
                    out.push(Change {
                        path: r,
                        kind: ChangeKind::Modified,
                        entry: ut,
                    });
                }
            }
            (_, Some(old)) => {
                out.push(Change {
                    path: r.clone(),
                    kind: ChangeKind::Deleted,
                    entry: old,
                });
                out.push(Change {
                    path: r,
                    kind: ChangeKind::Added,
                    entry: ut,
                });
            }
        }
    }
    Ok(())
}

/// An opaque upper directory hides the whole lower one: every lower entry
/// missing from the upper one was deleted.
fn deleted_below(lower_dir: &Path, upper_dir: &Path, rel: &Path, out: &mut Vec<Change>) {
    let Ok(rd) = std::fs::read_dir(lower_dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if std::fs::symlink_metadata(upper_dir.join(&name)).is_err()
            && let Ok(m) = e.path().symlink_metadata()
        {
            out.push(Change {
                path: rel.join(&name),
                kind: ChangeKind::Deleted,
                entry: entry_type(&m),
            });
        }
    }
}

/// A deleted file and an added file with the same content are a rename.
fn detect_renames(
    upper: &Path,
    lower: &Path,
    changes: &mut Vec<Change>,
) -> Result<(), WorkspaceError> {
    let deleted: Vec<usize> = (0..changes.len())
        .filter(|&i| changes[i].kind == ChangeKind::Deleted && changes[i].entry == EntryType::File)
        .collect();
    let mut taken = vec![false; changes.len()];
    let mut renames = Vec::new();
    for i in 0..changes.len() {
        if changes[i].kind != ChangeKind::Added || changes[i].entry != EntryType::File {
            continue;
        }
        let new = upper.join(&changes[i].path);
        let Ok(nm) = std::fs::metadata(&new) else {
            continue;
        };
        for &d in &deleted {
            if taken[d] {
                continue;
            }
            let old = lower.join(&changes[d].path);
            if std::fs::metadata(&old).is_ok_and(|om| om.len() == nm.len())
                && same_content(&old, &new)?
            {
                taken[d] = true;
                taken[i] = true;
                renames.push(Change {
                    path: changes[i].path.clone(),
                    kind: ChangeKind::Renamed {
                        from: changes[d].path.clone(),
                    },
                    entry: EntryType::File,
                });
                break;
            }
        }
    }
    let mut i = 0;
    changes.retain(|_| {
        let keep = !taken[i];
        i += 1;
        keep
    });
    changes.extend(renames);
    Ok(())
}
