//! The seccomp filter: a compact deny-list (each entry says why) built with
//! seccompiler, plus an architecture guard that refuses x32 and 32-bit entry.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::NativeError;

/// Syscalls refused outright, with the reason for each.
const DENY: &[(&str, i64)] = &[
    (
        "ptrace: inspect or control other processes",
        libc::SYS_ptrace,
    ),
    (
        "process_vm_readv: read another process's memory",
        libc::SYS_process_vm_readv,
    ),
    (
        "process_vm_writev: write another process's memory",
        libc::SYS_process_vm_writev,
    ),
    ("mount: change the filesystem view", libc::SYS_mount),
    ("umount2: remove masks over denied paths", libc::SYS_umount2),
    ("pivot_root: change the root", libc::SYS_pivot_root),
    ("move_mount: new mount API", libc::SYS_move_mount),
    ("open_tree: new mount API", libc::SYS_open_tree),
    ("fsopen: new mount API", libc::SYS_fsopen),
    ("fsconfig: new mount API", libc::SYS_fsconfig),
    ("fsmount: new mount API", libc::SYS_fsmount),
    ("fspick: new mount API", libc::SYS_fspick),
    ("mount_setattr: new mount API", libc::SYS_mount_setattr),
    ("bpf: load kernel programs", libc::SYS_bpf),
    (
        "perf_event_open: kernel profiling, side channels",
        libc::SYS_perf_event_open,
    ),
    ("keyctl: kernel keyrings hold credentials", libc::SYS_keyctl),
    ("add_key: kernel keyrings", libc::SYS_add_key),
    ("request_key: kernel keyrings", libc::SYS_request_key),
    ("kexec_load: replace the kernel", libc::SYS_kexec_load),
    (
        "kexec_file_load: replace the kernel",
        libc::SYS_kexec_file_load,
    ),
    ("init_module: load kernel code", libc::SYS_init_module),
    ("finit_module: load kernel code", libc::SYS_finit_module),
    ("delete_module: unload kernel code", libc::SYS_delete_module),
    (
        "userfaultfd: widens kernel race windows",
        libc::SYS_userfaultfd,
    ),
    (
        "io_uring_setup: bypasses syscall filtering",
        libc::SYS_io_uring_setup,
    ),
    (
        "io_uring_enter: bypasses syscall filtering",
        libc::SYS_io_uring_enter,
    ),
    (
        "io_uring_register: bypasses syscall filtering",
        libc::SYS_io_uring_register,
    ),
    ("setns: join other namespaces", libc::SYS_setns),
    (
        "unshare: new namespaces (a nested sandbox may only narrow through taskbox)",
        libc::SYS_unshare,
    ),
    (
        "open_by_handle_at: open files bypassing paths",
        libc::SYS_open_by_handle_at,
    ),
    (
        "name_to_handle_at: file handles for the above",
        libc::SYS_name_to_handle_at,
    ),
    ("acct: process accounting", libc::SYS_acct),
    ("swapon: swap devices", libc::SYS_swapon),
    ("swapoff: swap devices", libc::SYS_swapoff),
    ("reboot: the host", libc::SYS_reboot),
    ("syslog: kernel log", libc::SYS_syslog),
    ("settimeofday: host clock", libc::SYS_settimeofday),
    ("clock_settime: host clock", libc::SYS_clock_settime),
    ("clock_adjtime: host clock", libc::SYS_clock_adjtime),
    ("adjtimex: host clock", libc::SYS_adjtimex),
    ("quotactl: disk quotas", libc::SYS_quotactl),
    ("vhangup: terminal hangup", libc::SYS_vhangup),
    ("iopl: raw I/O ports", libc::SYS_iopl),
    ("ioperm: raw I/O ports", libc::SYS_ioperm),
];

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;
const PER_LINUX: u64 = 0;
const PERSONALITY_QUERY: u64 = 0xffff_ffff;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, NativeError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(seccomp_err)
}

fn seccomp_err(e: impl std::fmt::Display) -> NativeError {
    NativeError::Seccomp {
        message: e.to_string(),
    }
}

fn target() -> Result<TargetArch, NativeError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(NativeError::Seccomp {
            message: "seccomp filters are built for x86_64 and aarch64 only".into(),
        })
    }
}

