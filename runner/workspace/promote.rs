//! Promote: apply a changeset to the real workspace, all or nothing across a
//! crash (a journal of idempotent steps, rolled forward by the next promote),
//! as one git commit with provenance trailers when the workspace is a git
//! work tree. Revert undoes it (`git revert`, or the stored reverse steps).

use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::changeset::{Change, ChangeKind, Changeset, EntryType};
use super::display_path;

/// Why a promote or revert was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    /// The workspace changed under the task.
    #[error("refused: the workspace changed since the task ran, at: {}. Hint: discard the task and run it again", .paths.join(", "))]
    Conflict {
        /// The conflicting paths.
        paths: Vec<String>,
    },
    /// A path the profile denies is in the changeset.
    #[error("refused: the task made or changed paths its profile denies: {}. Nothing was applied. Hint: discard the task (`taskbox task discard`); a denied path is never promoted", .paths.join(", "))]
    Denied {
        /// The denied paths.
        paths: Vec<String>,
    },
    /// A protected path is in the changeset.
    #[error("refused: the task changed protected paths: {}. Hint: review `taskbox task diff`, then pass --allow-protected", .paths.join(", "))]
    Protected {
        /// The protected paths.
        paths: Vec<String>,
    },
    /// An entry would land outside the workspace.
    #[error(
        "refused: {path} resolves outside the workspace (`..`, an absolute path or a symlinked parent)"
    )]
    Outside {
        /// The path.
        path: String,
    },
    /// A symlink the task made points outside the workspace.
    #[error(
        "refused: the symlink {path} points outside the workspace (to {target}). Hint: discard the task, or recreate the link by hand if it is meant"
    )]
    OutsideLink {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// File I/O.
    #[error("promote: cannot {what} {path}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// git failed.
    #[error("promote: `git {args}` failed: {stderr}")]
    Git {
        /// Arguments.
        args: String,
        /// Its stderr.
        stderr: String,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PromoteError + 'a {
    move |source| PromoteError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Content fingerprint of a workspace entry: sha-256 of a file's bytes or a
/// symlink's target, `dir`, or `None` when absent.
fn fingerprint(p: &Path) -> Option<String> {
    let m = std::fs::symlink_metadata(p).ok()?;
    if m.file_type().is_symlink() {
        let t = std::fs::read_link(p).ok()?;
        Some(format!(
            "link:{}",
            hex::encode(Sha256::digest(t.as_os_str().as_bytes()))
        ))
    } else if m.is_dir() {
        Some("dir".into())
    } else if !m.is_file() {
        // A fifo, socket or device: by its type and mode, never opened
        // (reading a fifo blocks until a writer comes).
        Some(format!("special:{:o}", m.permissions().mode()))
    } else {
        let bytes = std::fs::read(p).ok()?;
        Some(format!(
            "{}:{:o}",
            hex::encode(Sha256::digest(&bytes)),
            m.permissions().mode() & 0o7777
        ))
    }
}

/// What the workspace looked like, at each changed path, when the task ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    /// (path as hex bytes, fingerprint).
    pub entries: Vec<(String, Option<String>)>,
}

impl Base {
    /// Records the workspace state at every path the changeset touches.
    pub fn of(cs: &Changeset, workspace: &Path) -> Self {
        let mut entries = Vec::new();
        for c in &cs.changes {
            let mut paths = vec![c.path.clone()];
            if let ChangeKind::Renamed { from } = &c.kind {
                paths.push(from.clone());
            }
            for p in paths {
                entries.push((
                    hex::encode(p.as_os_str().as_bytes()),
                    fingerprint(&workspace.join(&p)),
                ));
            }
        }
        Self { entries }
    }
}

fn unhex(s: &str) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(
        &hex::decode(s).unwrap_or_default(),
    ))
}

/// One idempotent step of applying a changeset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
enum Step {
    /// Create a directory (if absent).
    Mkdir { path: String, mode: u32 },
    /// Move a staged or existing entry into place (if the source still exists).
    Rename { from: String, to: String },
    /// Remove an entry, recursively (if present).
    Remove { path: String },
    /// Set permission bits.
    Chmod { path: String, mode: u32 },
}

