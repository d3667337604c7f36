//! The seccomp filter: a compact deny-list (each entry says why), one
//! comparison per refused syscall, plus seccompiler's rules on arguments,
//! behind an architecture guard that refuses x32 and 32-bit entry.

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

/// Refused too where the task shares the host's IPC namespace (no
/// namespaces): System V shared memory, message queues and semaphores are
/// found by key or by a small id, and Landlock does not cover them, so a
/// task could read or write the host's. (`shmdt` only detaches.)
const DENY_SHARED_IPC: &[(&str, i64)] = &[
    (
        "shmget: the host's System V shared memory",
        libc::SYS_shmget,
    ),
    ("shmat: the host's System V shared memory", libc::SYS_shmat),
    (
        "shmctl: the host's System V shared memory",
        libc::SYS_shmctl,
    ),
    (
        "msgget: the host's System V message queues",
        libc::SYS_msgget,
    ),
    (
        "msgsnd: the host's System V message queues",
        libc::SYS_msgsnd,
    ),
    (
        "msgrcv: the host's System V message queues",
        libc::SYS_msgrcv,
    ),
    (
        "msgctl: the host's System V message queues",
        libc::SYS_msgctl,
    ),
    ("semget: the host's System V semaphores", libc::SYS_semget),
    ("semop: the host's System V semaphores", libc::SYS_semop),
    (
        "semtimedop: the host's System V semaphores",
        libc::SYS_semtimedop,
    ),
    ("semctl: the host's System V semaphores", libc::SYS_semctl),
];

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;
const TIOCSETD: u64 = 0x5423;
const PER_LINUX: u64 = 0;
const PERSONALITY_QUERY: u64 = 0xffff_ffff;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;

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

/// The filter to install: one program. Its prologue kills any other
/// architecture (32-bit `int 0x80` entry included) and x32 syscalls; then
/// each refused syscall costs one comparison that jumps to a shared
/// `EPERM`, `clone3` gets `ENOSYS` (so libc falls back to `clone`, whose
/// flags the rules below can inspect), and seccompiler compiles the rules
/// that look at arguments. (seccompiler alone spent about four
/// instructions on each plain entry: 283 in two filters, where this is
/// 102. The kernel's attach cost is about 1.2 µs per instruction
/// here, paid on every launch.)
///
/// `inet`: whether AF_INET/AF_INET6 sockets stay allowed; `ns`: whether
/// the task has mount and IPC namespaces of its own. Without them
/// `socket(AF_UNIX)` (see [`socket_rules`]) and System V IPC
/// ([`DENY_SHARED_IPC`]) are refused as well.
///
/// # Errors
/// When seccompiler rejects a rule (a bug) or the architecture is unsupported.
pub fn build(inet: bool, ns: bool) -> Result<Vec<BpfProgram>, NativeError> {
    let mut rules = argument_rules()?;
    rules.extend(socket_rules(inet, ns)?);
    let mut prog = prologue();
    prog.extend(refuse_by_number(ns));
    prog.extend(compile(rules)?);
    Ok(vec![prog])
}

/// [`build`] in two parts, for a stage that attaches the part that needs
/// no plan to itself before the plan arrives: everything but the socket
/// families, then [`sockets`].
///
/// # Errors
/// As [`build`].
pub fn without_sockets(ns: bool) -> Result<BpfProgram, NativeError> {
    let mut prog = prologue();
    prog.extend(refuse_by_number(ns));
    prog.extend(compile(argument_rules()?)?);
    Ok(prog)
}

/// The socket-family rules alone, the rest of [`without_sockets`].
///
/// # Errors
/// As [`build`].
pub fn sockets(inet: bool, ns: bool) -> Result<BpfProgram, NativeError> {
    compile(socket_rules(inet, ns)?)
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram, NativeError> {
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target()?,
    )
    .map_err(seccomp_err)?
    .try_into()
    .map_err(seccomp_err)
}

