//! Workspaces: what an overlay task changed (the `Changeset`, read from the
//! overlay's upper directory), how it reads as a diff, and promote/discard.
//!
//! Owns reading the upper layer and applying it. Refuses entries that would
//! resolve outside the workspace.

mod changeset;
mod diff;
mod promote;

pub use changeset::{Change, ChangeKind, Changeset, EntryType, changeset};
pub use diff::{render_diff, render_stat};
pub use promote::{Base, PromoteError, PromoteSpec, Promoted, promote, revert};

use std::path::PathBuf;

/// Why a workspace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// Reading the upper or lower layer failed.
    #[error("cannot read {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Writes a path for people: UTF-8 as is, other bytes escaped as `\xNN`,
/// control characters (a newline in a name) escaped too.
pub fn display_path(p: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let mut out = String::new();
    for chunk in p.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// For a git worktree (`.git` is a file naming its git dir), the git dir and
/// the common dir when they lie outside the workspace; empty otherwise.
pub fn git_dirs_outside(workspace: &std::path::Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(workspace.join(".git")) else {
        return Vec::new();
    };
    let Some(gitdir) = text.lines().find_map(|l| l.strip_prefix("gitdir: ")) else {
        return Vec::new();
    };
    let gitdir = workspace.join(gitdir.trim());
    let Ok(gitdir) = std::fs::canonicalize(gitdir) else {
        return Vec::new();
    };
    let mut out = vec![gitdir.clone()];
    if let Ok(common) = std::fs::read_to_string(gitdir.join("commondir"))
        && let Ok(c) = std::fs::canonicalize(gitdir.join(common.trim()))
    {
        out.push(c);
    }
    out.retain(|d| !d.starts_with(workspace));
    out
}

/// Files of a changeset that hold a granted credential's value, with the
/// grants' names (never the values); kept in the task directory so `task
/// diff` withholds their content and `task promote` refuses them.
pub type Withheld = Vec<(PathBuf, Vec<String>)>;

const WITHHELD_FILE: &str = "credential-paths.json";

/// Records `w` in `task_dir`.
///
/// # Errors
/// When the file cannot be written.
pub fn save_withheld(task_dir: &std::path::Path, w: &Withheld) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let rows: Vec<(String, &Vec<String>)> = w
        .iter()
        .map(|(p, g)| (hex::encode(p.as_os_str().as_bytes()), g))
        .collect();
    std::fs::write(
        task_dir.join(WITHHELD_FILE),
        serde_json::to_vec(&rows).map_err(std::io::Error::other)?,
    )
}

/// What [`save_withheld`] recorded (nothing when the task had no grants).
pub fn load_withheld(task_dir: &std::path::Path) -> Withheld {
    use std::os::unix::ffi::OsStringExt as _;
    let Ok(text) = std::fs::read(task_dir.join(WITHHELD_FILE)) else {
        return Vec::new();
    };
    let rows: Vec<(String, Vec<String>)> = serde_json::from_slice(&text).unwrap_or_default();
    rows.into_iter()
        .filter_map(|(h, g)| {
            Some((
                PathBuf::from(std::ffi::OsString::from_vec(hex::decode(h).ok()?)),
                g,
            ))
        })
        .collect()
}
