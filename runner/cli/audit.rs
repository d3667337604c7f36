//! `taskbox audit ...`: verify the chain, tail and query records.

use crate::audit::Sink;

/// Audit commands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain; exit 1 and name the first bad record if broken.
    Verify,
    /// Print the last records.
    Tail {
        /// How many.
        #[arg(short, default_value_t = 10)]
        n: usize,
    },
    /// Print records, optionally of one task.
    Query {
        /// Only this task's records.
        #[arg(long)]
        task: Option<String>,
    },
}

impl AuditCmd {
    /// Runs the command.
    pub fn execute(self) -> anyhow::Result<i32> {
        let sink = Sink::new(super::state_dir().audit_log());
        match self {
            AuditCmd::Verify => {
                let v = sink.verify()?;
                match v.broken {
                    None => {
                        println!("ok: {} records, head {}", v.records, v.head);
                        Ok(0)
                    }
                    Some(b) => {
                        println!(
                            "BROKEN at record {} of {}: {} (last good record: {})",
                            b.line,
                            sink.path().display(),
                            b.reason,
                            b.last_good
                        );
                        Ok(1)
                    }
                }
            }
            AuditCmd::Tail { n } => {
                let all = sink.query(None)?;
                for r in &all[all.len().saturating_sub(n)..] {
                    println!(
                        "{}",
                        crate::workspace::json_for_terminal(&serde_json::to_string(r)?)
                    );
                }
                Ok(0)
            }
            AuditCmd::Query { task } => {
                for r in sink.query(task.as_deref())? {
                    println!(
                        "{}",
                        crate::workspace::json_for_terminal(&serde_json::to_string(&r)?)
                    );
                }
                Ok(0)
            }
        }
    }
}
