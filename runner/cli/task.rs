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
        anyhow::bail!("task {} has no changes left ({:?})", rec.id, rec.lifecycle);
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
                    let life = serde_json::to_value(&r.lifecycle)?;
                    println!(
                        "{}  {:<10} {:<13} {:<14} {}",
                        r.id,
                        life["state"].as_str().unwrap_or("?"),
                        r.profile,
                        r.agent.as_deref().unwrap_or("-"),
                        r.argv.join(" ")
                    );
                }
                Ok(0)
            }
            TaskCmd::Show { id } => {
                let r = state.load(&id)?;
                println!("{}", serde_json::to_string_pretty(&r)?);
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
                    workspace::render_diff(&cs, &upper, &r.workspace, &protect_list())
                };
                print!("{text}");
                Ok(0)
            }
            TaskCmd::Discard { id } => {
                let mut r = state.load(&id)?;
                if !matches!(r.lifecycle, Lifecycle::Ran { .. }) {
                    anyhow::bail!(
                        "task {} is {:?}: only a finished, unpromoted task can be discarded",
                        r.id,
                        r.lifecycle
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