/// Refused by argument: terminal injection, personality changes, new user
/// namespaces through clone.
fn argument_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, NativeError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // Terminal injection: push input into the caller's terminal; and a
    // line discipline swapped under it (TIOCSETD needs no capability for
    // one the kernel has loaded: the caller's terminal broken, and the
    // ldisc code, a known source of kernel bugs, in reach).
    rules.insert(
        libc::SYS_ioctl,
        vec![
            SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, TIOCSTI)?]).map_err(seccomp_err)?,
            SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, TIOCLINUX)?]).map_err(seccomp_err)?,
            SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, TIOCSETD)?]).map_err(seccomp_err)?,
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
    Ok(rules)
}

/// Socket families: inet/inet6 only when the network allows; unix pairs
/// always, and `socket(AF_UNIX)` only with namespaces (`ns`). Without a mount
/// namespace nothing keeps a host's pathname sockets out of reach (Landlock
/// up to ABI 7 does not cover `connect`), so there a task gets no unix
/// socket it could connect with: `socketpair` reaches no one else.
fn socket_rules(inet: bool, ns: bool) -> Result<BTreeMap<i64, Vec<SeccompRule>>, NativeError> {
    let mut pair = vec![cond(0, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?];
    if inet {
        pair.push(cond(0, SeccompCmpOp::Ne, libc::AF_INET as u64)?);
        pair.push(cond(0, SeccompCmpOp::Ne, libc::AF_INET6 as u64)?);
    }
    let mut single = pair.clone();
    if !ns {
        single.remove(0);
    }
    if single.is_empty() {
        // No family at all: a condition every call meets.
        single.push(cond(0, SeccompCmpOp::Ge, 0)?);
    }
    let mut rules = BTreeMap::new();
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(single).map_err(seccomp_err)?],
    );
    rules.insert(
        libc::SYS_socketpair,
        vec![SeccompRule::new(pair).map_err(seccomp_err)?],
    );
    Ok(rules)
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;
const ARCH_OFFSET: u32 = 4;
const NR_OFFSET: u32 = 0;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The architecture this filter's syscall numbers are for.
fn audit_arch() -> u32 {
    if cfg!(target_arch = "aarch64") {
        AUDIT_ARCH_AARCH64
    } else {
        AUDIT_ARCH_X86_64
    }
}

/// Kills a syscall made under another architecture's numbering (on x86_64
/// the 32-bit `int 0x80` entry) and, on x86_64, an x32 syscall (bit 30
/// set: the same kernel code under other numbers); leaves the syscall
/// number loaded.
fn prologue() -> Vec<sock_filter> {
    let mut p = vec![
        insn(LD_W_ABS, 0, 0, ARCH_OFFSET),
        insn(JEQ_K, 1, 0, audit_arch()),
        insn(RET_K, 0, 0, RET_KILL_PROCESS),
        insn(LD_W_ABS, 0, 0, NR_OFFSET),
    ];
    if cfg!(target_arch = "x86_64") {
        p.push(insn(JGE_K, 0, 1, X32_SYSCALL_BIT));
        p.push(insn(RET_K, 0, 0, RET_KILL_PROCESS));
    }
    p
}

