//! Resource limits, capabilities and no_new_privs for the command process.

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
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    }; // _LINUX_CAPABILITY_VERSION_3
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a v3 header and two data structs, all valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    if rc != 0 {
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