/// The journal of one promote or revert, kept in the task directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    steps: Vec<Step>,
    /// Steps that undo `steps` (non-git revert).
    reverse: Vec<Step>,
    /// The commit to point the branch at once the files are in place: (ref, new, old).
    commit: Option<(String, String, String)>,
    /// Paths whose index entries follow the new commit.
    index_paths: Vec<String>,
    done: bool,
}

/// Provenance and options of a promote.
#[derive(Debug, Clone)]
pub struct PromoteSpec<'a> {
    /// Task id (staging names, trailers).
    pub task: &'a str,
    /// The task's overlay upper directory.
    pub upper: &'a Path,
    /// The real workspace.
    pub workspace: &'a Path,
    /// The task's directory (journal, reverse copies).
    pub task_dir: &'a Path,
    /// Workspace-relative protected paths.
    pub protect: &'a [&'a str],
    /// Whether the human allowed protected paths.
    pub allow_protected: bool,
    /// Workspace-relative deny paths of the task's profile (globs kept).
    pub denied: &'a [String],
    /// Commit message (first line and body).
    pub message: String,
    /// `Taskbox-*` trailers, in order.
    pub trailers: Vec<(String, String)>,
    /// Commit onto this branch instead of the current one (work tree untouched).
    pub branch: Option<String>,
}

/// A profile's deny paths inside the workspace (relative, globs kept),
/// each compiled once, to match a changeset against.
pub(crate) struct Denied(Vec<glob::Pattern>);

impl Denied {
    pub(crate) fn of(denied: &[String]) -> Self {
        Self(
            denied
                .iter()
                .filter_map(|d| {
                    glob::Pattern::new(d)
                        .or_else(|_| glob::Pattern::new(&glob::Pattern::escape(d)))
                        .ok()
                })
                .collect(),
        )
    }

    /// Whether the workspace-relative `path` is a deny path or lies in one;
    /// a glob matches as the launch expanded it (`*` within a component).
    pub(crate) fn covers(&self, path: &Path) -> bool {
        let opts = glob::MatchOptions {
            require_literal_separator: true,
            ..glob::MatchOptions::new()
        };
        path.ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .any(|a| self.0.iter().any(|g| g.matches_path_with(a, opts)))
    }
}

/// What a promote did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Promoted {
    /// The commit, in a git work tree.
    pub commit: Option<String>,
    /// The branch it is on.
    pub branch: Option<String>,
    /// Number of changes applied.
    pub changes: usize,
    /// Changes under `.git` left out: the task's own git state (its
    /// objects, refs, index, a commit it made), which the human's commit
    /// of the work tree's changes replaces.
    pub git_internal: usize,
    /// Fifos, sockets and devices left out.
    pub special: usize,
}

fn journal_path(task_dir: &Path) -> PathBuf {
    task_dir.join("promote.json")
}

fn save_journal(task_dir: &Path, j: &Journal) -> Result<(), PromoteError> {
    let p = journal_path(task_dir);
    let tmp = task_dir.join("promote.json.tmp");
    let body = serde_json::to_vec(j).map_err(|e| PromoteError::Io {
        what: "encode journal",
        path: p.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&tmp, body).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &p).map_err(io("write", &p))
}

/// Rejects paths that are absolute, contain `..`, or pass through a symlink
/// inside the workspace.
fn check_inside(workspace: &Path, rel: &Path) -> Result<(), PromoteError> {
    let bad = || PromoteError::Outside {
        path: display_path(rel),
    };
    let mut cur = workspace.to_path_buf();
    let comps: Vec<Component<'_>> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let Component::Normal(n) = c else {
            return Err(bad());
        };
        cur.push(n);
        if i + 1 < comps.len()
            && std::fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(bad());
        }
    }
    Ok(())
}

