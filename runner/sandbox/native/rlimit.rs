//! Resource limits, capabilities and no_new_privs for the command process.

use std::path::{Path, PathBuf};

use nix::sys::resource::{Resource, setrlimit};

use super::NativeError;
use crate::profile::LimitSpec;

/// Applies `[limits]` as rlimits (core dumps always off).
///
/// # Errors
/// When the kernel refuses a limit (it never refuses lowering one).
pub fn apply(l: &LimitSpec) -> Result<(), NativeError> {
    let set = |r: Resource, v: u64, name: &str| {
        setrlimit(r, v, v).map_err(|e| NativeError::Setup {
            what: format!("setrlimit {name}"),
            source: e.into(),
        })
    };
    set(Resource::RLIMIT_CORE, 0, "core")?;
    if let Some(s) = l.cpu_s {
        set(Resource::RLIMIT_CPU, s, "cpu")?;
    }
    if let Some(m) = l.memory {
        set(Resource::RLIMIT_DATA, m, "data")?;
    }
    if let Some(n) = l.processes {
        set(Resource::RLIMIT_NPROC, n, "nproc")?;
    }
    if let Some(f) = l.file_size {
        set(Resource::RLIMIT_FSIZE, f, "fsize")?;
    }
    if let Some(n) = l.open_files {
        set(Resource::RLIMIT_NOFILE, n, "nofile")?;
    }
    Ok(())
}

/// Empties the bounding set: no later `execve` of this process or its
/// children can gain a capability (uid 0 included). Done by the stage
/// before its plan arrives (it limits only what exec grants, not what the
/// stage holds now), which keeps ~40 prctl calls off every launch's path.
///
/// # Errors
/// When a capability cannot be dropped.
pub fn drop_bounding_set() -> Result<(), NativeError> {
    let root = nix::unistd::geteuid().is_root();
    // Capabilities are numbered from 0 without gaps; the first EINVAL is
    // one past the kernel's last (no /proc read needed to know it).
    for cap in 0..64 {
        // SAFETY: PR_CAPBSET_DROP takes a capability number; no memory is passed.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc == 0 {
            continue;
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINVAL) => return Ok(()),
            // EPERM: we lack CAP_SETPCAP, which only happens to a non-root
            // caller outside a user namespace: it holds no capability to
            // lose, no_new_privs stops exec from gaining any, and every
            // further drop would fail the same way.
            Some(libc::EPERM) if !root => return Ok(()),
            _ => {
                return Err(NativeError::Setup {
                    what: format!("drop bounding capability {cap}"),
                    source: err,
                });
            }
        }
    }
    Ok(())
}

