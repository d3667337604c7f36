//! The native backend: Linux processes under user/mount/pid/net/ipc/uts
//! namespaces, Landlock, seccomp and rlimits.
//!
//! The launch stage applies a pure [`NativePlan`] single-threaded and
//! execs the command.
//! `taskbox run` forks it first thing, while it is one small thread; a
//! stage needed later is `taskbox-stage` (a small binary of its own)
//! started with a plain spawn: a multi-threaded runner never forks. Most of
//! taskbox's `unsafe` (syscalls with no safe wrapper) lives in this room's
//! leaves; the rest is WASM artifact loading, one `getxattr` in the
//! changeset reader and `getrandom` for task ids.

mod cpu;
mod disk;
mod landlock;
mod ns;
mod plan;
mod rlimit;
mod seccomp;
mod spawn;
mod stage;
mod survey;

use std::path::PathBuf;

pub use landlock::kernel_abi;
pub use ns::userns_available;
pub use plan::{
    EarlyNamespaces, InheritFile, Isolation, NativePlan, OverlayDirs, PlanInputs, SecretFile, plan,
    secret_file_path, secret_file_var,
};
pub use rlimit::check_reach;
pub use spawn::{Running, Sink, Stage, settle};
pub use stage::main as stage_main;

/// The launch stage binary's file name; it is installed beside `taskbox`.
pub const STAGE: &str = "taskbox-stage";

/// The argument that makes the taskbox binary itself the launch stage,
/// when `taskbox-stage` is not installed beside it (e.g. under `cargo run`,
/// which builds one binary only).
pub const SELF_STAGE_ARG: &str = "__stage";

/// The launch stage for the taskbox binary `exe`: `taskbox-stage` beside
/// it, else `exe` itself (started with [`SELF_STAGE_ARG`]; the same code,
/// a slower start).
pub fn stage_beside(exe: &std::path::Path) -> PathBuf {
    let path = exe.with_file_name(STAGE);
    if path.is_file() {
        path
    } else {
        exe.to_path_buf()
    }
}

/// Runs the launch stage from its command-line arguments (`FD PASS_FD
/// [ns|ns-hostnet|-]`, after the program name, and after
/// [`SELF_STAGE_ARG`] when the taskbox binary is the stage). Never returns.
pub fn stage_entry(mut args: impl Iterator<Item = String>) -> ! {
    let (Some(fd), Some(pass)) = (
        args.next().and_then(|a| a.parse().ok()),
        args.next().and_then(|a| a.parse().ok()),
    ) else {
        eprintln!(
            "taskbox-stage: started by the taskbox runner only (usage: taskbox-stage FD PASS_FD [ns|ns-hostnet|-])"
        );
        std::process::exit(125);
    };
    let early = EarlyNamespaces::parse(&args.next().unwrap_or_default());
    stage_main(fd, pass, early, None, None, None)
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
    /// A directory the task needs lies behind one that only capabilities
    /// open, and the task holds none.
    #[error(
        "{dir} is out of the sandbox's reach: {blocker} (owner uid {owner}, mode {mode:04o}) can be entered only with root's capabilities, and the task runs without any. Hint: run taskbox as the owner of {blocker} (sudo -u '#{owner}' taskbox run ...), or let others enter it (chmod o+x {blocker})"
    )]
    Unreachable {
        /// The directory the task needs.
        dir: PathBuf,
        /// The first directory on its path that cannot be entered.
        blocker: PathBuf,
        /// The blocker's owner.
        owner: u32,
        /// The blocker's permission bits.
        mode: u32,
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
