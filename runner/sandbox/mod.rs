//! Sandboxes: turn a `SandboxSpec` into a running, confined command and report
//! what was actually enforced.
//!
//! Owns the `Enforcement` report and the `Outcome` of a run. Refuses to run
//! anything whose enforcement falls below the spec's `[require]` floor.

pub mod native;
pub mod wasm;

use serde::{Deserialize, Serialize};

pub use crate::profile::SandboxSpec;

/// How fully a protection was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// Everything the spec asked for.
    Full,
    /// Some of it (the report's notes say what is missing).
    Partial,
    /// Not applied.
    None,
}

/// What a task actually got; recorded in the audit log for every task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforcement {
    /// Landlock ABI in force (0: none).
    pub landlock_abi: u8,
    /// Landlock status.
    pub landlock: Level,
    /// Landlock access classes handled, e.g. `fs`, `truncate`, `tcp`, `scope-signal`.
    pub landlock_rights: Vec<String>,
    /// Seccomp filter status.
    pub seccomp: Level,
    /// Number of BPF instructions in the filter.
    pub seccomp_insns: usize,
    /// Namespaces entered, e.g. `user`, `mount`, `pid`, `net`, `ipc`, `uts`.
    pub namespaces: Vec<String>,
    /// Network mode in force.
    pub network: crate::profile::NetMode,
    /// Resource limits status.
    pub limits: Level,
    /// How the process limit is enforced: `rlimit`, `cgroup` or `none`.
    pub processes: String,
    /// Anything weaker than asked, in plain words.
    pub notes: Vec<String>,
}

/// Which limit stopped a task, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitHit {
    /// The wall clock ran out (exit 124).
    Wall,
    /// Output exceeded `[limits] output`.
    Output,
    /// A disk the task writes had less free than `[limits] disk_free`.
    Disk,
}

/// Resource usage of the whole task (all processes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// User CPU, microseconds.
    pub user_us: u64,
    /// System CPU, microseconds.
    pub sys_us: u64,
    /// Largest resident set of any process, KiB.
    pub max_rss_kib: u64,
    /// Bytes of stdout + stderr produced.
    pub output_bytes: u64,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type", content = "value")]
pub enum Exit {
    /// Exited with this status.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl Exit {
    /// The shell-style status: the code, or 128+N for signal N.
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Where a launch spent its time, in microseconds: the runner's view (from
/// just before the stage is spawned) and the stage's own phases (from its start).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// The stage was spawned and sent its plan.
    pub spawned_us: u64,
    /// The sandbox was in force and the command being exec'd.
    pub started_us: u64,
    /// The stage (and so every process of the task) had exited.
    pub exited_us: u64,
    /// The stage's phases: plan, namespaces, view, prepared, forked, limits, landlock, seccomp.
    pub stage: Vec<(String, u64)>,
}

/// The result of running a command in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// How it ended.
    pub exit: Exit,
    /// Which limit stopped it.
    pub limit_hit: Option<LimitHit>,
    /// What was enforced.
    pub enforcement: Enforcement,
    /// Wall time, milliseconds.
    pub duration_ms: u64,
    /// Resource usage.
    pub usage: Usage,
    /// Where the launch spent its time.
    pub timings: Timings,
    /// File credentials whose lease ended (and whose file was removed) while
    /// the task ran, in order.
    pub leases_ended: Vec<String>,
}
