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
