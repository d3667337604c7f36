//! The `[limits] disk_free` floor: the filesystems a task's writes reach on
//! disk, opened before the task's view hides them and watched while it
//! runs. No rlimit or unprivileged quota bounds how much a task writes in
//! total, so the supervisor stops it when less than the floor is left.

use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::plan::NativePlan;
use crate::profile::WorkspaceMode;

/// How often a running task's disks are looked at: a task can write for
/// at most this long past the floor before it is stopped.
pub(super) const EVERY: Duration = Duration::from_millis(100);

/// The distinct filesystems a task writes on disk, each by a descriptor.
pub(super) struct Disks {
    floor: u64,
    probes: Vec<(PathBuf, OwnedFd)>,
}

impl Disks {
    /// The filesystems of `plan`'s disk-backed writes, if it sets a floor:
    /// the overlay's upper layer, a workspace written in place, the trees
    /// granted `write` and the task's tmp on the host (written only
    /// without namespaces, see [`Disks::with_namespaces`]). Each is probed
    /// at its nearest existing ancestor (the upper layer is made later),
    /// once per filesystem.
    pub(super) fn of(plan: &NativePlan) -> Self {
        let Some(floor) = plan.spec.limits.disk_free else {
            return Self {
                floor: 0,
                probes: Vec::new(),
            };
        };
        let spec = &plan.spec;
        let workspace = (spec.workspace_mode == WorkspaceMode::Direct).then_some(&spec.workspace);
        let paths = plan
            .overlay
            .as_ref()
            .map(|o| &o.upper)
            .into_iter()
            .chain(workspace)
            // `{tmp}` is the task's own (in memory, or `host_tmp`).
            .chain(spec.fs.write.iter().filter(|w| !spec.fs.tmp.contains(w)))
            .chain(std::iter::once(&plan.host_tmp));
        let mut probes: Vec<(PathBuf, OwnedFd)> = Vec::new();
        let mut devices = Vec::new();
        for p in paths {
            let Some(fd) = p.ancestors().find_map(|a| open_path(a).ok()) else {
                continue;
            };
            let Ok(st) = nix::sys::stat::fstat(fd.as_fd()) else {
                continue;
            };
            if !devices.contains(&st.st_dev) {
                devices.push(st.st_dev);
                probes.push((p.clone(), fd));
            }
        }
        Self { floor, probes }
    }

    /// With namespaces the task's tmp is in memory: the host tmp's
    /// filesystem is no longer one the task writes (its probe, there only
    /// if no other write shares that filesystem, goes).
    pub(super) fn with_namespaces(&mut self, host_tmp: &Path) {
        self.probes.retain(|(p, _)| p != host_tmp);
    }

    /// Whether there is anything to watch.
    pub(super) fn watched(&self) -> bool {
        !self.probes.is_empty()
    }

    /// The first filesystem with less free than the floor: a path written
    /// there, its free bytes and the floor.
    pub(super) fn short(&self) -> Option<(&Path, u64, u64)> {
        self.probes.iter().find_map(|(p, fd)| {
            let s = nix::sys::statvfs::fstatvfs(fd.as_fd()).ok()?;
            #[allow(
                clippy::useless_conversion,
                reason = "the field types differ between targets"
            )]
            let free = u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size()));
            (free < self.floor).then_some((p.as_path(), free, self.floor))
        })
    }
}

/// An `O_PATH` descriptor: enough for `fstatvfs`, and it grants nothing.
fn open_path(p: &Path) -> nix::Result<OwnedFd> {
    use nix::fcntl::{OFlag, open};
    open(
        p,
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// Bytes in words, for messages.
pub(super) fn words(b: u64) -> String {
    bytesize::ByteSize(b).display().iec().to_string()
}
