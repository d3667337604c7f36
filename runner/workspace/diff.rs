//! A changeset as people read it: a unified diff (binary files summarised,
//! protected paths flagged) or a `--stat` summary.

use std::fmt::Write as _;
use std::path::Path;

use super::changeset::{ChangeKind, Changeset, EntryType};
use super::display_path;

fn read_text(p: &Path) -> Option<String> {
    let bytes = std::fs::read(p).ok()?;
    if bytes.iter().take(8192).any(|&b| b == 0) {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// Whether `rel` is (under) one of the protected paths, given relative to the workspace.
fn protected(rel: &Path, protect: &[&str]) -> bool {
    protect.iter().any(|p| rel.starts_with(p))
}

/// Unified diff of every change. `protect` lists workspace-relative protected
/// paths (e.g. `.git/hooks`); changes under them are flagged.
///
/// `withheld` names files the task wrote a granted credential into (with the
/// grants): their content is not shown.
pub fn render_diff(
    cs: &Changeset,
    upper: &Path,
    lower: &Path,
    protect: &[&str],
    withheld: &[(std::path::PathBuf, Vec<String>)],
    denied: &[String],
) -> String {
    let mut out = String::new();
    let denied = super::promote::Denied::of(denied);
    for c in &cs.changes {
        let name = display_path(&c.path);
        if denied.covers(&c.path) {
            let _ = writeln!(
                out,
                "# DENIED: {name} is a deny path of the task's profile (promote refuses it)"
            );
        }
        if protected(&c.path, protect) {
            let _ = writeln!(
                out,
                "# PROTECTED: {name} (promote refuses it without --allow-protected)"
            );
        } else if super::promote::git_internal(c) {
            let _ = writeln!(
                out,
                "# GIT STATE: {name} is the task's own git state (promote leaves it out)"
            );
        }
        if let Some((_, grants)) = withheld.iter().find(|(p, _)| *p == c.path) {
            let _ = writeln!(
                out,
                "# CREDENTIAL: {name} contains the value of credential {} ({:?}); content withheld, promote refuses it without --allow-credentials",
                grants.join(", "),
                c.kind
            );
            continue;
        }
        let (old_path, new_path, old_name) = match &c.kind {
            ChangeKind::Added => (None, Some(upper.join(&c.path)), name.clone()),
            ChangeKind::Deleted => (Some(lower.join(&c.path)), None, name.clone()),
            ChangeKind::Modified => (
                Some(lower.join(&c.path)),
                Some(upper.join(&c.path)),
                name.clone(),
            ),
            ChangeKind::Renamed { from } => {
                let _ = writeln!(out, "rename {} -> {name}", display_path(from));
                continue;
            }
            ChangeKind::ModeChanged { old, new } => {
                let _ = writeln!(out, "mode {name}: {old:o} -> {new:o}");
                continue;
            }
        };
        match c.entry {
            EntryType::Dir => {
                let verb = if matches!(c.kind, ChangeKind::Deleted) {
                    "deleted"
                } else {
                    "new"
                };
                let _ = writeln!(out, "{verb} directory {name}/");
                continue;
            }
            EntryType::Symlink => {
                let t = |p: &Option<std::path::PathBuf>| {
                    p.as_ref()
                        .and_then(|p| std::fs::read_link(p).ok())
                        .map(|t| display_path(&t))
                        .unwrap_or_default()
                };
                let _ = writeln!(out, "symlink {name}: {} -> {}", t(&old_path), t(&new_path));
                continue;
            }
            EntryType::Other => {
                let _ = writeln!(out, "special file {name}: {:?}", c.kind);
                continue;
            }
            EntryType::File => {}
        }
        let old = old_path.as_deref().map_or(Some(String::new()), read_text);
        let new = new_path.as_deref().map_or(Some(String::new()), read_text);
        match (old, new) {
            (Some(o), Some(n)) => {
                let a = if old_path.is_some() {
                    format!("a/{old_name}")
                } else {
                    "/dev/null".into()
                };
                let b = if new_path.is_some() {
                    format!("b/{name}")
                } else {
                    "/dev/null".into()
                };
                let d = similar::TextDiff::from_lines(&o, &n);
                let text = d
                    .unified_diff()
                    .context_radius(3)
                    .header(&a, &b)
                    .to_string();
                let shown = super::for_terminal(&text);
                if shown != text {
                    let _ = writeln!(
                        out,
                        "# ESCAPED: {name} holds control or bidi characters, shown as \\xNN or \\u{{NNNN}} (promote applies the real bytes)"
                    );
                }
                out.push_str(&shown);
            }
            _ => {
                let _ = writeln!(
                    out,
                    "Binary file {name} {}",
                    match c.kind {
                        ChangeKind::Added => "added",
                        ChangeKind::Deleted => "deleted",
                        _ => "differs",
                    }
                );
            }
        }
    }
    out
}

/// One line per change with added/removed line counts, and a total.
pub fn render_stat(cs: &Changeset, upper: &Path, lower: &Path, protect: &[&str]) -> String {
    let mut out = String::new();
    let (mut plus, mut minus) = (0usize, 0usize);
    for c in &cs.changes {
        let name = display_path(&c.path);
        let flag = if protected(&c.path, protect) {
            " [PROTECTED]"
        } else if super::promote::git_internal(c) {
            " [GIT STATE, not promoted]"
        } else if c.entry == EntryType::Other {
            " [SPECIAL FILE, not promoted]"
        } else {
            ""
        };
        let (o, n) = match (c.entry, &c.kind) {
            (EntryType::File, _) => match c.kind {
                ChangeKind::Added => (
                    String::new(),
                    read_text(&upper.join(&c.path)).unwrap_or_default(),
                ),
                ChangeKind::Deleted => (
                    read_text(&lower.join(&c.path)).unwrap_or_default(),
                    String::new(),
                ),
                ChangeKind::Modified => (
                    read_text(&lower.join(&c.path)).unwrap_or_default(),
                    read_text(&upper.join(&c.path)).unwrap_or_default(),
                ),
                ChangeKind::Renamed { .. } | ChangeKind::ModeChanged { .. } => {
                    (String::new(), String::new())
                }
            },
            _ => (String::new(), String::new()),
        };
        let d = similar::TextDiff::from_lines(&o, &n);
        let (mut p, mut m) = (0, 0);
        for op in d.iter_all_changes() {
            match op.tag() {
                similar::ChangeTag::Insert => p += 1,
                similar::ChangeTag::Delete => m += 1,
                similar::ChangeTag::Equal => {}
            }
        }
        plus += p;
        minus += m;
        let kind = match &c.kind {
            ChangeKind::Added => "added".to_owned(),
            ChangeKind::Modified => "modified".to_owned(),
            ChangeKind::Deleted => "deleted".to_owned(),
            ChangeKind::Renamed { from } => format!("renamed from {}", display_path(from)),
            ChangeKind::ModeChanged { old, new } => format!("mode {old:o} -> {new:o}"),
        };
        let _ = writeln!(out, " {name} | +{p} -{m} ({kind}){flag}");
    }
    let _ = writeln!(
        out,
        " {} changes, {plus} insertions(+), {minus} deletions(-)",
        cs.changes.len()
    );
    out
}
