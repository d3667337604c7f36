//! `taskbox run`: one command as one task.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;

use crate::action::{self, RunReport, RunRequest};

/// Run a command in a sandbox built from a profile.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Profile name (see `taskbox profile list`) or path to a .toml file.
    #[arg(short, long, default_value = "explore")]
    profile: String,
    /// Workspace directory (default: the current directory).
    #[arg(short, long)]
    workspace: Option<PathBuf>,
    /// Name of the acting agent, recorded in the audit log.
    #[arg(long)]
    agent: Option<String>,
    /// The accountable human, recorded in the audit log.
    #[arg(long)]
    on_behalf_of: Option<String>,
    /// Run an approved task: exactly its recorded profile, command and workspace.
    #[arg(long)]
    task: Option<String>,
    /// Print one JSON summary object on stdout at the end.
    #[arg(long)]
    json: bool,
    /// Serve the WASM modules given as the command, warm, in one task: one
    /// JSON request per stdin line (`{"tool":"wsgrep","args":["TODO"]}`),
    /// one JSON response per stdout line.
    #[arg(long, conflicts_with = "task")]
    serve: bool,
    /// The command and its arguments.
    #[arg(last = true, required_unless_present = "task")]
    command: Vec<String>,
}

/// Forks the launch stage before the arguments are even parsed (the
/// runner is still one small thread): every microsecond the runner spends
/// before sending the plan then overlaps with the stage's namespaces (or,
/// without them, with making the task's host tmp under the id reserved
/// here). `None` if it cannot (the error is reported by the ordinary path).
pub fn early_stage() -> Option<(crate::sandbox::native::Stage, crate::task::TaskId)> {
    use crate::sandbox::native;
    let no_userns = std::env::var("TASKBOX_NO_USERNS").as_deref() == Ok("1");
    let id = crate::task::TaskId::new();
    let tmp = super::state_dir().task_tmp(&id);
    let mut stage = native::Stage::fork(
        native::EarlyNamespaces::before_profile(no_userns),
        Some(tmp),
    )
    .ok()?;
    stage.prepare_cgroup(id.as_str());
    Some((stage, id))
}

impl RunArgs {
    /// Runs the task (with the stage and the id reserved for it, if one
    /// was started already);
    /// returns the contract's exit code.
    pub fn execute(
        self,
        early: Option<(crate::sandbox::native::Stage, crate::task::TaskId)>,
    ) -> anyhow::Result<i32> {
        let (stage, reserved_id) = early.unzip();
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        // The kernel's `getcwd` has no symlinks in it: resolved already.
        let workspace = self.workspace.clone().unwrap_or_else(|| cwd.clone());
        let in_workspace = if self.workspace.is_none() {
            true
        } else {
            std::fs::canonicalize(&workspace).is_ok_and(|w| cwd.starts_with(w))
        };
        let open_line = Arc::new(AtomicBool::new(false));
        let req = RunRequest {
            profile: self.profile.clone(),
            workspace,
            cwd: in_workspace.then_some(cwd),
            agent: self.agent,
            on_behalf_of: self.on_behalf_of,
            argv: self.command,
            caller_env: std::env::vars().collect(),
            state: super::state_dir(),
            catalog: super::catalog(),
            stage_exe: crate::sandbox::native::stage_beside(
                &std::env::current_exe().context("cannot find the taskbox binary")?,
            ),
            stage,
            reserved_id,
            stdout: Box::new(LineEnd {
                out: std::io::stdout(),
                open: Arc::clone(&open_line),
            }),
            stderr: Box::new(std::io::stderr()),
            mode: if self.serve {
                action::RunMode::ServeWasm
            } else {
                action::RunMode::Command
            },
            approved_task: self.task,
        };
        let report = action::run(req);
        crate::sandbox::native::settle();
        let report = report?;
        summarize(&report, self.json, open_line.load(Ordering::Relaxed));
        Ok(report.status)
    }
}

/// The task's stdout, remembering whether its last byte ended a line, so
/// the `--json` summary always starts a line of its own.
struct LineEnd {
    out: std::io::Stdout,
    open: Arc<AtomicBool>,
}

impl Write for LineEnd {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        if let Some(last) = buf[..n].last() {
            self.open.store(*last != b'\n', Ordering::Relaxed);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn summarize(r: &RunReport, json: bool, open_line: bool) {
    if !r.denied_hosts.is_empty() {
        eprintln!(
            "taskbox: task {}: the egress proxy refused {}",
            r.task,
            // Names the task chose (a SOCKS5 name is any bytes).
            r.denied_hosts
                .iter()
                .map(|h| crate::workspace::for_terminal(h))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(plan) = &r.plan {
        eprintln!("taskbox: task {} needs approval. The plan:\n{plan}", r.task);
    }
    if let Some(why) = &r.refused {
        eprintln!("taskbox: task {} ({}): {why}", r.task, r.profile);
    }
    if let Some(o) = &r.outcome {
        match o.limit_hit {
            Some(crate::sandbox::LimitHit::Wall) => match &r.lease_ended {
                Some(grant) => eprintln!(
                    "taskbox: task {} stopped: the lease of credential `{grant}` ended (exit 124)",
                    r.task
                ),
                None => eprintln!(
                    "taskbox: task {} stopped: wall-clock limit reached (exit 124)",
                    r.task
                ),
            },
            Some(crate::sandbox::LimitHit::Output) => eprintln!(
                "taskbox: task {} stopped: output limit reached after {} bytes",
                r.task, o.usage.output_bytes
            ),
            Some(crate::sandbox::LimitHit::Disk) => eprintln!(
                "taskbox: task {} stopped: a disk it writes had less free space left than limits.disk_free{}",
                r.task,
                if r.changeset.is_some() {
                    format!(
                        ". Its changes are kept: `taskbox task discard {}` frees them",
                        r.task
                    )
                } else {
                    String::new()
                }
            ),
            None => {}
        }
        if !json && !o.enforcement.notes.is_empty() {
            // One write for all of them (eprintln! makes three per line).
            let notes: String = o
                .enforcement
                .notes
                .iter()
                .map(|n| format!("taskbox: note: {n}\n"))
                .collect();
            let _ = std::io::stderr().write_all(notes.as_bytes());
        }
    }
    if json {
        let mut out = std::io::stdout().lock();
        if open_line {
            let _ = writeln!(out);
        }
        match &r.redactor {
            None => {
                let _ = serde_json::to_writer(&mut out, r);
            }
            Some(red) => {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                red.redact_json(&mut v);
                let _ = serde_json::to_writer(&mut out, &v);
            }
        }
        let _ = writeln!(out);
    }
}
