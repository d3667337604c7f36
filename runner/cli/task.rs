//! `taskbox task ...`: list, show, diff, discard and prune tasks.

use std::time::{Duration, SystemTime};

use crate::audit::{AuditEvent, Sink};
use crate::profile::PROTECTED;
use crate::task::{Lifecycle, TaskRecord};
use crate::workspace;

/// Task commands.
#[derive(Debug, clap::Subcommand)]
pub enum TaskCmd {
    /// List tasks, oldest first.
    List,
    /// Show one task's record and what it changed.
    Show {
        /// Task id.
        id: String,
    },
    /// Unified diff of what an overlay task changed (binary files summarised).
    Diff {
        /// Task id.
        id: String,
        /// Per-file summary instead of the diff.
        #[arg(long)]
        stat: bool,
    },
    /// Apply an overlay task's changes to the workspace: one git commit with
    /// provenance trailers in a git work tree. Re-running it finishes an
    /// interrupted promote.
    Promote {
        /// Task id.
        id: String,
        /// Commit onto this new branch instead (the work tree is not touched).
        #[arg(long)]
        branch: Option<String>,
        /// Commit message.
        #[arg(short, long)]
        message: Option<String>,
        /// Allow changes to protected paths (.git/hooks, shell rc, editor and agent config).
        #[arg(long)]
        allow_protected: bool,
        /// Allow files the task wrote a granted credential's value into.
        #[arg(long)]
        allow_credentials: bool,
    },
    /// Undo a promoted task (`git revert` of its commit, or the stored reverse changes).
    Revert {
        /// Task id.
        id: String,
    },
    /// Throw away an overlay task's changes.
    Discard {
        /// Task id.
        id: String,
    },
    /// Remove finished tasks older than a duration (e.g. `7d`), changes included.
    Prune {
        /// Age, e.g. `7d`, `12h`.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
}

fn protect_list() -> Vec<&'static str> {
    PROTECTED.iter().map(|(p, _)| *p).collect()
}

fn changes(
    state: &crate::task::StateDir,
    rec: &TaskRecord,
) -> anyhow::Result<workspace::Changeset> {
    if !rec.overlay {
        anyhow::bail!(
            "task {} wrote no overlay (profile {}): it has no changeset",
            rec.id,
            rec.profile
        );
    }
    let upper = state.task_dir(&rec.id).upper();
    if !upper.is_dir() {
        anyhow::bail!(
            "task {} has no changes left (it is {})",
            rec.id,
            rec.lifecycle.word()
        );
    }
    Ok(workspace::changeset(&upper, &rec.workspace)?)
}

