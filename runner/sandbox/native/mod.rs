//! The native backend: Linux processes under user/mount/pid/net/ipc/uts
//! namespaces, Landlock, seccomp and rlimits.
//!
//! The runner never forks itself: it spawns `taskbox-stage` (the launch
//! stage, a small binary of its own), which applies a pure [`NativePlan`]
//! single-threaded and execs the command. All `unsafe` of taskbox lives in this room's leaves.

mod landlock;
mod ns;
mod plan;
mod rlimit;
mod seccomp;
mod spawn;
mod stage;

use std::path::PathBuf;

pub use landlock::kernel_abi;
pub use ns::userns_available;
pub use plan::{
    EarlyNamespaces, InheritFile, Isolation, NativePlan, OverlayDirs, PlanInputs, SecretFile, plan,
    secret_file_path, secret_file_var,
};
pub use spawn::{Running, Sink, Stage, settle};
pub use stage::main as stage_main;

/// The launch stage binary's file name; it is installed beside `taskbox`.
pub const STAGE: &str = "taskbox-stage";

/// The launch stage beside the taskbox binary `exe`.
///
/// # Errors
/// When it is not there (a partial install).
pub fn stage_beside(exe: &std::path::Path) -> Result<PathBuf, NativeError> {
    let path = exe.with_file_name(STAGE);
    if path.is_file() {
        Ok(path)
    } else {
        Err(NativeError::NoStage { path })
    }
}

/// Why a native launch failed.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// Nothing to run.
    #[error("no command given. Hint: taskbox run -- CMD [ARGS...]")]
    EmptyCommand,
    /// The working directory is outside every readable path.
    #[error(
        "working directory {cwd} is not readable under this profile. Hint: run from inside the workspace, or pass -w"
    )]
    CwdNotReadable {
        /// The directory.
        cwd: PathBuf,
    },
    /// The stage binary is missing.
    #[error(
        "the launch stage {path} is missing. Hint: install taskbox and taskbox-stage together (`cargo install --path .` installs both)"
    )]
    NoStage {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The stage binary could not be started.
    #[error("cannot start the launch stage {exe}")]
    Spawn {
        /// The binary.
        exe: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A setup step failed.
    #[error("sandbox setup failed: {what}")]
    Setup {
        /// The step.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A mount failed.
    #[error("cannot mount over {target}")]
    Mount {
        /// The mount point.
        target: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// User namespaces are unavailable.
    #[error("cannot create user namespaces ({errno})")]
    Namespaces {
        /// The error from unshare.
        errno: nix::Error,
    },
    /// The plan could not be read or written.
    #[error("bad launch plan: {message}")]
    Plan {
        /// Details.
        message: String,
    },
    /// Landlock failed.
    #[error("landlock: {message}")]
    Landlock {
        /// Details.
        message: String,
    },
    /// The seccomp filter failed.
    #[error("seccomp: {message}")]
    Seccomp {
        /// Details.
        message: String,
    },
    /// The profile's enforcement floor is not met here.
    #[error("refused: {missing}")]
    Requirement {
        /// What is missing and how to get it.
        missing: String,
    },
    /// The program is not on the task's PATH.
    #[error(
        "command not found: {program} (not on the task's PATH, or not visible inside its sandbox)"
    )]
    NotFound {
        /// The program.
        program: String,
    },
    /// exec failed.
    #[error("cannot execute {program}")]
    Exec {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The stage reported a failure; `code` is the exit code to use.
    #[error("{message}")]
    Stage {
        /// 125, 126 or 127.
        code: i32,
        /// The stage's message.
        message: String,
    },
}

impl NativeError {
    /// Exit code for the CLI: 126 for policy refusals, 127 not found, else 125.
    pub fn exit_code(&self) -> i32 {
        match self {
            NativeError::Stage { code, .. } => *code,
            NativeError::Requirement { .. } => 126,
            NativeError::NotFound { .. } => 127,
            _ => 125,
        }
    }
}