/// Rejects a symlink the task made whose target leaves the workspace
/// (absolute, or `..` past its root): once promoted, host tools (git, an
/// editor, the next build) would follow it outside.
fn check_link_target(rel: &Path, target: &Path) -> Result<(), PromoteError> {
    let bad = || PromoteError::OutsideLink {
        path: display_path(rel),
        target: display_path(target),
    };
    // Depth of the link's directory below the workspace root.
    let mut depth = rel.components().count().saturating_sub(1);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth = depth.checked_sub(1).ok_or_else(bad)?,
            Component::RootDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    Ok(())
}

fn git(ws: &Path, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<String, PromoteError> {
    let mut c = Command::new("git");
    c.arg("-C").arg(ws).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().map_err(io("run git in", ws))?;
    if !out.status.success() {
        return Err(PromoteError::Git {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether the workspace is the top of a git work tree (a worktree counts).
fn is_git_top(ws: &Path) -> bool {
    git(ws, &["rev-parse", "--show-toplevel"], &[]).is_ok_and(|t| Path::new(&t) == ws)
}

/// Applies the task's changes to the workspace.
///
/// # Errors
/// Conflicts, protected paths, escapes (nothing applied); I/O or git failures.
pub fn promote(
    spec: &PromoteSpec<'_>,
    cs: &Changeset,
    base: &Base,
) -> Result<Promoted, PromoteError> {
    // A promote interrupted earlier is finished first, never redone.
    if let Ok(bytes) = std::fs::read(journal_path(spec.task_dir))
        && let Ok(j) = serde_json::from_slice::<Journal>(&bytes)
    {
        return finish(spec, j, cs.changes.len(), (0, 0));
    }
    let ws = spec.workspace;
    let mut conflicts = Vec::new();
    for (p, fp) in &base.entries {
        let rel = unhex(p);
        // The repository's own state: never promoted (below), and rewritten
        // by the human's every `git status` (the index).
        if in_git_dir(&rel) {
            continue;
        }
        if fingerprint(&ws.join(&rel)) != *fp {
            conflicts.push(display_path(&rel));
        }
    }
    if !conflicts.is_empty() {
        return Err(PromoteError::Conflict { paths: conflicts });
    }
    // A deny path not there at launch could be made in the overlay (a
    // mask needs something to mount over); it never reaches the workspace.
    let deny = Denied::of(spec.denied);
    let denied: Vec<String> = cs
        .changes
        .iter()
        .filter(|c| {
            let renamed_from = match &c.kind {
                ChangeKind::Renamed { from } => Some(from.as_path()),
                _ => None,
            };
            std::iter::once(c.path.as_path())
                .chain(renamed_from)
                .any(|p| deny.covers(p))
        })
        .map(|c| display_path(&c.path))
        .collect();
    if !denied.is_empty() {
        return Err(PromoteError::Denied { paths: denied });
    }
    let is_protected = |c: &Change| spec.protect.iter().any(|p| c.path.starts_with(p));
    let protected: Vec<String> = cs
        .changes
        .iter()
        .filter(|c| is_protected(c))
        .map(|c| display_path(&c.path))
        .collect();
    if !protected.is_empty() && !spec.allow_protected {
        return Err(PromoteError::Protected { paths: protected });
    }
    // What lands in the work tree. Not fifos, sockets or devices: neither
    // git nor a copy can carry one (opening a fifo the task made blocked
    // the promote for ever). Not the repository's own state either: an
    // agent that ran `git commit` in the overlay left objects, refs and an
    // index there, which git refuses as work-tree paths, and a
    // `.git/modules/*/config` could set a submodule's fsmonitor. Only the
    // protected `.git/hooks` and `.git/config`, with the human's flag, are
    // applied, as files outside the commit.
    let files = Changeset {
        changes: cs
            .changes
            .iter()
            .filter(|c| c.entry != EntryType::Other)
            .filter(|c| !git_internal(c) || (spec.allow_protected && is_protected(c)))
            .cloned()
            .collect(),
    };
    // What goes into the commit: the work tree's changes alone.
    let tree = Changeset {
        changes: files
            .changes
            .iter()
            .filter(|c| !git_internal(c))
            .cloned()
            .collect(),
    };
    let special = cs
        .changes
        .iter()
        .filter(|c| c.entry == EntryType::Other)
        .count();
    let left_out = (cs.changes.len() - special - files.changes.len(), special);
    for c in &files.changes {
        check_inside(ws, &c.path)?;
        if let ChangeKind::Renamed { from } = &c.kind {
            check_inside(ws, from)?;
        }
        if c.entry == EntryType::Symlink && !matches!(c.kind, ChangeKind::Deleted) {
            let target = std::fs::read_link(spec.upper.join(&c.path))
                .map_err(io("read", &spec.upper.join(&c.path)))?;
            check_link_target(&c.path, &target)?;
        }
    }
    let git_mode = is_git_top(ws);
    let commit = if git_mode {
        Some(make_commit(spec, &tree)?)
    } else {
        None
    };
    if spec.branch.is_some() {
        // The commit goes to another branch; the work tree stays as it is.
        let j = Journal {
            steps: Vec::new(),
            reverse: Vec::new(),
            commit,
            index_paths: Vec::new(),
            done: false,
        };
        save_journal(spec.task_dir, &j)?;
        return finish(spec, j, tree.changes.len(), left_out);
    }
    let (steps, reverse) = stage(spec, &files)?;
    let mut index_paths: Vec<String> = Vec::new();
    if commit.is_some() {
        for c in &tree.changes {
            index_paths.push(c.path.to_string_lossy().into_owned());
            if let ChangeKind::Renamed { from } = &c.kind {
                index_paths.push(from.to_string_lossy().into_owned());
            }
        }
    }
    let j = Journal {
        steps,
        reverse,
        commit,
        index_paths,
        done: false,
    };
    save_journal(spec.task_dir, &j)?;
    finish(spec, j, files.changes.len(), left_out)
}

/// Whether `rel` is the workspace's `.git` (a directory, or the file of a
/// worktree or submodule) or lies in it.
fn in_git_dir(rel: &Path) -> bool {
    rel.components().next() == Some(Component::Normal(std::ffi::OsStr::new(".git")))
}

/// Whether a change touches the repository's own state (either end of a
/// rename counts).
pub(crate) fn git_internal(c: &Change) -> bool {
    in_git_dir(&c.path) || matches!(&c.kind, ChangeKind::Renamed { from } if in_git_dir(from))
}

/// Copies new content into a staging directory inside the workspace (same
/// filesystem, so each step is a rename) and the old content into the task
/// directory (for revert); returns the forward and reverse steps.
fn stage(spec: &PromoteSpec<'_>, cs: &Changeset) -> Result<(Vec<Step>, Vec<Step>), PromoteError> {
    let ws = spec.workspace;
    let staging = ws.join(format!(".taskbox-promote-{}", spec.task));
    let saved = spec.task_dir.join("reverse");
    for d in [&staging, &saved] {
        std::fs::create_dir_all(d).map_err(io("create", d))?;
    }
    let h = |p: &Path| hex::encode(p.as_os_str().as_bytes());
    let mut steps = Vec::new();
    let mut reverse = Vec::new();
    let mut n = 0usize;
    let mut stage_copy = |src: &Path, dir: &Path| -> Result<PathBuf, PromoteError> {
        n += 1;
        let dst = dir.join(n.to_string());
        let m = std::fs::symlink_metadata(src).map_err(io("read", src))?;
        if m.file_type().is_symlink() {
            let t = std::fs::read_link(src).map_err(io("read", src))?;
            std::os::unix::fs::symlink(t, &dst).map_err(io("stage", &dst))?;
        } else if m.is_dir() {
            copy_tree(src, &dst)?;
        } else {
            std::fs::copy(src, &dst).map_err(io("stage", &dst))?;
            std::fs::set_permissions(&dst, m.permissions()).map_err(io("stage", &dst))?;
        }
        Ok(dst)
    };
    // Deletions and renames first, deepest paths first; then creations, shallowest first.
    let mut ordered: Vec<_> = cs.changes.iter().collect();
    ordered.sort_by_key(|c| {
        (
            !matches!(c.kind, ChangeKind::Deleted),
            std::cmp::Reverse(c.path.components().count()),
        )
    });
    for c in ordered
        .iter()
        .filter(|c| matches!(c.kind, ChangeKind::Deleted))
    {
        let target = ws.join(&c.path);
        let old = stage_copy(&target, &saved)?;
        steps.push(Step::Remove { path: h(&target) });
        reverse.push(Step::Rename {
            from: h(&old),
            to: h(&target),
        });
    }
    let mut creations: Vec<_> = cs
        .changes
        .iter()
        .filter(|c| !matches!(c.kind, ChangeKind::Deleted))
        .collect();
    creations.sort_by_key(|c| c.path.components().count());
    for c in creations {
        let target = ws.join(&c.path);
        let src = spec.upper.join(&c.path);
        match (&c.kind, c.entry) {
            (ChangeKind::Added, EntryType::Dir) => {
                let mode = std::fs::metadata(&src)
                    .map_err(io("read", &src))?
                    .permissions()
                    .mode()
                    & 0o7777;
                steps.push(Step::Mkdir {
                    path: h(&target),
                    mode,
                });
                reverse.push(Step::Remove { path: h(&target) });
            }
            (ChangeKind::Added, _) => {
                let staged = stage_copy(&src, &staging)?;
                steps.push(Step::Rename {
                    from: h(&staged),
                    to: h(&target),
                });
                reverse.push(Step::Remove { path: h(&target) });
            }
            (ChangeKind::Modified, _) => {
                let old = stage_copy(&target, &saved)?;
                let staged = stage_copy(&src, &staging)?;
                steps.push(Step::Rename {
                    from: h(&staged),
                    to: h(&target),
                });
                reverse.push(Step::Rename {
                    from: h(&old),
                    to: h(&target),
                });
            }
            (ChangeKind::Renamed { from }, _) => {
                let old = ws.join(from);
                steps.push(Step::Rename {
                    from: h(&old),
                    to: h(&target),
                });
                reverse.push(Step::Rename {
                    from: h(&target),
                    to: h(&old),
                });
            }
            (ChangeKind::ModeChanged { old, new }, _) => {
                steps.push(Step::Chmod {
                    path: h(&target),
                    mode: *new,
                });
                reverse.push(Step::Chmod {
                    path: h(&target),
                    mode: *old,
                });
            }
            (ChangeKind::Deleted, _) => {}
        }
    }
    reverse.reverse();
    Ok((steps, reverse))
}

fn copy_tree(src: &Path, dst: &Path) -> Result<(), PromoteError> {
    std::fs::create_dir_all(dst).map_err(io("stage", dst))?;
    for e in std::fs::read_dir(src).map_err(io("read", src))?.flatten() {
        let (s, d) = (e.path(), dst.join(e.file_name()));
        let m = std::fs::symlink_metadata(&s).map_err(io("read", &s))?;
        if m.file_type().is_symlink() {
            let t = std::fs::read_link(&s).map_err(io("read", &s))?;
            std::os::unix::fs::symlink(t, &d).map_err(io("stage", &d))?;
        } else if m.is_dir() {
            copy_tree(&s, &d)?;
        } else {
            std::fs::copy(&s, &d).map_err(io("stage", &d))?;
        }
    }
    Ok(())
}

/// Runs the journal's steps (each idempotent), moves the branch, marks it done.
fn finish(
    spec: &PromoteSpec<'_>,
    mut j: Journal,
    changes: usize,
    // Left out: (changes under `.git`, fifos, sockets and devices).
    (git_internal, special): (usize, usize),
) -> Result<Promoted, PromoteError> {
    if !j.done {
        run_steps(&j.steps)?;
        if let Some((r, new, old)) = &j.commit {
            let current =
                git(spec.workspace, &["rev-parse", "--verify", "-q", r], &[]).unwrap_or_default();
            if current != *new {
                git(spec.workspace, &["update-ref", r, new, old], &[])?;
            }
            if spec.branch.is_none() && !j.index_paths.is_empty() {
                // The index follows the commit for the paths the task touched, only.
                let mut args = vec!["reset", "-q", new.as_str(), "--"];
                args.extend(j.index_paths.iter().map(String::as_str));
                git(spec.workspace, &args, &[])?;
            }
        }
        j.done = true;
        save_journal(spec.task_dir, &j)?;
        let _ = std::fs::remove_dir_all(
            spec.workspace
                .join(format!(".taskbox-promote-{}", spec.task)),
        );
    }
    Ok(Promoted {
        commit: j.commit.as_ref().map(|c| c.1.clone()),
        branch: j
            .commit
            .as_ref()
            .map(|c| c.0.trim_start_matches("refs/heads/").to_owned()),
        changes,
        git_internal,
        special,
    })
}

fn run_steps(steps: &[Step]) -> Result<(), PromoteError> {
    let crash_after: Option<usize> = std::env::var("TASKBOX_TEST_CRASH_AFTER_STEPS")
        .ok()
        .and_then(|v| v.parse().ok());
    for (i, s) in steps.iter().enumerate() {
        if crash_after == Some(i) {
            // Fault injection for the crash test: die like a SIGKILL would.
            std::process::abort();
        }
        match s {
            Step::Mkdir { path, mode } => {
                let p = unhex(path);
                if !p.is_dir() {
                    std::fs::create_dir(&p).map_err(io("create", &p))?;
                }
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
                    .map_err(io("chmod", &p))?;
            }
            Step::Rename { from, to } => {
                let (f, t) = (unhex(from), unhex(to));
                if std::fs::symlink_metadata(&f).is_ok() {
                    if std::fs::symlink_metadata(&t)
                        .is_ok_and(|m| m.is_dir() && !m.file_type().is_symlink())
                    {
                        std::fs::remove_dir_all(&t).map_err(io("replace", &t))?;
                    }
                    std::fs::rename(&f, &t).map_err(io("move into place", &t))?;
                }
            }
            Step::Remove { path } => {
                let p = unhex(path);
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() && !m.file_type().is_symlink() => {
                        std::fs::remove_dir_all(&p).map_err(io("remove", &p))?
                    }
                    Ok(_) => std::fs::remove_file(&p).map_err(io("remove", &p))?,
                    Err(_) => {}
                }
            }
            Step::Chmod { path, mode } => {
                let p = unhex(path);
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
                    .map_err(io("chmod", &p))?;
            }
        }
    }
    Ok(())
}

/// Builds the commit with a private index: HEAD's tree plus the changes.
fn make_commit(
    spec: &PromoteSpec<'_>,
    cs: &Changeset,
) -> Result<(String, String, String), PromoteError> {
    let ws = spec.workspace;
    let head_ref = match &spec.branch {
        Some(b) => format!("refs/heads/{b}"),
        None => git(ws, &["symbolic-ref", "-q", "HEAD"], &[])?,
    };
    let parent = git(ws, &["rev-parse", "--verify", "-q", "HEAD"], &[]).ok();
    let old = match &spec.branch {
        Some(_) => git(ws, &["rev-parse", "--verify", "-q", &head_ref], &[]).unwrap_or_default(),
        None => parent.clone().unwrap_or_default(),
    };
    if spec.branch.is_some() && !old.is_empty() {
        return Err(PromoteError::Git {
            args: format!("branch {head_ref}"),
            stderr: "already exists; --branch creates a new branch".into(),
        });
    }
    let index = spec.task_dir.join("promote.index");
    let _ = std::fs::remove_file(&index);
    let env = [("GIT_INDEX_FILE", index.as_os_str())];
    match &parent {
        Some(p) => git(ws, &["read-tree", p], &env)?,
        None => git(ws, &["read-tree", "--empty"], &env)?,
    };
    let path_arg = |p: &Path| p.to_string_lossy().into_owned();
    let add = |rel: &Path| -> Result<(), PromoteError> {
        let src = spec.upper.join(rel);
        let m = std::fs::symlink_metadata(&src).map_err(io("read", &src))?;
        if m.is_dir() {
            return Ok(());
        }
        let (mode, sha) = if m.file_type().is_symlink() {
            let t = std::fs::read_link(&src).map_err(io("read", &src))?;
            let tmp = spec.task_dir.join("promote.link");
            std::fs::write(&tmp, t.as_os_str().as_bytes()).map_err(io("write", &tmp))?;
            (
                "120000",
                git(
                    ws,
                    &["hash-object", "-w", "--no-filters", &tmp.to_string_lossy()],
                    &[],
                )?,
            )
        } else {
            let exec = m.permissions().mode() & 0o111 != 0;
            (
                if exec { "100755" } else { "100644" },
                git(
                    ws,
                    &["hash-object", "-w", "--no-filters", &src.to_string_lossy()],
                    &[],
                )?,
            )
        };
        git(
            ws,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("{mode},{sha},{}", path_arg(rel)),
            ],
            &env,
        )
        .map(|_| ())
    };
    for c in &cs.changes {
        match &c.kind {
            ChangeKind::Added | ChangeKind::Modified | ChangeKind::ModeChanged { .. } => {
                add(&c.path)?
            }
            ChangeKind::Deleted => {
                git(
                    ws,
                    &[
                        "rm",
                        "-r",
                        "-q",
                        "--cached",
                        "--ignore-unmatch",
                        "--",
                        &path_arg(&c.path),
                    ],
                    &env,
                )?;
            }
            ChangeKind::Renamed { from } => {
                git(
                    ws,
                    &["update-index", "--force-remove", "--", &path_arg(from)],
                    &env,
                )?;
                add(&c.path)?;
            }
        }
    }
    let tree = git(ws, &["write-tree"], &env)?;
    let mut msg = spec.message.clone();
    msg.push_str("\n\n");
    for (k, v) in &spec.trailers {
        msg.push_str(&format!("{k}: {v}\n"));
    }
    let msg_file = spec.task_dir.join("promote.msg");
    std::fs::write(&msg_file, &msg).map_err(io("write", &msg_file))?;
    let mut args = vec![
        "commit-tree".to_owned(),
        tree,
        "-F".to_owned(),
        msg_file.to_string_lossy().into_owned(),
    ];
    if let Some(p) = &parent {
        args.push("-p".into());
        args.push(p.clone());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let new = git(ws, &refs, &[])?;
    let _ = std::fs::remove_file(&index);
    Ok((head_ref, new, old))
}

/// Undoes a promoted task: `git revert` of its commit, or the stored reverse steps.
///
/// # Errors
/// When git or the reverse steps fail.
pub fn revert(workspace: &Path, task_dir: &Path) -> Result<Option<String>, PromoteError> {
    let bytes = std::fs::read(journal_path(task_dir)).map_err(io("read", task_dir))?;
    let j: Journal = serde_json::from_slice(&bytes).map_err(|e| PromoteError::Io {
        what: "parse journal",
        path: task_dir.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    if let Some((_, commit, _)) = &j.commit {
        git(workspace, &["revert", "--no-edit", commit], &[])?;
        return Ok(Some(git(workspace, &["rev-parse", "HEAD"], &[])?));
    }
    run_steps(&j.reverse)?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_targets_must_stay_inside() {
        let ok = |l: &str, t: &str| check_link_target(Path::new(l), Path::new(t)).is_ok();
        assert!(ok("a", "b"));
        assert!(ok("d/a", "../b"));
        assert!(ok("d/e/a", "../../b"));
        assert!(ok("d/a", "./x/../../b"));
        assert!(!ok("a", "../b"));
        assert!(!ok("d/a", "../../etc/passwd"));
        assert!(!ok("a", "/etc/passwd"));
        assert!(!ok("d/a", "x/../../../b"));
    }
}