/// Drops the capabilities the process holds (ambient, effective, permitted,
/// inheritable); with the bounding set already empty
/// ([`drop_bounding_set`]) the command holds none, even as uid 0 of its
/// namespace.
///
/// # Errors
/// When the kernel refuses.
pub fn drop_capabilities() -> Result<(), NativeError> {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if capset(&[CapData::default(); 2]) != 0 {
        return Err(NativeError::Setup {
            what: "capset".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Sets `PR_SET_NO_NEW_PRIVS`: exec can never gain privileges (setuid, file caps).
///
/// # Errors
/// When the kernel refuses.
pub fn no_new_privs() -> Result<(), NativeError> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(NativeError::Setup {
            what: "no_new_privs".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `_LINUX_CAPABILITY_VERSION_3`'s header for capget/capset (this thread).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// One half of a v3 capability set (capabilities 0-31, then 32-63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Sets this thread's capabilities (the raw call: only the calling thread
/// changes, never the process's other threads); the syscall's return value.
fn capset(data: &[CapData; 2]) -> libc::c_long {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads a v3 header and two data structs, all valid for the call.
    unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) }
}

/// This thread's capabilities, if the kernel tells them.
fn capget() -> Option<[CapData; 2]> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two v3 data structs into `data`, which holds two.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    (rc == 0).then_some(data)
}

/// `faccessat2(path, mode, AT_EACCESS)`: the check with this thread's
/// effective ids and capabilities (libc's `faccessat` may drop the flag,
/// and plain `access` lends uid 0 its permitted capabilities back).
fn access_as_effective(path: &Path, mode: libc::c_int) -> std::io::Result<()> {
    let c = super::ns::cstring(path)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path valid for the call; no other memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            mode,
            libc::AT_EACCESS,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs `f` with this thread's DAC capabilities (override, read-search) set
/// aside, as the command will be; `None` if they could not be set aside.
fn without_dac<T>(f: impl FnOnce() -> T) -> Option<T> {
    const DAC: u32 = (1 << 1) | (1 << 2); // CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    let saved = capget()?;
    let mut narrowed = saved;
    narrowed[0].effective &= !DAC;
    if capset(&narrowed) != 0 {
        return None;
    }
    let out = f();
    // Put back what was set aside; it is a subset of the permitted set, so
    // the kernel cannot refuse.
    capset(&saved);
    Some(out)
}

/// Whether the kernel refuses `mode` on `path` to this thread as it is now.
fn denied(path: &Path, mode: libc::c_int) -> bool {
    access_as_effective(path, mode)
        .err()
        .is_some_and(|e| e.raw_os_error() == Some(libc::EACCES))
}

/// Removes from `deny` the paths that file permissions alone close to
/// the task: it holds no capabilities, so a path it does not own (an owner
/// could chmod it back open) and can neither read, write nor execute or
/// search is out of its reach without a mask or a Landlock hole. Host
/// secrets in the built-in deny list (`/etc/shadow`) then cost nothing for
/// the callers permissions already keep out (everyone but root), where
/// carving one file out of a granted `/etc` without a mount namespace takes
/// a Landlock rule per entry of `/etc`. `uid`: the caller's (with
/// namespaces, a file of an unmapped owner shows as the overflow uid, so
/// for a caller whose uid that is, such paths stay in: masked, not skipped).
pub fn drop_closed_by_permissions(deny: &mut Vec<PathBuf>, uid: u32) {
    let closed = closed_by_permissions(deny, uid);
    let mut each = closed.iter();
    deny.retain(|_| !each.next().copied().unwrap_or(false));
}

/// For each of `paths`, whether file permissions alone close it to the
/// task (see [`drop_closed_by_permissions`]); all `false` if the DAC
/// capabilities could not be set aside. One capability round trip for all.
pub fn closed_by_permissions(paths: &[PathBuf], uid: u32) -> Vec<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let closed = |p: &PathBuf| {
        std::fs::metadata(p).is_ok_and(|m| m.uid() != uid)
            && [libc::R_OK, libc::W_OK, libc::X_OK]
                .into_iter()
                .all(|m| denied(p, m))
    };
    without_dac(|| paths.iter().map(closed).collect()).unwrap_or_else(|| vec![false; paths.len()])
}

/// Checks, for a plan about to launch, that its command (which holds no
/// capabilities) can enter and list the workspace and enter its working
/// directory; see [`reach_without_capabilities`].
///
/// # Errors
/// [`NativeError::Unreachable`].
pub fn check_reach(plan: &super::NativePlan) -> Result<(), NativeError> {
    reach_without_capabilities(&plan.spec.workspace, true)?;
    if plan.cwd != plan.spec.workspace {
        reach_without_capabilities(&plan.cwd, false)?;
    }
    Ok(())
}

/// Checks that a process holding no capabilities, as the command does,
/// can enter `dir` (and list it, with `list`). Only uid 0 can tell a
/// difference: its DAC override opens directories private to other users
/// (`/home/alice` at 0700 under `sudo taskbox run`), which the command,
/// and with namespaces the stage, cannot enter; the task would then start
/// with its workspace missing or closed. Checked on this thread with its
/// DAC capabilities set aside, by the kernel's own permission walk (ACLs
/// included), and put back before returning.
///
/// # Errors
/// [`NativeError::Unreachable`] naming the first directory on the way that
/// a process without capabilities cannot enter.
fn reach_without_capabilities(dir: &Path, list: bool) -> Result<(), NativeError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let mode = libc::X_OK | if list { libc::R_OK } else { 0 };
    let blocker = without_dac(|| {
        denied(dir, mode).then(|| {
            let mut up: Vec<&Path> = dir.ancestors().collect();
            up.reverse();
            up.into_iter()
                .find(|a| denied(a, libc::X_OK))
                .unwrap_or(dir)
                .to_path_buf()
        })
    })
    .flatten();
    let Some(blocker) = blocker else {
        return Ok(());
    };
    let (owner, mode) = std::fs::metadata(&blocker)
        .map(|m| {
            use std::os::unix::fs::MetadataExt as _;
            (m.uid(), m.mode() & 0o7777)
        })
        .unwrap_or((0, 0));
    Err(NativeError::Unreachable {
        dir: dir.to_path_buf(),
        blocker,
        owner,
        mode,
    })
}