/// One comparison per [`DENY`] entry (and, without namespaces, per
/// [`DENY_SHARED_IPC`] entry), each jumping straight to a shared `EPERM`;
/// `clone3` to `ENOSYS`; anything else jumps over both returns to the rules
/// that follow. Expects the syscall number loaded.
fn refuse_by_number(ns: bool) -> Vec<sock_filter> {
    let nr = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
    let extra: &[(&str, i64)] = if ns { &[] } else { DENY_SHARED_IPC };
    let list: Vec<&(&str, i64)> = DENY.iter().chain(extra).collect();
    let m = list.len();
    let mut p = Vec::with_capacity(m + 4);
    for (i, (_, n)) in list.iter().enumerate() {
        // Past the rest of the list, the clone3 test and the jump: EPERM.
        let to_eperm = u8::try_from(m - i + 1).unwrap_or(u8::MAX);
        p.push(insn(JEQ_K, to_eperm, 0, nr(*n)));
    }
    p.push(insn(JEQ_K, 2, 0, nr(libc::SYS_clone3)));
    p.push(insn(JA, 0, 0, 2));
    p.push(insn(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32));
    p.push(insn(RET_K, 0, 0, RET_ERRNO | libc::ENOSYS as u32));
    p
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

    /// Runs a classic BPF seccomp program on one syscall, as the kernel
    /// would (the opcodes seccompiler and this module emit; any other
    /// fails the test).
    fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&nr.to_le_bytes());
        data.extend_from_slice(&arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        for a in args {
            data.extend_from_slice(&a.to_le_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = &prog[pc];
            let k = i.k;
            let jump = |cond: bool| pc + 1 + usize::from(if cond { i.jt } else { i.jf });
            pc = match i.code {
                0x20 => {
                    let o = k as usize;
                    acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                    pc + 1
                }
                0x54 => {
                    acc &= k;
                    pc + 1
                }
                0x05 => pc + 1 + k as usize,
                0x15 => jump(acc == k),
                0x25 => jump(acc > k),
                0x35 => jump(acc >= k),
                0x45 => jump(acc & k != 0),
                0x06 => return k,
                other => panic!("opcode {other:#x} not modelled"),
            };
        }
    }

    const ALLOW: u32 = 0x7fff_0000;
    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

    fn verdict(inet: bool, nr: i64, args: [u64; 6]) -> u32 {
        let f = build(inet, true).unwrap();
        assert_eq!(f.len(), 1, "one filter, one attach");
        run(&f[0], audit_arch(), u32::try_from(nr).unwrap(), args)
    }

    #[test]
    fn every_deny_entry_is_refused_and_ordinary_syscalls_pass() {
        for inet in [false, true] {
            for (why, nr) in DENY {
                assert_eq!(verdict(inet, *nr, [0; 6]), EPERM, "{why}");
            }
            for nr in [
                libc::SYS_read,
                libc::SYS_write,
                libc::SYS_openat,
                libc::SYS_execve,
                libc::SYS_mmap,
                libc::SYS_exit_group,
                libc::SYS_wait4,
            ] {
                assert_eq!(verdict(inet, nr, [0; 6]), ALLOW, "syscall {nr}");
            }
            assert_eq!(
                verdict(inet, libc::SYS_clone3, [0; 6]),
                RET_ERRNO | libc::ENOSYS as u32
            );
        }
    }

    #[test]
    fn argument_rules_look_at_the_arguments() {
        let newuser = libc::CLONE_NEWUSER as u64;
        assert_eq!(
            verdict(false, libc::SYS_clone, [newuser | 0x11, 0, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            verdict(false, libc::SYS_clone, [0x11, 0, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            verdict(false, libc::SYS_ioctl, [1, TIOCSTI, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            verdict(false, libc::SYS_ioctl, [1, TIOCLINUX, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            verdict(false, libc::SYS_ioctl, [1, TIOCSETD, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            verdict(false, libc::SYS_ioctl, [1, 0x5401, 0, 0, 0, 0]),
            ALLOW
        );
        assert_eq!(
            verdict(false, libc::SYS_personality, [0x0040_0000, 0, 0, 0, 0, 0]),
            EPERM
        );
        assert_eq!(
            verdict(
                false,
                libc::SYS_personality,
                [PERSONALITY_QUERY, 0, 0, 0, 0, 0]
            ),
            ALLOW
        );
        let af = |f: i32| [f as u64, 1, 0, 0, 0, 0];
        for nr in [libc::SYS_socket, libc::SYS_socketpair] {
            assert_eq!(verdict(false, nr, af(libc::AF_UNIX)), ALLOW);
            assert_eq!(verdict(false, nr, af(libc::AF_INET)), EPERM);
            assert_eq!(verdict(false, nr, af(libc::AF_NETLINK)), EPERM);
            assert_eq!(verdict(true, nr, af(libc::AF_INET)), ALLOW);
            assert_eq!(verdict(true, nr, af(libc::AF_INET6)), ALLOW);
            assert_eq!(verdict(true, nr, af(libc::AF_PACKET)), EPERM);
        }
    }

    #[test]
    fn without_namespaces_unix_sockets_but_pairs_and_system_v_ipc_are_refused() {
        let af = |f: i32| [f as u64, 1, 0, 0, 0, 0];
        for inet in [false, true] {
            let f = build(inet, false).unwrap();
            let v = |nr: i64, f2: i32| run(&f[0], audit_arch(), u32::try_from(nr).unwrap(), af(f2));
            assert_eq!(v(libc::SYS_socket, libc::AF_UNIX), EPERM, "inet {inet}");
            assert_eq!(v(libc::SYS_socketpair, libc::AF_UNIX), ALLOW, "inet {inet}");
            assert_eq!(v(libc::SYS_socket, libc::AF_NETLINK), EPERM, "inet {inet}");
            let want = if inet { ALLOW } else { EPERM };
            assert_eq!(v(libc::SYS_socket, libc::AF_INET), want);
            assert_eq!(v(libc::SYS_socket, libc::AF_INET6), want);
            // The part attached ahead plus this one decide as the whole.
            let second = sockets(inet, false).unwrap();
            let nr = u32::try_from(libc::SYS_socket).unwrap();
            assert_eq!(run(&second, audit_arch(), nr, af(libc::AF_UNIX)), EPERM);
            let first = without_sockets(false).unwrap();
            let with_ns = build(inet, true).unwrap();
            for (why, n) in DENY_SHARED_IPC {
                let n32 = u32::try_from(*n).unwrap();
                assert_eq!(run(&f[0], audit_arch(), n32, [0; 6]), EPERM, "{why}");
                assert_eq!(run(&first, audit_arch(), n32, [0; 6]), EPERM, "{why}");
                assert_eq!(run(&with_ns[0], audit_arch(), n32, [0; 6]), ALLOW, "{why}");
            }
        }
    }

    #[test]
    fn other_architectures_and_x32_are_killed() {
        let f = build(false, true).unwrap();
        // i386 `int 0x80`: AUDIT_ARCH_I386, where 101 is ptrace... and 0 restart_syscall.
        for nr in [0, 101, 26] {
            assert_eq!(run(&f[0], 0x4000_0003, nr, [0; 6]), RET_KILL_PROCESS);
        }
        if cfg!(target_arch = "x86_64") {
            let x32_read = X32_SYSCALL_BIT;
            assert_eq!(run(&f[0], audit_arch(), x32_read, [0; 6]), RET_KILL_PROCESS);
        }
    }

    #[test]
    fn the_two_part_filter_decides_as_the_whole() {
        let cases: Vec<(i64, [u64; 6])> = DENY
            .iter()
            .chain(DENY_SHARED_IPC)
            .map(|(_, nr)| (*nr, [0; 6]))
            .chain([
                (libc::SYS_read, [0; 6]),
                (libc::SYS_clone3, [0; 6]),
                (libc::SYS_clone, [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]),
                (libc::SYS_ioctl, [1, TIOCSTI, 0, 0, 0, 0]),
                (libc::SYS_socket, [libc::AF_INET as u64, 1, 0, 0, 0, 0]),
                (libc::SYS_socket, [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]),
                (libc::SYS_socketpair, [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]),
                (
                    libc::SYS_socketpair,
                    [libc::AF_NETLINK as u64, 1, 0, 0, 0, 0],
                ),
            ])
            .collect();
        for ns in [false, true] {
            let first = without_sockets(ns).unwrap();
            for inet in [false, true] {
                let second = sockets(inet, ns).unwrap();
                let whole = build(inet, ns).unwrap();
                for (nr, args) in &cases {
                    let nr32 = u32::try_from(*nr).unwrap();
                    // Several filters: the kernel takes the most restrictive
                    // verdict (allow is the least).
                    let a = run(&first, audit_arch(), nr32, *args);
                    let b = run(&second, audit_arch(), nr32, *args);
                    let both = if a == ALLOW { b } else { a };
                    let want = run(&whole[0], audit_arch(), nr32, *args);
                    assert_eq!(both, want, "ns {ns} inet {inet}: syscall {nr} {args:?}");
                }
            }
        }
    }

    #[test]
    fn filter_stays_compact() {
        let f = build(false, true).unwrap();
        let total: usize = f.iter().map(Vec::len).sum();
        // attach cost grows ~1.2 µs per instruction
        assert!(total < 160, "filter has {total} instructions");
        assert!(total > DENY.len(), "filter suspiciously small: {total}");
    }

    #[test]
    fn every_deny_entry_says_why() {
        for (why, _) in DENY.iter().chain(DENY_SHARED_IPC) {
            assert!(why.contains(": "), "{why}");
        }
    }
}
