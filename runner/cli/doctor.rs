//! `taskbox doctor`: what this kernel can enforce, and which profiles can run.

use crate::sandbox::native;

/// Report what this kernel can enforce.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// What the kernel offers.
#[derive(Debug, serde::Serialize)]
struct Probe {
    landlock_abi: u8,
    user_namespaces: bool,
    seccomp: bool,
    overlayfs: bool,
    root: bool,
}

fn probe() -> Probe {
    let seccomp = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Seccomp:")));
    let overlayfs =
        std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("overlay"));
    Probe {
        landlock_abi: native::kernel_abi(),
        user_namespaces: native::userns_available(),
        seccomp,
        overlayfs,
        root: nix::unistd::getuid().is_root(),
    }
}

/// Whether moving a task into its pids cgroup pays a full RCU grace period:
/// with the pids controller on cgroup v2 (the stage writes its own pid to
/// `cgroup.procs`, which takes the kernel's threadgroup lock for writing)
/// and no `favordynmods` on that mount. On cgroup v1 the stage moves its
/// single thread through `tasks`, which skips that lock.
fn slow_cgroup_moves() -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let v1_pids = mounts
        .lines()
        .any(|l| l.contains(" cgroup ") && l.contains("pids"));
    let v2_root_without_dynmods = mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some("/sys/fs/cgroup")
            && l.contains(" cgroup2 ")
            && !l.contains("favordynmods")
    });
    !v1_pids && v2_root_without_dynmods
}

impl DoctorArgs {
    /// Prints the report.
    pub fn execute(self) -> anyhow::Result<i32> {
        let p = probe();
        let mut runnable = Vec::new();
        for (name, _) in super::catalog().list()? {
            let verdict = match super::load(&name) {
                Err(e) => format!("invalid: {e}"),
                Ok(prof) => {
                    let mut why = Vec::new();
                    if prof.require.landlock_abi > p.landlock_abi {
                        why.push(format!(
                            "needs Landlock ABI {} (kernel has {})",
                            prof.require.landlock_abi, p.landlock_abi
                        ));
                    }
                    if prof.require.namespaces && !p.user_namespaces {
                        why.push("needs user namespaces".to_owned());
                    }
                    if prof.workspace == crate::profile::WorkspaceMode::Overlay
                        && !p.user_namespaces
                    {
                        why.push("its overlay workspace needs user namespaces".to_owned());
                    }
                    if prof.require.seccomp && !p.seccomp {
                        why.push("needs seccomp".to_owned());
                    }
                    if why.is_empty() {
                        "runs here".to_owned()
                    } else {
                        format!("refused here: {}", why.join("; "))
                    }
                }
            };
            runnable.push((name, verdict));
        }
        if self.json {
            let v = serde_json::json!({ "kernel": p, "profiles": runnable.iter().map(|(n, v)| serde_json::json!({"name": n, "verdict": v})).collect::<Vec<_>>() });
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(0);
        }
        println!("landlock ABI:     {}", p.landlock_abi);
        println!(
            "user namespaces:  {}",
            if p.user_namespaces {
                "yes"
            } else {
                "no (tasks run under Landlock + seccomp only, where profiles allow)"
            }
        );
        println!("seccomp:          {}", if p.seccomp { "yes" } else { "no" });
        println!(
            "overlayfs:        {}",
            if p.overlayfs { "yes" } else { "no" }
        );
        println!(
            "running as root:  {}",
            if p.root {
                "yes (process limits use a pids cgroup)"
            } else {
                "no"
            }
        );
        if p.root && slow_cgroup_moves() {
            println!(
                "hint: moving a task into its pids cgroup costs an RCU grace period here (5-15 ms: cgroup v2 without favordynmods); \
                 `mount -o remount,favordynmods /sys/fs/cgroup` makes it ~0.05 ms"
            );
        }
        for (n, v) in runnable {
            println!("profile {n:<16} {v}");
        }
        Ok(0)
    }
}