/// The filters to install, in order: the deny-list (EPERM) and the clone3 rule (ENOSYS,
/// so libc falls back to `clone`, whose flags the first filter can inspect).
///
/// `inet`: whether AF_INET/AF_INET6 sockets stay allowed.
///
/// # Errors
/// When seccompiler rejects a rule (a bug) or the architecture is unsupported.
pub fn build(inet: bool) -> Result<Vec<BpfProgram>, NativeError> {
    let arch = target()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_why, nr) in DENY {
        rules.insert(*nr, Vec::new());
    }
    // Terminal injection: push input into the caller's terminal.
    rules.insert(
        libc::SYS_ioctl,
        vec![
            SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, TIOCSTI)?]).map_err(seccomp_err)?,
            SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, TIOCLINUX)?]).map_err(seccomp_err)?,
        ],
    );
    // Personality changes (e.g. ADDR_NO_RANDOMIZE); querying stays allowed.
    rules.insert(
        libc::SYS_personality,
        vec![
            SeccompRule::new(vec![
                cond(0, SeccompCmpOp::Ne, PER_LINUX)?,
                cond(0, SeccompCmpOp::Ne, PERSONALITY_QUERY)?,
            ])
            .map_err(seccomp_err)?,
        ],
    );
    // New user namespaces through clone.
    let newuser = u64::try_from(libc::CLONE_NEWUSER).unwrap_or(0);
    rules.insert(
        libc::SYS_clone,
        vec![
            SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(newuser), newuser)?])
                .map_err(seccomp_err)?,
        ],
    );
    // Socket families: unix always; inet/inet6 only when the network allows.
    let mut family = vec![cond(0, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?];
    if inet {
        family.push(cond(0, SeccompCmpOp::Ne, libc::AF_INET as u64)?);
        family.push(cond(0, SeccompCmpOp::Ne, libc::AF_INET6 as u64)?);
    }
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(family.clone()).map_err(seccomp_err)?],
    );
    rules.insert(
        libc::SYS_socketpair,
        vec![SeccompRule::new(family).map_err(seccomp_err)?],
    );

    let main: BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(seccomp_err)?
    .try_into()
    .map_err(seccomp_err)?;
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let clone3: BpfProgram = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(seccomp_err)?
    .try_into()
    .map_err(seccomp_err)?;
    let mut guarded = arch_guard();
    guarded.extend(main);
    Ok(vec![guarded, clone3])
}

/// On x86_64, refuse x32 syscalls (numbers with bit 30 set): they reach the same
/// kernel code under other numbers. seccompiler's own prologue already kills
/// any other architecture (32-bit `int 0x80` entry included).
fn arch_guard() -> Vec<sock_filter> {
    if !cfg!(target_arch = "x86_64") {
        return Vec::new();
    }
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const ARCH_OFFSET: u32 = 4;
    const NR_OFFSET: u32 = 0;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    let s = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        s(LD_W_ABS, 0, 0, ARCH_OFFSET),
        // not x86_64: fall through to seccompiler's prologue, which kills
        s(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        s(LD_W_ABS, 0, 0, NR_OFFSET),
        s(JGE_K, 0, 1, X32_SYSCALL_BIT),
        s(RET_K, 0, 0, RET_KILL_PROCESS),
    ]
}

/// Installs the filters on the calling thread (no_new_privs must be set).
///
/// # Errors
/// When the kernel refuses a filter.
pub fn apply(filters: &[BpfProgram]) -> Result<usize, NativeError> {
    let mut insns = 0;
    for f in filters {
        seccompiler::apply_filter(f).map_err(seccomp_err)?;
        insns += f.len();
    }
    Ok(insns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_stays_compact() {
        let f = build(false).unwrap();
        let total: usize = f.iter().map(Vec::len).sum();
        // about 5 instructions per syscall; attach cost grows ~1 µs per instruction
        assert!(total < 400, "filter has {total} instructions");
        assert!(total > DENY.len() * 2, "filter suspiciously small: {total}");
    }

    #[test]
    fn every_deny_entry_says_why() {
        for (why, _) in DENY {
            assert!(why.contains(": "), "{why}");
        }
    }
}
