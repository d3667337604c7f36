//! The serialized plan the runner hands to the launch stage: everything the
//! stage needs, decided before any syscall. Built by the pure [`plan`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::profile::SandboxSpec;

use super::NativeError;

/// Which namespaces the stage enters as soon as it starts, before its
/// plan arrives (so their cost overlaps with the runner's preparation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyNamespaces {
    /// None: the plan decides (Landlock-only mode).
    Later,
    /// All six.
    All,
    /// All but the network namespace (network mode host).
    AllButNet,
}

impl EarlyNamespaces {
    /// Its spelling on the stage's command line.
    pub fn arg(self) -> &'static str {
        match self {
            Self::Later => "-",
            Self::All => "ns",
            Self::AllButNet => "ns-hostnet",
        }
    }

    /// What a stage started before the profile is read enters: all six,
    /// unless namespaces are switched off (`TASKBOX_NO_USERNS=1`).
    pub fn before_profile(no_userns: bool) -> Self {
        if no_userns { Self::Later } else { Self::All }
    }

    /// Reads [`EarlyNamespaces::arg`]; anything else is `Later`.
    pub fn parse(arg: &str) -> Self {
        match arg {
            "ns" => Self::All,
            "ns-hostnet" => Self::AllButNet,
            _ => Self::Later,
        }
    }
}

/// Whether the stage enters namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// User, mount, pid, net, ipc, uts namespaces; Landlock and seccomp on top.
    Namespaces,
    /// Landlock and seccomp only (user namespaces unavailable or switched off).
    LandlockOnly,
}

/// Everything the launch stage applies, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativePlan {
    /// Command and arguments.
    pub argv: Vec<String>,
    /// Working directory (inside the workspace).
    pub cwd: PathBuf,
    /// The resolved profile.
    pub spec: SandboxSpec,
    /// Namespaces wanted, and whether their absence may fall back.
    pub isolation: Isolation,
    /// Whether the stage may fall back to Landlock-only when namespaces fail.
    pub fallback_allowed: bool,
    /// Host path of the task's private temporary directory (Landlock-only mode).
    pub host_tmp: PathBuf,
    /// Paths no task may read or write: taskbox's state, config and profiles.
    pub hide: Vec<PathBuf>,
    /// Host unix-socket directories masked in namespace mode.
    pub mask_sockets: Vec<PathBuf>,
    /// The caller's uid and gid (mapped to themselves in the user namespace).
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// pid of the runner; the stage dies if it is not its parent.
    pub runner_pid: i32,
    /// How the runner enforces the process limit: `rlimit`, `cgroup` or `none`.
    pub processes: String,
    /// The pids cgroup (limit already set) the stage moves itself into
    /// before it starts any process of the task (`processes` = `cgroup`).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Overlay mode: where the task's writes go (upper) and overlayfs's work dir.
    pub overlay: Option<OverlayDirs>,
    /// Host files the stage opens read-only before it builds the task's view
    /// and hands to the command as inherited descriptors (the WASM backend's
    /// compiled module, which lives in the hidden state directory).
    pub inherit: Vec<InheritFile>,
    /// Credentials delivered as files on the task's private in-memory /tmp.
    pub secret_files: Vec<SecretFile>,
}

/// A credential the stage writes, mode 0400, under the task's private
/// in-memory `/tmp` (namespace mode only) and removes when its lease ends.
/// Travels only over the stage's socketpair; `Debug` hides the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretFile {
    /// Grant name (the file's name).
    pub name: String,
    /// The value.
    pub value: String,
    /// Lease end, in milliseconds after the stage starts.
    pub expires_ms: Option<u64>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile")
            .field("name", &self.name)
            .field("value", &"***")
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
}

/// Where the task finds a file credential: `/tmp/.taskbox-credentials/NAME`.
pub fn secret_file_path(name: &str) -> PathBuf {
    PathBuf::from("/tmp/.taskbox-credentials").join(name)
}

/// The variable that holds a file credential's path.
pub fn secret_file_var(name: &str) -> String {
    format!("TASKBOX_CREDENTIAL_FILE_{}", crate::profile::env_name(name))
}

/// A host file handed to the command as an open read-only descriptor whose
/// number is in the environment variable `env`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InheritFile {
    /// The host path, opened before any mount or Landlock rule applies.
    pub path: PathBuf,
    /// The variable that carries the descriptor number.
    pub env: String,
}

/// The host directories behind an overlay workspace, both in the task store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayDirs {
    /// Receives every write of the task: the changeset.
    pub upper: PathBuf,
    /// overlayfs's scratch directory, on the same filesystem as `upper`.
    pub work: PathBuf,
}

