//! Command-line front door: clap derive, one file per subcommand, each thin
//! over the library. Owns exit codes for errors; owns no policy.

mod approve;
mod audit;
mod creds;
mod doctor;
mod profile;
mod run;
mod task;
mod token;

use clap::{Parser, Subcommand};

use crate::profile::{Catalog, ProfileError};
use crate::task::StateDir;

/// Runs an AI agent's tool actions in per-task sandboxes.
#[derive(Debug, Parser)]
#[command(name = "taskbox", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command as a task, in a sandbox built from a profile.
    Run(run::RunArgs),
    /// List, show, explain, check and compare profiles.
    #[command(subcommand)]
    Profile(profile::ProfileCmd),
    /// Approve a task waiting for approval (profiles with `[approval] required`).
    Approve(approve::DecideArgs),
    /// Refuse a task waiting for approval.
    Deny(approve::DecideArgs),
    /// Verify and read the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// List, show, diff, promote, revert, discard and prune tasks.
    #[command(subcommand)]
    Task(task::TaskCmd),
    /// Verify and rotate task identity tokens.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// Credential inventory across every profile, for access reviews.
    #[command(subcommand)]
    Creds(creds::CredsCmd),
    /// Show what this kernel can enforce, and which profiles can run here.
    Doctor(doctor::DoctorArgs),
}

/// `taskbox run` alone. It runs once per tool action, and building the
/// parsers of every other subcommand first cost about as much as the
/// sandbox's Landlock layer; its help and errors are the full CLI's.
#[derive(Debug, Parser)]
#[command(name = "taskbox", version, about, propagate_version = true)]
struct RunCli {
    #[command(subcommand)]
    command: RunOnly,
}

#[derive(Debug, Subcommand)]
enum RunOnly {
    /// Run a command as a task, in a sandbox built from a profile.
    Run(run::RunArgs),
}

/// Parses the arguments as `P`; on a parse error (or help, or version),
/// prints it and gives the exit code.
fn parse<P: Parser>() -> Result<P, i32> {
    P::try_parse().map_err(|e| {
        let code = match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
            _ => crate::action::EXIT_TASKBOX,
        };
        let _ = e.print();
        code
    })
}

/// Parses the process's arguments and runs the subcommand.
///
/// # Errors
/// Whatever the subcommand failed with; see [`exit_code_of`].
pub fn run() -> anyhow::Result<i32> {
    if std::env::args_os().nth(1).is_some_and(|a| a == "run") {
        let stage = run::early_stage();
        return match parse::<RunCli>() {
            Ok(RunCli {
                command: RunOnly::Run(a),
            }) => a.execute(stage),
            Err(code) => {
                drop(stage);
                crate::sandbox::native::settle();
                Ok(code)
            }
        };
    }
    let cli = match parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    match cli.command {
        Command::Run(a) => a.execute(None),
        Command::Profile(a) => a.execute(),
        Command::Audit(a) => a.execute(),
        Command::Doctor(a) => a.execute(),
        Command::Task(a) => a.execute(),
        Command::Token(a) => a.execute(),
        Command::Creds(a) => a.execute(),
        Command::Approve(a) => a.execute(approve::Decision::Approve),
        Command::Deny(a) => a.execute(approve::Decision::Deny),
    }
}

/// The exit code for an error that reached `main`: 126 for policy refusals,
/// 125 for everything else (taskbox itself failed).
pub fn exit_code_of(e: &anyhow::Error) -> i32 {
    if let Some(a) = e.downcast_ref::<crate::action::ActionError>() {
        return a.exit_code();
    }
    crate::action::EXIT_TASKBOX
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// The state directory from the environment.
fn state_dir() -> StateDir {
    StateDir::from_env(env)
}

/// Built-ins plus `$XDG_CONFIG_HOME/taskbox/profiles` (else `~/.config/taskbox/profiles`).
fn catalog() -> Catalog {
    let base = env("XDG_CONFIG_HOME")
        .filter(|s| s.starts_with('/'))
        .map(std::path::PathBuf::from)
        .or_else(|| env("HOME").map(|h| std::path::PathBuf::from(h).join(".config")));
    Catalog::new(base.map(|b| b.join("taskbox/profiles")))
}

fn load(name: &str) -> Result<crate::profile::Profile, ProfileError> {
    catalog().load(name, None)
}