impl TaskCmd {
    /// Runs the command.
    pub fn execute(self) -> anyhow::Result<i32> {
        let state = super::state_dir();
        let audit = Sink::new(state.audit_log());
        match self {
            TaskCmd::List => {
                for r in state.list()? {
                    println!(
                        "{}  {:<10} {:<13} {:<14} {}",
                        r.id,
                        r.lifecycle.word(),
                        r.profile,
                        r.agent.as_deref().unwrap_or("-"),
                        workspace::display_argv(&r.argv)
                    );
                }
                Ok(0)
            }
            TaskCmd::Show { id } => {
                let r = state.load(&id)?;
                println!(
                    "{}",
                    workspace::json_for_terminal(&serde_json::to_string_pretty(&r)?)
                );
                if r.overlay && state.task_dir(&r.id).upper().is_dir() {
                    let cs = changes(&state, &r)?;
                    print!(
                        "{}",
                        workspace::render_stat(
                            &cs,
                            &state.task_dir(&r.id).upper(),
                            &r.workspace,
                            &protect_list()
                        )
                    );
                }
                Ok(0)
            }
            TaskCmd::Diff { id, stat } => {
                let r = state.load(&id)?;
                let cs = changes(&state, &r)?;
                let upper = state.task_dir(&r.id).upper();
                let text = if stat {
                    workspace::render_stat(&cs, &upper, &r.workspace, &protect_list())
                } else {
                    workspace::render_diff(
                        &cs,
                        &upper,
                        &r.workspace,
                        &protect_list(),
                        &workspace::load_withheld(state.task_dir(&r.id).root()),
                        &r.denied,
                    )
                };
                print!("{text}");
                Ok(0)
            }
            TaskCmd::Promote {
                id,
                branch,
                message,
                allow_protected,
                allow_credentials,
            } => {
                let mut r = state.load(&id)?;
                let withheld = workspace::load_withheld(state.task_dir(&r.id).root());
                if !withheld.is_empty() && !allow_credentials {
                    let names: Vec<String> = withheld
                        .iter()
                        .map(|(p, g)| format!("{} ({})", workspace::display_path(p), g.join(", ")))
                        .collect();
                    anyhow::bail!(
                        "refused: the task wrote granted credential values into {}. Hint: discard the task, or pass --allow-credentials if that is meant",
                        names.join(", ")
                    );
                }
                let resuming = state.task_dir(&r.id).root().join("promote.json").exists();
                if !matches!(r.lifecycle, Lifecycle::Ran { .. }) && !resuming {
                    anyhow::bail!(
                        "task {} is {}: only a finished task can be promoted",
                        r.id,
                        r.lifecycle.word()
                    );
                }
                let cs = changes(&state, &r)?;
                let dir = state.task_dir(&r.id);
                let base: workspace::Base = std::fs::read(dir.root().join("base.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                let by =
                    super::env("USER").unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
                let mut trailers = vec![("Taskbox-Task".to_owned(), r.id.to_string())];
                if let Some(a) = &r.agent {
                    trailers.push(("Taskbox-Agent".into(), a.clone()));
                }
                if let Some(w) = &r.on_behalf_of {
                    trailers.push(("Taskbox-On-Behalf-Of".into(), w.clone()));
                }
                trailers.push((
                    "Taskbox-Profile".into(),
                    format!("{}@{}", r.profile, r.profile_digest),
                ));
                let protect = protect_list();
                let upper = dir.upper();
                let spec = workspace::PromoteSpec {
                    task: r.id.as_str(),
                    upper: &upper,
                    workspace: &r.workspace,
                    task_dir: dir.root(),
                    protect: &protect,
                    allow_protected,
                    denied: &r.denied,
                    message: message.unwrap_or_else(|| {
                        format!("taskbox: {}", workspace::display_argv(&r.argv))
                    }),
                    trailers,
                    branch,
                };
                let p = workspace::promote(&spec, &cs, &base)?;
                r.lifecycle = Lifecycle::Promoted {
                    commit: p.commit.clone(),
                };
                state.save(&r)?;
                audit.append(AuditEvent::Promoted {
                    task: r.id.to_string(),
                    by,
                    commit: p.commit.clone(),
                    branch: p.branch.clone(),
                    changes: p.changes,
                    git_internal: p.git_internal,
                    special: p.special,
                })?;
                if p.special > 0 {
                    eprintln!(
                        "taskbox: {} fifos, sockets or devices the task made or removed were not promoted (see `taskbox task diff {} --stat`)",
                        p.special, r.id
                    );
                }
                if p.git_internal > 0 {
                    eprintln!(
                        "taskbox: {} changes under .git were not promoted: the task's own git state (objects, refs, index, commits it made); the work tree's changes are in the commit",
                        p.git_internal
                    );
                }
                match &p.commit {
                    Some(c) => println!(
                        "promoted {}: {} changes, commit {c} on {}",
                        r.id,
                        p.changes,
                        p.branch.as_deref().unwrap_or("?")
                    ),
                    None => println!("promoted {}: {} changes", r.id, p.changes),
                }
                Ok(0)
            }
            TaskCmd::Revert { id } => {
                let mut r = state.load(&id)?;
                if !matches!(r.lifecycle, Lifecycle::Promoted { .. }) {
                    anyhow::bail!(
                        "task {} is {}: only a promoted task can be reverted",
                        r.id,
                        r.lifecycle.word()
                    );
                }
                let commit = workspace::revert(&r.workspace, state.task_dir(&r.id).root())?;
                r.lifecycle = Lifecycle::Reverted {
                    commit: commit.clone(),
                };
                state.save(&r)?;
                let by =
                    super::env("USER").unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
                audit.append(AuditEvent::Reverted {
                    task: r.id.to_string(),
                    by,
                    commit: commit.clone(),
                })?;
                println!(
                    "reverted {}{}",
                    r.id,
                    commit.map(|c| format!(": commit {c}")).unwrap_or_default()
                );
                Ok(0)
            }
            TaskCmd::Discard { id } => {
                let mut r = state.load(&id)?;
                if !matches!(r.lifecycle, Lifecycle::Ran { .. }) {
                    anyhow::bail!(
                        "task {} is {}: only a finished, unpromoted task can be discarded",
                        r.id,
                        r.lifecycle.word()
                    );
                }
                state.drop_changes(&r.id)?;
                r.lifecycle = Lifecycle::Discarded;
                state.save(&r)?;
                audit.append(AuditEvent::Discarded {
                    task: r.id.to_string(),
                })?;
                println!("discarded {}", r.id);
                Ok(0)
            }
            TaskCmd::Prune { older_than } => {
                let cutoff = SystemTime::now() - older_than;
                let mut n = 0;
                for r in state.list()? {
                    let created =
                        humantime::parse_rfc3339_weak(&r.created).unwrap_or(SystemTime::now());
                    if created < cutoff && !matches!(r.lifecycle, Lifecycle::Running) {
                        state.remove(&r.id)?;
                        n += 1;
                    }
                }
                audit.append(AuditEvent::Pruned { tasks: n })?;
                println!("pruned {n} tasks");
                Ok(0)
            }
        }
    }
}