/// Inputs to [`plan`] that come from the runner's process, passed in so the
/// function stays pure.
#[derive(Debug, Clone)]
pub struct PlanInputs {
    /// Command and arguments.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Host path for the private temporary directory.
    pub host_tmp: PathBuf,
    /// taskbox's own state and config paths.
    pub hide: Vec<PathBuf>,
    /// `$XDG_RUNTIME_DIR` and the like.
    pub runtime_dirs: Vec<PathBuf>,
    /// Caller uid.
    pub uid: u32,
    /// Caller gid.
    pub gid: u32,
    /// Runner pid.
    pub runner_pid: i32,
    /// Tests and `doctor`: skip namespaces as if user namespaces were unavailable.
    pub force_no_userns: bool,
    /// Overlay mode: the task's upper and work directories.
    pub overlay: Option<OverlayDirs>,
}

/// Decides the plan for one task. Pure: no syscalls.
///
/// # Errors
/// An empty command; a working directory outside every readable path.
pub fn plan(spec: &SandboxSpec, inputs: PlanInputs) -> Result<NativePlan, NativeError> {
    let PlanInputs {
        argv,
        cwd,
        host_tmp,
        hide,
        runtime_dirs,
        uid,
        gid,
        runner_pid,
        force_no_userns,
        overlay,
    } = inputs;
    if let Some(o) = &overlay {
        for p in [&spec.workspace, &o.upper, &o.work] {
            let s = p.to_string_lossy();
            if s.contains([',', ':', '\\']) {
                return Err(NativeError::Plan {
                    message: format!(
                        "{s}: overlay paths cannot contain `,`, `:` or `\\`. Hint: move the workspace or TASKBOX_STATE_DIR"
                    ),
                });
            }
        }
    }
    if argv.is_empty() || argv[0].is_empty() {
        return Err(NativeError::EmptyCommand);
    }
    let readable = spec
        .fs
        .read
        .iter()
        .chain(&spec.fs.write)
        .any(|r| cwd.starts_with(r));
    if !readable {
        return Err(NativeError::CwdNotReadable { cwd });
    }
    let isolation = if force_no_userns {
        Isolation::LandlockOnly
    } else {
        Isolation::Namespaces
    };
    let mut mask_sockets: Vec<PathBuf> = vec!["/run".into(), "/var/run".into()];
    for d in runtime_dirs {
        if !mask_sockets.iter().any(|m| d.starts_with(m)) {
            mask_sockets.push(d);
        }
    }
    Ok(NativePlan {
        argv,
        cwd,
        spec: spec.clone(),
        isolation,
        fallback_allowed: !spec.require.namespaces,
        host_tmp,
        hide,
        mask_sockets,
        uid,
        gid,
        runner_pid,
        processes: if spec.limits.processes.is_none() {
            "none".into()
        } else {
            "rlimit".into()
        },
        cgroup: None,
        overlay,
        inherit: Vec::new(),
        secret_files: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Catalog, PathVars};

    fn spec() -> SandboxSpec {
        let p = Catalog::new(None).load("explore", None).unwrap();
        let vars = PathVars {
            workspace: "/w".into(),
            home: "/h".into(),
            tmp: "/tmp".into(),
        };
        p.resolve(
            &vars,
            &[
                ("PATH".into(), "/usr/bin".into()),
                ("SECRET".into(), "x".into()),
            ],
        )
    }

    fn inputs(cwd: &str) -> PlanInputs {
        PlanInputs {
            argv: vec!["true".into()],
            cwd: cwd.into(),
            host_tmp: "/tmp/x".into(),
            hide: vec![],
            runtime_dirs: vec!["/run/user/1000".into(), "/custom/rt".into()],
            uid: 1000,
            gid: 1000,
            runner_pid: 1,
            force_no_userns: false,
            overlay: None,
        }
    }

    #[test]
    fn plan_masks_runtime_dirs_once_and_scrubs_env() {
        let p = plan(&spec(), inputs("/w/sub")).unwrap();
        assert_eq!(
            p.mask_sockets,
            vec![
                PathBuf::from("/run"),
                "/var/run".into(),
                "/custom/rt".into()
            ]
        );
        assert_eq!(
            p.spec.env.vars,
            vec![("PATH".to_owned(), "/usr/bin".to_owned())]
        );
        assert!(p.fallback_allowed);
    }

    #[test]
    fn plan_refuses_cwd_outside_readable_paths() {
        assert!(matches!(
            plan(&spec(), inputs("/elsewhere")),
            Err(NativeError::CwdNotReadable { .. })
        ));
    }

    #[test]
    fn plan_refuses_empty_command() {
        let mut i = inputs("/w");
        i.argv.clear();
        assert!(matches!(plan(&spec(), i), Err(NativeError::EmptyCommand)));
    }
}
