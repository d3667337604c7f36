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
/// control characters (a newline in a name) escaped too, and the
/// invisible and bidi formatting characters (see [`invisible`]).
pub fn display_path(p: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let mut out = String::new();
    for chunk in p.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else if invisible(c) {
                out.push_str(&format!("\\u{{{:04x}}}", c as u32));
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

/// `text` with what could rewrite a reviewer's terminal or reorder what it
/// shows made visible (task-made text a human reads: a diff, a command to
/// approve): C0 and C1 controls but tab and newline (escape
/// sequences clear the screen, move the cursor, hide lines), and the
/// invisible and bidirectional formatting characters of "Trojan Source".
pub fn for_terminal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        let c = ch as u32;
        match ch {
            '\n' | '\t' => out.push(ch),
            // A CRLF line end moves nothing on screen; a lone CR rewrites the line.
            '\r' if chars.peek() == Some(&'\n') => out.push(ch),
            _ if c < 0x20 || c == 0x7f => out.push_str(&format!("\\x{c:02x}")),
            _ if invisible(ch) => {
                out.push_str(&format!("\\u{{{c:04x}}}"));
            }
            _ => out.push(ch),
        }
    }
    out
}

/// What a terminal acts on or hides without showing, past C0: the C1
/// controls, and the invisible and bidirectional formatting characters
/// (zero-width spaces and joiners, marks, embeddings, overrides and
/// isolates, the byte-order mark).
fn invisible(ch: char) -> bool {
    let c = ch as u32;
    (0x80..=0x9f).contains(&c)
        || (0x200b..=0x200f).contains(&c)
        || (0x202a..=0x202e).contains(&c)
        || (0x2060..=0x2069).contains(&c)
        || c == 0xfeff
}

/// JSON text for a terminal: serde_json escapes C0 controls but writes
/// other characters as they are, so the C1 controls and the invisible and
/// bidi formatting characters a task chose (in its argv, in a path) become
/// `\uNNNN` escapes too: the same JSON, shown as it is.
pub fn json_for_terminal(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for ch in json.chars() {
        if invisible(ch) {
            out.push_str(&format!("\\u{:04x}", ch as u32));
        } else {
            out.push(ch);
        }
    }
    out
}

/// A command line for people (a plan to approve, a task list): each
/// argument as [`for_terminal`] shows it, in single quotes where it holds
/// anything but letters, digits and `-_./=:,+@%`, so that one argument
/// with spaces cannot pass for several.
pub fn display_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let shown = for_terminal(a);
            let plain = !shown.is_empty()
                && shown
                    .chars()
                    .all(|c| c.is_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                shown
            } else {
                format!("'{}'", shown.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_shown_not_obeyed() {
        let shown = for_terminal("a\tb\n\u{1b}[2J\u{202e}x\u{9b}\u{7f}\r!\n");
        assert_eq!(shown, "a\tb\n\\x1b[2J\\u{202e}x\\u{009b}\\x7f\\x0d!\n");
        assert_eq!(for_terminal("plain ünïcode\n"), "plain ünïcode\n");
        assert_eq!(for_terminal("crlf\r\nhid\rden\n"), "crlf\r\nhid\\x0dden\n");
        assert_eq!(
            display_path(std::path::Path::new("a\u{202e}b\nc")),
            "a\\u{202e}b\\nc"
        );
    }

    #[test]
    fn json_for_a_terminal_is_the_same_json() {
        let v = serde_json::json!({"argv": ["echo", "a\u{202e}b\u{1b}\u{85}", "ü"]});
        let shown = json_for_terminal(&serde_json::to_string(&v).unwrap());
        assert!(
            !shown.contains('\u{202e}') && !shown.contains('\u{85}'),
            "{shown}"
        );
        assert!(shown.contains("ü"), "{shown}");
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn a_command_line_for_people_shows_each_argument_as_one() {
        let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(display_argv(&v(&["make", "-j4", "a=b"])), "make -j4 a=b");
        assert_eq!(
            display_argv(&v(&["rm", "-rf /tmp/x", "it's"])),
            "rm '-rf /tmp/x' 'it'\\''s'"
        );
        assert_eq!(
            display_argv(&v(&["echo", "ok\u{1b}[2K\rrm -rf /"])),
            "echo 'ok\\x1b[2K\\x0drm -rf /'"
        );
        assert_eq!(display_argv(&v(&["x", ""])), "x ''");
    }
}
