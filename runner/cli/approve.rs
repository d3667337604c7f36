//! `taskbox approve ID` and `taskbox deny ID`: a human decides on a pending task.

use crate::audit::{AuditEvent, Sink};
use crate::task::{Approval, Lifecycle};

/// Approve or deny a pending task.
#[derive(Debug, clap::Args)]
pub struct DecideArgs {
    /// The pending task's id.
    id: String,
    /// Who decides (default: $USER).
    #[arg(long)]
    by: Option<String>,
    /// Why.
    #[arg(long)]
    reason: Option<String>,
}

/// Approve (`true`) or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let it run.
    Approve,
    /// Refuse it.
    Deny,
}

impl DecideArgs {
    /// Records the decision.
    pub fn execute(self, decision: Decision) -> anyhow::Result<i32> {
        let state = super::state_dir();
        let audit = Sink::new(state.audit_log());
        let mut r = state.load(&self.id)?;
        let Lifecycle::Pending { command_digest } = &r.lifecycle else {
            anyhow::bail!(
                "task {} is not waiting for approval ({:?})",
                r.id,
                r.lifecycle
            );
        };
        let by = self
            .by
            .or_else(|| super::env("USER"))
            .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
        match decision {
            Decision::Approve => {
                let approval = Approval {
                    by: by.clone(),
                    reason: self.reason.clone(),
                    at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                    profile_digest: r.profile_digest.clone(),
                    command_digest: command_digest.clone(),
                };
                r.lifecycle = Lifecycle::Approved { approval };
                state.save(&r)?;
                audit.append(AuditEvent::Approved {
                    task: r.id.to_string(),
                    by,
                    reason: self.reason,
                })?;
                println!(
                    "approved {}: run it with `taskbox run --task {}`",
                    r.id, r.id
                );
            }
            Decision::Deny => {
                r.lifecycle = Lifecycle::Denied {
                    by: by.clone(),
                    reason: self.reason.clone(),
                };
                state.save(&r)?;
                audit.append(AuditEvent::Denied {
                    task: r.id.to_string(),
                    by,
                    reason: self.reason,
                })?;
                println!("denied {}", r.id);
            }
        }
        Ok(0)
    }
}
