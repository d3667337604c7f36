//! `SandboxSpec`: a profile resolved for one task (variables substituted),
//! the single value every backend consumes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::model::{Limits, NetMode, PathVars, Profile, WorkspaceMode};

/// Paths inside the workspace that tasks may not write unless a profile
/// unprotects them: each one runs code or configures tools outside the task.
pub const PROTECTED: &[(&str, &str)] = &[
    (".git/hooks", "git runs these on the human's next commit"),
    (
        ".git/config",
        "can set core.hooksPath, core.fsmonitor, aliases",
    ),
    (".gitmodules", "submodule URLs fetched and run by the human"),
    (".bashrc", "shell start-up code"),
    (".bash_profile", "shell start-up code"),
    (".profile", "shell start-up code"),
    (".zshrc", "shell start-up code"),
    (".envrc", "direnv runs it on cd"),
    (".vscode", "editor tasks and settings run code"),
    (".idea", "IDE run configurations"),
    (".claude", "agent settings and hooks"),
    (".mcp.json", "agent tool servers"),
    (".cursor", "agent settings"),
];

/// What the task may touch on the filesystem, as absolute host paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsSpec {
    /// Readable trees.
    pub read: Vec<PathBuf>,
    /// Writable (and readable) trees.
    pub write: Vec<PathBuf>,
    /// Never readable nor writable; may contain globs.
    pub deny: Vec<PathBuf>,
    /// Inside writable trees, but read-only.
    pub protect: Vec<PathBuf>,
    /// Scratch trees: with namespaces, an empty in-memory directory of the
    /// task's over each (existing) host directory; without, not granted.
    #[serde(default)]
    pub scratch: Vec<PathBuf>,
    /// Cache trees: with namespaces, the host directory (if it exists) under
    /// a throwaway in-memory layer of the task's (reads see the host's,
    /// writes land in the layer); without, read-only.
    #[serde(default)]
    pub cache: Vec<PathBuf>,
    /// The `read`/`write` entries that name the task's own /tmp (`{tmp}`,
    /// or a literal path in /tmp): without a mount namespace they become
    /// the task's private directory on the host. Other paths that merely
    /// lie in the host's /tmp (a workspace checked out there) stay as they are.
    #[serde(default)]
    pub tmp: Vec<PathBuf>,
}

/// Network reach for the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    /// Mode.
    pub mode: NetMode,
    /// Allowed host patterns (used by the proxy).
    pub allow: Vec<String>,
    /// Denied host patterns.
    pub deny: Vec<String>,
}

/// The task's environment: the only variables it sees.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvSpec {
    /// Final variables, in order.
    pub vars: Vec<(String, String)>,
}

/// Resource limits, in the units the kernel takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSpec {
    /// Wall clock, milliseconds.
    pub wall_ms: Option<u64>,
    /// CPU seconds per process.
    pub cpu_s: Option<u64>,
    /// Address space per process, bytes.
    pub memory: Option<u64>,
    /// Processes.
    pub processes: Option<u64>,
    /// Captured output, bytes.
    pub output: Option<u64>,
    /// Largest file, bytes.
    pub file_size: Option<u64>,
    /// Open descriptors.
    pub open_files: Option<u64>,
    /// Free bytes to leave on each disk the task writes (0: none).
    pub disk_free: Option<u64>,
}

/// Enforcement floor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequireSpec {
    /// Lowest Landlock ABI.
    pub landlock_abi: u8,
    /// Namespaces required.
    pub namespaces: bool,
    /// Seccomp required.
    pub seccomp: bool,
}

/// Everything a backend needs to build the sandbox; nothing about how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The workspace (host path).
    pub workspace: PathBuf,
    /// How the workspace is seen.
    pub workspace_mode: WorkspaceMode,
    /// Filesystem reach.
    pub fs: FsSpec,
    /// Network reach.
    pub net: NetSpec,
    /// Environment.
    pub env: EnvSpec,
    /// Limits.
    pub limits: LimitSpec,
    /// Enforcement floor.
    pub require: RequireSpec,
}

impl Profile {
    /// Resolves the profile for one task: substitutes variables, builds the
    /// environment from `caller_env`, lists protected paths.
    ///
    /// Pure: `caller_env` is passed in, nothing is read from the process.
    pub fn resolve(&self, vars: &PathVars, caller_env: &[(String, String)]) -> SandboxSpec {
        let Profile {
            name: _,
            origin: _,
            chain: _,
            digest: _,
            description: _,
            kind: _,
            backend: _,
            workspace,
            fs,
            net,
            grants: _,
            identity: _,
            env,
            limits,
            approval_required: _,
            require,
            widenings: _,
        } = self;
        let ws = &vars.workspace;
        let mut write: Vec<PathBuf> = fs.write.iter().map(|p| p.resolve(vars)).collect();
        let mut read: Vec<PathBuf> = fs.read.iter().map(|p| p.resolve(vars)).collect();
        match workspace {
            WorkspaceMode::ReadOnly => {
                write.retain(|p| !p.starts_with(ws));
                if !read.contains(ws) {
                    read.push(ws.clone());
                }
            }
            WorkspaceMode::Overlay | WorkspaceMode::Direct => {
                if !write.contains(ws) {
                    write.push(ws.clone());
                }
            }
        }
        let unprotect: Vec<PathBuf> = fs.unprotect.iter().map(|p| p.resolve(vars)).collect();
        let protect = PROTECTED
            .iter()
            .map(|(rel, _)| ws.join(rel))
            .filter(|p| !unprotect.iter().any(|u| p.starts_with(u)))
            .collect();
        let mut vars_out: Vec<(String, String)> = Vec::new();
        for name in &env.pass {
            if let Some((_, v)) = caller_env.iter().find(|(k, _)| k == name) {
                vars_out.push((name.clone(), v.clone()));
            }
        }
        for (k, v) in &env.set {
            vars_out.retain(|(n, _)| n != k);
            vars_out.push((k.clone(), v.clone()));
        }
        let Limits {
            wall,
            cpu,
            memory,
            processes,
            output,
            file_size,
            open_files,
            disk_free,
        } = *limits;
        SandboxSpec {
            workspace: ws.clone(),
            workspace_mode: *workspace,
            fs: FsSpec {
                read,
                write,
                deny: fs.deny.iter().map(|p| p.resolve(vars)).collect(),
                protect,
                // A tree the profile also grants as the host's is the host's.
                scratch: fs
                    .scratch
                    .iter()
                    .filter(|s| !fs.write.iter().any(|w| w.covers(s)))
                    .map(|p| p.resolve(vars))
                    .collect(),
                cache: fs
                    .cache
                    .iter()
                    .filter(|s| !fs.write.iter().any(|w| w.covers(s)))
                    .map(|p| p.resolve(vars))
                    .collect(),
                tmp: fs
                    .read
                    .iter()
                    .chain(&fs.write)
                    .filter(|p| p.names_tmp())
                    .map(|p| p.resolve(vars))
                    .collect(),
            },
            net: NetSpec {
                mode: net.mode,
                allow: net.allow.clone(),
                deny: net.deny.clone(),
            },
            env: EnvSpec { vars: vars_out },
            limits: LimitSpec {
                wall_ms: wall.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                cpu_s: cpu.map(|d| d.as_secs().max(1)),
                memory,
                processes,
                output,
                file_size,
                open_files,
                disk_free: disk_free.filter(|b| *b > 0),
            },
            require: RequireSpec {
                landlock_abi: require.landlock_abi,
                namespaces: require.namespaces,
                seccomp: require.seccomp,
            },
        }
    }
}
