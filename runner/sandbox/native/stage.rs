//! The launch stage: a single-threaded process (forked off `taskbox run` at
//! its start, or `taskbox-stage`) that reads a `NativePlan`, builds the
//! sandbox and supervises the command.
//!
//! Process tree in namespace mode:
//! ```text
//! runner ── stage (outer: wall clock, signal relay) ── init (pid 1: mounts, reaper) ── command
//! ```
//! In Landlock-only mode the stage is both outer and init, a child subreaper.
//! Every process here dies with its parent (`PR_SET_PDEATHSIG`), so killing the
//! runner kills the task; pid 1's death kills the whole pid namespace.

use std::io::{Read as _, Write as _};
use std::os::fd::{FromRawFd as _, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, setsid};
use serde::{Deserialize, Serialize};

use super::landlock::{self as ll, Grant, Hole};
use super::plan::{Isolation, NativePlan};
use super::survey::Survey;
use super::{NativeError, ns, rlimit, seccomp};
use crate::profile::NetMode;
use crate::sandbox::{Enforcement, Exit, Level, LimitHit};

/// Messages from the stage to the runner, one JSON object per line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "kebab-case")]
pub enum StageMsg {
    /// The sandbox is in force; the command is being exec'd.
    Started {
        /// What was applied.
        enforcement: Enforcement,
        /// Microseconds since the stage started, at the end of each setup phase.
        phases: Vec<(String, u64)>,
    },
    /// Setup failed; nothing ran. `code` is 125 (taskbox) or 126 (policy) or 127 (not found).
    Failed {
        /// Exit code for the runner.
        code: i32,
        /// What went wrong, for people.
        message: String,
    },
    /// No process of the task is left; usage of all of them. The runner
    /// need not wait for the stage's own exit (namespace teardown) after this.
    Done {
        /// CPU and memory of every process of the task.
        usage: crate::sandbox::Usage,
        /// The stage left the task's pids cgroup and removed it: the
        /// runner has nothing to wait for.
        #[serde(default)]
        cgroup_removed: bool,
    },
    /// A file credential's lease ended: the file is gone.
    LeaseEnded {
        /// Grant name.
        name: String,
    },
    /// The command ended.
    Exited {
        /// How.
        exit: Exit,
        /// Which limit stopped it.
        limit: Option<LimitHit>,
    },
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
/// The runner's CPUs, when it moved this stage off its own (see `cpu`).
static SPREAD: std::sync::OnceLock<super::cpu::Spread> = std::sync::OnceLock::new();

/// Back on every CPU the runner has: the stage, once the plan is in (sent
/// after the runner moved it); the command, once the stage has reported its
/// Landlock rules in (sent after it moved pid 1); pid 1 once the command
/// exec'd (after that report).
fn restore_cpus() {
    if let Some(s) = SPREAD.get() {
        s.restore();
    }
}
/// Carries descriptors (the proxy listener) to the runner.
static PASS: std::sync::OnceLock<UnixStream> = std::sync::OnceLock::new();

/// Opens the proxy's listener on loopback inside the task's network namespace
/// and hands it to the runner, which serves it: only this task can reach it.
fn proxy_listener() -> Result<u16, NativeError> {
    use std::os::fd::AsRawFd as _;
    let err = |what: &str, source: std::io::Error| NativeError::Setup {
        what: what.to_owned(),
        source,
    };
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| err("proxy listener", e))?;
    let port = l.local_addr().map_err(|e| err("proxy listener", e))?.port();
    let pass = PASS.get().ok_or_else(|| {
        err(
            "proxy listener",
            std::io::Error::other("no descriptor channel"),
        )
    })?;
    let fds = [l.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(b"L")];
    nix::sys::socket::sendmsg::<()>(
        pass.as_raw_fd(),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| err("pass the proxy listener", e.into()))?;
    Ok(port)
}
static PHASES: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());

/// Records the end of a setup phase (single-threaded: fork copies the
/// list); the phases reach the runner with `Started` (`--json` timings).
pub(super) fn mark(phase: &str) {
    let us = START.get_or_init(Instant::now).elapsed().as_micros();
    if let Ok(mut p) = PHASES.lock() {
        p.push((phase.to_owned(), u64::try_from(us).unwrap_or(u64::MAX)));
    }
}

/// An error with its causes, for the runner to print.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Signals the supervisor handles itself (blocked, read with sigtimedwait).
fn handled() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCONT,
        // "stop the task now": sent by the runner (output cap), or by the
        // kernel when the runner dies (Landlock-only mode's parent-death signal)
        Signal::SIGALRM,
    ] {
        s.add(sig);
    }
    s
}

struct Channel(UnixStream);

impl Channel {
    fn send(&mut self, msg: &StageMsg) {
        self.send_all(std::slice::from_ref(msg));
    }

    /// Several messages in one write: the runner wakes once for all of
    /// them (on this VM a wake-up of a sleeping process costs 0.1-0.8 ms).
    fn send_all(&mut self, msgs: &[StageMsg]) {
        let mut lines = Vec::new();
        for m in msgs {
            if serde_json::to_writer(&mut lines, m).is_ok() {
                lines.push(b'\n');
            }
        }
        let _ = self.0.write_all(&lines);
    }
}

/// Entry point of `taskbox-stage FD PASS_FD [ns|ns-hostnet|-]`: the stage
/// enters the `early` namespaces at once, while the runner is still
/// preparing the plan. Never returns.
///
/// `tmp`: the path the runner reserved for the task's private tmp on the
/// host (made early if the task will run without namespaces).
pub fn main(
    fd: RawFd,
    pass_fd: RawFd,
    early: super::plan::EarlyNamespaces,
    tmp: Option<&std::path::Path>,
    spread: Option<super::cpu::Spread>,
    home: Option<PathBuf>,
) -> ! {
    close_inherited(&[fd, pass_fd]);
    if let Some(s) = spread {
        let _ = SPREAD.set(s);
    }
    // SAFETY: the runner passed this descriptor number for our exclusive use.
    let pass = unsafe { UnixStream::from_raw_fd(pass_fd) };
    let _ = nix::fcntl::fcntl(
        &pass,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let _ = PASS.set(pass);
    // SAFETY: the runner passed this descriptor number for our exclusive use.
    let sock = unsafe { UnixStream::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let mut chan = Channel(sock);
    let code = match run(&mut chan, early, tmp, home.as_deref()) {
        Ok(code) => code,
        Err((code, e)) => {
            chan.send(&StageMsg::Failed {
                code,
                message: chain(&e),
            });
            code
        }
    };
    std::process::exit(code)
}

/// Closes every descriptor above stderr but `keep`. Whatever the caller of
/// taskbox left open without close-on-exec (a writable file outside the
/// workspace, a socket, a harness's pipe) would otherwise reach the command,
/// and an open descriptor is not checked by Landlock or the mount view.
fn close_inherited(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep.iter().filter_map(|f| u32::try_from(*f).ok()).collect();
    keep.sort_unstable();
    let mut lo = 3u32;
    for hi in keep.iter().copied().chain([u32::MAX]) {
        if hi > lo {
            // SAFETY: close_range only closes descriptors; none in [lo, hi)
            // is owned by anything in this process yet.
            let rc = unsafe { libc::syscall(libc::SYS_close_range, lo, hi - 1, 0u32) };
            if rc != 0 {
                close_listed(lo, hi - 1);
            }
        }
        lo = hi.saturating_add(1);
    }
}

/// `close_range` for kernels without it (before 5.9): the listed ones.
fn close_listed(lo: u32, hi: u32) {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| (lo..=hi).contains(fd))
        .collect();
    for fd in fds {
        // SAFETY: as above; the directory's own descriptor is closed already.
        unsafe { libc::close(fd as RawFd) };
    }
}

type StageResult<T> = Result<T, (i32, NativeError)>;

fn setup<T>(r: Result<T, NativeError>) -> StageResult<T> {
    r.map_err(|e| (125, e))
}

/// Whether `s` has something to read now (no wait).
fn readable(s: &UnixStream) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd as _;
    let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
}

fn read_plan(chan: &mut Channel) -> Result<NativePlan, NativeError> {
    let mut len = [0u8; 4];
    chan.0
        .read_exact(&mut len)
        .map_err(|source| NativeError::Setup {
            what: "read plan".into(),
            source,
        })?;
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    chan.0
        .read_exact(&mut buf)
        .map_err(|source| NativeError::Setup {
            what: "read plan".into(),
            source,
        })?;
    serde_json::from_slice(&buf).map_err(|e| NativeError::Plan {
        message: e.to_string(),
    })
}

fn run(
    chan: &mut Channel,
    early: super::plan::EarlyNamespaces,
    tmp: Option<&std::path::Path>,
    home: Option<&Path>,
) -> StageResult<i32> {
    use super::plan::EarlyNamespaces;
    START.get_or_init(Instant::now);
    die_with_parent();
    // The namespaces need nothing from the plan but our own ids: entering
    // them now overlaps their cost with the runner's preparation.
    let entered = (early != EarlyNamespaces::Later).then(|| {
        ns::enter(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
            early == EarlyNamespaces::All,
        )
    });
    // More of what needs no plan, while the runner prepares it: the
    // bounding set (inherited by every process of the task) and both
    // seccomp filters (with and without inet sockets).
    mark("entered");
    let bounding = rlimit::drop_bounding_set();
    mark("bounding");
    // Without namespaces the stage itself runs nothing the filter refuses
    // after this point, so it takes on the part that needs no plan now, off
    // the critical path (the kernel's attach cost is ~1.2 µs per
    // instruction); the command adds the socket-family rule.
    let prebuilt = match (early == EarlyNamespaces::Later)
        .then(attach_without_sockets)
        .and_then(Result::ok)
    {
        // Landlock-only: no `socket(AF_UNIX)`, no System V IPC (see `seccomp::build`).
        Some(insns) => Prebuilt {
            filters: (
                seccomp::sockets(false, false).map(|f| vec![f]),
                seccomp::sockets(true, false).map(|f| vec![f]),
            ),
            attached: Some(insns),
        },
        None => Prebuilt {
            filters: (seccomp::build(false, true), seccomp::build(true, true)),
            attached: None,
        },
    };
    // Without namespaces the task's tmp is a private directory on the
    // host: made now, off the critical path, where the runner reserved it.
    let without_ns = match &entered {
        None => true,
        Some(Err(NativeError::Namespaces { .. })) => true,
        Some(_) => false,
    };
    let tmp = tmp.filter(|_| without_ns);
    if tmp.is_some() {
        // Until the plan, the runner's death shows as end of file on the
        // channel, and the stage then removes what it made: a death signal
        // must not cut that short (no process of the task exists yet).
        // Re-armed once the plan is in.
        // SAFETY: PR_SET_PDEATHSIG takes a signal number (0: none).
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) };
    }
    let made_tmp = tmp
        .filter(|t| private_dir(t).is_ok())
        .map(std::path::Path::to_path_buf);
    mark("prebuilt");
    // Without namespaces the granted trees are carved around the deny
    // paths, a rule (an open) per entry of each directory on the way:
    // those it will most likely carve are listed and opened now, while the
    // plan is on its way (the carve takes them, or they are closed).
    // They stop when the plan is in (it must not wait for them).
    let listings: Vec<ll::Listing> = if early == EarlyNamespaces::Later
        && ll::worth_opening_ahead(nix::unistd::getuid().as_raw())
    {
        let mut plan_in = false;
        let mut stop = || {
            plan_in = plan_in || readable(&chan.0);
            plan_in
        };
        ll::AHEAD
            .iter()
            .filter_map(|d| ll::preopen(Path::new(d), ll::AHEAD_MAX, &mut stop))
            .collect()
    } else {
        Vec::new()
    };
    mark("opened-ahead");
    // Then the base's deny paths (after `/etc`, which saves more where it
    // is opened: as root, measured), while the plan is on its way; it must
    // not wait for them either.
    let survey = {
        let mut plan_in = false;
        let mut stop = || {
            plan_in = plan_in || readable(&chan.0);
            plan_in
        };
        Survey::before_plan(home, nix::unistd::getuid().as_raw(), &mut stop)
    };
    mark("surveyed");
    // The top of `/`, for the view's hiding of what the profile grants
    // nothing in (it does not depend on the plan).
    let tops = matches!(entered, Some(Ok(_)))
        .then(ns::list_tops)
        .and_then(Result::ok);
    let plan = match read_plan(chan) {
        Ok(p) => p,
        // The runner decided not to launch (a refusal, a pending approval).
        Err(NativeError::Setup { source, .. })
            if source.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            if let Some(t) = &made_tmp {
                let _ = std::fs::remove_dir(t);
            }
            std::process::exit(0)
        }
        Err(e) => return Err((125, e)),
    };
    mark("plan");
    // The wall clock runs from the plan, as the runner's does (which also
    // covers the setup below, should it hang).
    let deadline = plan
        .spec
        .limits
        .wall_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    restore_cpus();
    if tmp.is_some() {
        die_with_parent();
    }
    // (An approved task runs under its recorded id, not the reserved one.)
    let tmp_made = match made_tmp {
        Some(t) if t == plan.host_tmp => true,
        Some(t) => {
            let _ = std::fs::remove_dir(t);
            false
        }
        None => false,
    };
    let want_net = plan.spec.net.mode != NetMode::Host;
    let mut ahead = Prepared::of(&plan, tmp_made, listings, &survey)?;
    // The mount view needs the mount namespace only, not the pid one: with
    // the namespaces entered early and a plan that runs in them, it is
    // built now, by the stage. pid 1 mounts its /proc afterwards. The pids
    // cgroup is joined first: its files are read-only once the view is.
    let mut cgroup_joined = false;
    if matches!(entered, Some(Ok(_)))
        && plan.isolation == Isolation::Namespaces
        && want_net == (early == EarlyNamespaces::All)
    {
        if let Some(cg) = &plan.cgroup {
            setup(join_cgroup(cg))?;
            cgroup_joined = true;
        }
        ahead.view_prepared = Some(setup(ns::prepare_view(&mount_plan(
            &plan,
            &ahead.hidden,
            &ahead.keep,
            tops.as_deref(),
        )))?);
        mark("view-early");
    }
    let entered = match entered {
        // Past the first unshare: half entered, whatever the plan says,
        // there is no way back.
        Some(Err(e @ NativeError::Setup { .. })) => return Err((125, e)),
        other => other,
    };
    setup(bounding)?;
    if nix::unistd::getppid().as_raw() != plan.runner_pid {
        return Err((
            125,
            NativeError::Plan {
                message: "the runner went away before launch".into(),
            },
        ));
    }
    setup(
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None).map_err(|e| {
            NativeError::Setup {
                what: "block signals".into(),
                source: e.into(),
            }
        }),
    )?;
    let mut notes = Vec::new();
    // (An early attempt that failed with `Namespaces` entered nothing: the
    // plan decides below; any other failure ended the stage above.)
    if entered.as_ref().is_some_and(Result::is_ok)
        && (plan.isolation != Isolation::Namespaces || want_net != (early == EarlyNamespaces::All))
    {
        return Err((
            125,
            NativeError::Plan {
                message: "the stage entered namespaces the plan does not run with".into(),
            },
        ));
    }
    if prebuilt.attached.is_some() && plan.isolation == Isolation::Namespaces {
        return Err((
            125,
            NativeError::Plan {
                message: "the stage filtered itself for Landlock-only mode, but the plan runs with namespaces".into(),
            },
        ));
    }
    let isolation = match plan.isolation {
        Isolation::Namespaces => {
            match entered.unwrap_or_else(|| ns::enter(plan.uid, plan.gid, want_net)) {
                Ok(()) => Isolation::Namespaces,
                // Past the first unshare (the late path): half entered.
                Err(e @ NativeError::Setup { .. }) => return Err((125, e)),
                Err(e) if plan.fallback_allowed => {
                    notes.push(format!(
                        "namespaces unavailable ({e}); running under Landlock + seccomp only"
                    ));
                    Isolation::LandlockOnly
                }
                Err(e) => {
                    return Err((
                        126,
                        NativeError::Requirement {
                            missing: format!(
                                "{e}. The profile requires namespaces. Hint: enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 kernel.apparmor_restrict_unprivileged_userns=0), or use a profile with `require.namespaces = false`"
                            ),
                        },
                    ));
                }
            }
        }
        Isolation::LandlockOnly => {
            if !plan.fallback_allowed {
                return Err((
                    126,
                    NativeError::Requirement {
                        missing: "namespaces are switched off here but the profile requires them"
                            .into(),
                    },
                ));
            }
            notes.push("namespaces switched off; running under Landlock + seccomp only".into());
            Isolation::LandlockOnly
        }
    };
    mark("namespaces");
    if tmp_made && isolation == Isolation::Namespaces {
        let _ = std::fs::remove_dir(&plan.host_tmp);
    }
    if isolation == Isolation::LandlockOnly && plan.spec.net.mode == NetMode::Proxy {
        return Err((
            126,
            NativeError::Requirement {
                missing: "network mode proxy needs a network namespace (so the proxy is the only way out), and namespaces are unavailable here".into(),
            },
        ));
    }
    if isolation == Isolation::LandlockOnly && !plan.secret_files.is_empty() {
        return Err((
            126,
            NativeError::Requirement {
                missing: "credentials delivered as files need the task's private in-memory /tmp (a mount namespace), and namespaces are unavailable here: the file would land on disk. Hint: deliver it as `env:NAME` or `header`, or enable user namespaces".into(),
            },
        ));
    }
    if isolation == Isolation::LandlockOnly && plan.overlay.is_some() {
        return Err((
            126,
            NativeError::Requirement {
                missing: "the overlay workspace needs a mount namespace, and namespaces are unavailable here: an explore task would write the real workspace. Hint: enable unprivileged user namespaces, or use `-p readonly`".into(),
            },
        ));
    }
    if isolation == Isolation::LandlockOnly {
        notes.push(
            "without a mount namespace, chmod/chown/utimes on files the caller owns outside the writable trees are not refused (Landlock does not cover them)"
                .into(),
        );
        notes.push(
            "without a pid namespace, the host's processes are visible in /proc, command lines included (their environments and memory are not: Landlock refuses that access to processes outside the task)"
                .into(),
        );
        // What the command's seccomp filter refuses in this mode (see
        // `seccomp::build`), and what the profile asked for in vain.
        notes.push("without a mount namespace, unix sockets are refused (socket(AF_UNIX) fails; socketpair works): Landlock cannot keep the host's sockets out of reach".into());
        notes.push("without an IPC namespace, System V shared memory, message queues and semaphores are refused: they would be the host's".into());
        let trees = [
            (
                &plan.spec.fs.scratch,
                "the scratch trees are not writable (they would be the host's)",
            ),
            (
                &plan.spec.fs.cache,
                "the cache trees are read-only (a write would reach the host's)",
            ),
        ];
        for (list, what) in trees.into_iter().filter(|(l, _)| !l.is_empty()) {
            let list: Vec<String> = list.iter().map(|p| p.display().to_string()).collect();
            notes.push(format!(
                "without a mount namespace, {what}: {}",
                list.join(", ")
            ));
        }
    }
    if let Some(cg) = plan.cgroup.as_ref().filter(|_| !cgroup_joined) {
        setup(join_cgroup(cg))?;
    }
    match isolation {
        Isolation::Namespaces => {
            // With the view prepared, the Landlock rules outside /proc can be
            // added here, in parallel with pid 1 (which mounts the task's
            // /proc, adds the rules in it and enforces the whole ruleset).
            let shared = if ahead.view_prepared.is_some() {
                Some(setup(share_landlock(&plan))?)
            } else {
                None
            };
            // SAFETY: single-threaded process; the child only makes syscalls and
            // eventually exits or execs.
            match unsafe { fork() } {
                Ok(ForkResult::Child) => {
                    die_with_parent();
                    if let Some((filling, ready, done)) = shared {
                        drop(done);
                        ahead.landlock = Some(SharedLandlock { filling, ready });
                    }
                    let code = match init(chan, &plan, isolation, notes, None, prebuilt, ahead) {
                        Ok(c) => c,
                        Err((c, e)) => {
                            chan.send(&StageMsg::Failed {
                                code: c,
                                message: chain(&e),
                            });
                            c
                        }
                    };
                    std::process::exit(code)
                }
                Ok(ForkResult::Parent { child }) => {
                    if let Some((filling, ready, done)) = shared {
                        drop(ready);
                        // pid 1 mounts /proc while we fill the ruleset:
                        // on another CPU (until our report, see
                        // `restore_cpus`).
                        if filling.is_some()
                            && let Some(s) = SPREAD.get()
                        {
                            s.away(child.as_raw());
                        }
                        fill_outside_proc(&plan, &ahead.hidden, filling, done);
                    }
                    release_output();
                    // Every process of the task descends from pid 1, in the
                    // cgroup already: pid 1 removes it at the end, once
                    // it is the last one in it.
                    if plan.cgroup.is_some() {
                        move_out_of_cgroup();
                    }
                    Ok(relay(chan, child, deadline, pid1_reports_done(&plan)))
                }
                Err(e) => Err((
                    125,
                    NativeError::Setup {
                        what: "fork pid 1".into(),
                        source: e.into(),
                    },
                )),
            }
        }
        Isolation::LandlockOnly => {
            // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer; orphans of the
            // command reparent to us so nothing escapes the final kill.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
            // Without a pid namespace our death would not take the task with
            // it: on the runner's death, get SIGALRM (handled: kill the tree)
            // instead of SIGKILL.
            // SAFETY: PR_SET_PDEATHSIG takes a signal number.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGALRM, 0, 0, 0) };
            if nix::unistd::getppid().as_raw() != plan.runner_pid {
                return Err((
                    125,
                    NativeError::Plan {
                        message: "the runner went away during launch".into(),
                    },
                ));
            }
            init(chan, &plan, isolation, notes, deadline, prebuilt, ahead)
        }
    }
}

/// How the stage leaves the task's pids cgroup at the end: a detached clone
/// of the hierarchy's mount (`open_tree`, taken when it joins), the move
/// file of the cgroup it came from and the task cgroup's name, both
/// relative to it. By the end the task's view has remounted the host's
/// filesystems (cgroupfs included) read-only in the stage's mount
/// namespace; the clone is outside that tree and stays writable. (Nothing
/// is opened for writing early: a writer on a mount makes its read-only
/// remount fail with EBUSY.)
struct CgroupExit {
    root: std::os::fd::OwnedFd,
    origin: PathBuf,
    name: PathBuf,
}

static CGROUP: std::sync::OnceLock<CgroupExit> = std::sync::OnceLock::new();

/// The file through which a thread moves itself into a cgroup: on cgroup
/// v1 `tasks` with pid 0, which skips the global lock whose write side
/// waits for an RCU grace period (0.03 ms against 5 ms for a write of a pid
/// to `cgroup.procs`, measured here); on v2 `cgroup.procs`.
fn move_file(v1: bool) -> &'static str {
    if v1 { "tasks" } else { "cgroup.procs" }
}

/// Moves this (single-threaded) stage into the task's pids cgroup, before
/// it starts any process of the task, so all of them are counted; prepares
/// [`leave_cgroup`].
fn join_cgroup(dir: &std::path::Path) -> Result<(), NativeError> {
    let v1 = dir.join("tasks").exists();
    let exit = cgroup_exit(dir, v1);
    let file = dir.join(move_file(v1));
    std::fs::write(&file, "0").map_err(|source| NativeError::Setup {
        what: format!("join the task's pids cgroup {}", file.display()),
        source,
    })?;
    if let Some(exit) = exit {
        let _ = CGROUP.set(exit);
    }
    Ok(())
}

/// Opens what [`leave_cgroup`] needs; `None` if anything is missing (the
/// runner then removes the cgroup, after the stage's exit).
fn cgroup_exit(dir: &std::path::Path, v1: bool) -> Option<CgroupExit> {
    use nix::fcntl::OFlag;
    use std::os::fd::FromRawFd as _;
    // The task's cgroup was made right under the hierarchy's root. This
    // process's own line: `N:pids:/path` on v1, `0::/path` on v2.
    let root = dir.parent()?;
    let controller = if v1 { ":pids:" } else { "0::" };
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| {
        let at = l.find(controller)?;
        Some(PathBuf::from(
            l[at + controller.len()..].trim_start_matches('/'),
        ))
    })?;
    let path = ns::cstring(root)?;
    // SAFETY: open_tree reads a NUL-terminated path and returns a new
    // descriptor (or -1), which we then own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    let root_fd = match i32::try_from(fd).ok().filter(|fd| *fd >= 0) {
        // SAFETY: a descriptor the kernel just returned to us.
        Some(fd) => unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        // Without a mount namespace nothing is remounted, and the stage may
        // already be under the seccomp filter (which refuses open_tree):
        // the hierarchy's root itself does.
        None => nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?,
    };
    Some(CgroupExit {
        root: root_fd,
        origin: rel.join(move_file(v1)),
        name: PathBuf::from(dir.file_name()?),
    })
}

/// Once no process of the task is left: moves this process (the stage,
/// or pid 1 at its end) back to the cgroup the stage came from and removes
/// the task's, so the runner need not wait for the stage's own exit (its
/// namespaces' teardown, 1-2 ms) to remove it. `false` if it could not
/// (the runner then does).
fn leave_cgroup() -> bool {
    let Some(exit) = CGROUP.get() else {
        return false;
    };
    move_out_of_cgroup()
        && nix::unistd::unlinkat(
            &exit.root,
            &exit.name,
            nix::unistd::UnlinkatFlags::RemoveDir,
        )
        .is_ok()
}

/// Moves this (single-threaded) process back to the cgroup the stage came
/// from; false if it cannot.
fn move_out_of_cgroup() -> bool {
    use nix::fcntl::OFlag;
    let Some(exit) = CGROUP.get() else {
        return false;
    };
    nix::fcntl::openat(
        &exit.root,
        &exit.origin,
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .is_ok_and(|fd| std::io::Write::write_all(&mut std::fs::File::from(fd), b"0").is_ok())
}

fn die_with_parent() {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
}

/// Waits for a blocked signal until `deadline`; `None` on timeout.
fn wait_signal(set: &SigSet, deadline: Option<Instant>) -> Option<i32> {
    loop {
        let ts = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            libc::timespec {
                tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX as _),
                tv_nsec: libc::c_long::from(left.subsec_nanos() as i32),
            }
        });
        let ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `set` is a valid sigset and `ptr` is null or points to a live timespec.
        let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), ptr) };
        if sig >= 0 {
            return Some(sig);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => return None,
            _ => continue, // EINTR
        }
    }
}

/// Writes file credentials under the task's private in-memory /tmp: the
/// directory 0700, each file 0400, owned by the task's uid.
fn write_secret_files(files: &[super::plan::SecretFile]) -> Result<(), NativeError> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if files.is_empty() {
        return Ok(());
    }
    let err = |what: &str, source| NativeError::Setup {
        what: what.to_owned(),
        source,
    };
    let dir = super::plan::secret_file_path("");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| err("create the credentials directory", e))?;
    for f in files {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(super::plan::secret_file_path(&f.name))
            .map_err(|e| err("write a credential file", e))?;
        std::io::Write::write_all(&mut out, f.value.as_bytes())
            .map_err(|e| err("write a credential file", e))?;
    }
    Ok(())
}

/// Outer stage in namespace mode: enforces the wall clock, relays signals to
/// pid 1, and reports `Done` once pid 1 is reaped unless pid 1 did
/// (`init_reports_done`) or was killed.
fn relay(chan: &mut Channel, init: Pid, deadline: Option<Instant>, init_reports_done: bool) -> i32 {
    let set = handled();
    let mut limit = None;
    let mut killed = false;
    loop {
        match wait_signal(&set, deadline.filter(|_| !killed)) {
            None => {
                limit = Some(LimitHit::Wall);
                killed = true;
                let _ = kill(init, Signal::SIGKILL);
            }
            Some(libc::SIGCHLD) => {
                // pid 1 reported the command's end itself, unless we killed it.
                let exit = match waitpid(init, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => decode(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signal(sig as i32),
                    _ => continue,
                };
                // pid 1 is reaped: the pid namespace is empty.
                return if killed {
                    let (ended, code) = finish(Exit::Signal(libc::SIGKILL), limit);
                    chan.send_all(&[ended, done()]);
                    code
                } else {
                    if !init_reports_done {
                        chan.send(&done());
                    }
                    exit.status()
                };
            }
            Some(libc::SIGALRM) => {
                killed = true;
                let _ = kill(init, Signal::SIGKILL);
            }
            Some(sig) => {
                if let Ok(s) = Signal::try_from(sig) {
                    let _ = kill(init, s);
                }
            }
        }
    }
}

/// Whether pid 1 tells the runner the task is over (`Done`) itself, once
/// it has reaped every other process of the pid namespace: the runner then
/// need not wait for pid 1's exit to reach the stage (a hand-off of ~0.2
/// ms here). With a pids cgroup, only if pid 1 can leave and remove it:
/// the stage moves itself out once pid 1 runs (see [`leave_cgroup`]).
fn pid1_reports_done(plan: &NativePlan) -> bool {
    plan.cgroup.is_none() || CGROUP.get().is_some()
}

/// pid 1's last step: SIGKILL to every other process of its pid namespace
/// until none is left to reap (orphans are reparented to pid 1; a process
/// with SIGKILL pending cannot fork).
fn reap_namespace() {
    loop {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        match waitpid(None, Some(WaitPidFlag::__WALL)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// pid 1 reports the command's death by signal N as exit 128+N (it cannot
/// die of most signals itself); decode that back.
fn decode(code: i32) -> Exit {
    if (129..=128 + 64).contains(&code) {
        Exit::Signal(code - 128)
    } else {
        Exit::Code(code)
    }
}

/// The message that tells the runner every process of the task is gone,
/// with their usage (the stage leaves its pids cgroup first).
fn done() -> StageMsg {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|u| {
            let us = |t: nix::sys::time::TimeVal| {
                u64::try_from(t.tv_sec() * 1_000_000 + t.tv_usec()).unwrap_or(0)
            };
            crate::sandbox::Usage {
                user_us: us(u.user_time()),
                sys_us: us(u.system_time()),
                max_rss_kib: u64::try_from(u.max_rss()).unwrap_or(0),
                output_bytes: 0,
            }
        })
        .unwrap_or_default();
    let cgroup_removed = leave_cgroup();
    StageMsg::Done {
        usage,
        cgroup_removed,
    }
}

/// The stage writes nothing to the task's output: dropping its copies lets
/// the runner see end-of-output as soon as the task's last process is gone.
fn release_output() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd as _;
        for fd in [1, 2] {
            // SAFETY: dup2 onto the standard descriptors of this process.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// The message that reports the command's end, and the stage's exit code.
fn finish(exit: Exit, limit: Option<LimitHit>) -> (StageMsg, i32) {
    let code = match limit {
        Some(LimitHit::Wall) => 124,
        _ => exit.status(),
    };
    (StageMsg::Exited { exit, limit }, code)
}

/// Seccomp filters built ahead of the plan, for the command to attach.
struct Prebuilt {
    /// Without inet sockets, with them.
    filters: (
        Result<Vec<seccompiler::BpfProgram>, NativeError>,
        Result<Vec<seccompiler::BpfProgram>, NativeError>,
    ),
    /// Instructions of the part the stage attached to itself already
    /// (inherited by the command), if it did.
    attached: Option<usize>,
}

/// Attaches everything of the filter but the socket-family rule to this
/// (Landlock-only) stage; its instruction count.
fn attach_without_sockets() -> Result<usize, NativeError> {
    let f = seccomp::without_sockets(false)?;
    rlimit::no_new_privs()?;
    seccomp::apply(&[f])
}

/// What the stage works out from the plan before pid 1 exists, which pid 1
/// inherits (a fork's copy): the mount view and the Landlock holes come
/// from the same expansion of the deny globs.
struct Prepared {
    /// Deny paths (globs expanded at launch) and the runner's own dirs.
    hidden: Vec<PathBuf>,
    /// Granted trees, kept visible under what the view overmounts.
    keep: Vec<PathBuf>,
    /// Files for the command (environment variable, descriptor), opened
    /// before the view hides their directories; kept open (no CLOEXEC)
    /// into the command, read-only.
    inherited: Vec<(String, std::os::fd::OwnedFd)>,
    /// [`ns::prepare_view`] ran in the stage already (what it left for pid 1
    /// to finish).
    view_prepared: Option<ns::Deferred>,
    /// The host tmp (Landlock-only mode) exists already.
    tmp_made: bool,
    /// pid 1's side of a ruleset the stage fills too.
    landlock: Option<SharedLandlock>,
    /// Directories listed and opened for the carve ahead of the plan.
    listings: Vec<ll::Listing>,
    /// The filesystems the task writes on disk, for `[limits] disk_free`.
    disks: super::disk::Disks,
}

/// A Landlock ruleset the stage and pid 1 fill together (its descriptor is
/// shared across the fork): the stage adds the rules outside /proc and
/// reports on `ready`; pid 1 adds those in its own /proc, waits for the
/// report and enforces the ruleset on the command.
struct SharedLandlock {
    /// `None`: the kernel has no Landlock.
    filling: Option<ll::Filling>,
    /// The stage's report: `F` (its rules are in), or `E` and why not.
    ready: std::os::fd::OwnedFd,
}

/// The ruleset pid 1 and the stage will share, and the report pipe
/// (read end, write end).
fn share_landlock(
    plan: &NativePlan,
) -> Result<
    (
        Option<ll::Filling>,
        std::os::fd::OwnedFd,
        std::os::fd::OwnedFd,
    ),
    NativeError,
> {
    let filling = ll::create(plan.spec.net.mode != NetMode::None)?;
    let (ready, done) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| NativeError::Setup {
            what: "pipe".into(),
            source: e.into(),
        })?;
    Ok((filling, ready, done))
}

/// The stage's part of a shared ruleset: every granted tree outside /proc,
/// with the deny holes carved out; then the report to pid 1.
fn fill_outside_proc(
    plan: &NativePlan,
    hidden: &[PathBuf],
    filling: Option<ll::Filling>,
    done: std::os::fd::OwnedFd,
) {
    let (roots, holes) = landlock_inputs(plan, hidden, Path::new("/tmp"), Isolation::Namespaces);
    let roots: Vec<(PathBuf, Grant)> = roots
        .into_iter()
        .filter(|(r, _)| !ll::needs_proc(r))
        .collect();
    let report = match filling {
        None => b"F".to_vec(),
        Some(mut f) => match f.add(&ll::carve(
            &roots,
            &holes,
            &mut Vec::new(),
            ll::Existing::Masked,
        )) {
            Ok(()) => b"F".to_vec(),
            Err(e) => [b"E".as_slice(), chain(&e).as_bytes()].concat(),
        },
    };
    let _ = nix::unistd::write(&done, &report);
}

/// Landlock's roots (each granted tree, `{tmp}` mapped to `tmp` without
/// namespaces) and its holes: the deny paths (with namespaces, for those
/// not there at launch; see [`ll::Existing`]) and, without namespaces, the
/// protected paths, which keep read access.
fn landlock_inputs(
    plan: &NativePlan,
    hidden: &[PathBuf],
    tmp: &Path,
    isolation: Isolation,
) -> (Vec<(PathBuf, Grant)>, Vec<Hole>) {
    let spec = &plan.spec;
    // Without a mount namespace, the profile's `{tmp}` (resolved as /tmp)
    // and literal /tmp paths are the task's own directory on the host, never
    // the shared /tmp; other paths that lie in /tmp (a workspace checked out
    // there) are granted as they are.
    let retmp = |p: &PathBuf| {
        if isolation == Isolation::LandlockOnly
            && let Ok(rest) = p.strip_prefix("/tmp")
            && spec.fs.tmp.contains(p)
        {
            tmp.join(rest)
        } else {
            p.clone()
        }
    };
    let mut roots: Vec<(PathBuf, Grant)> = spec
        .fs
        .read
        .iter()
        .map(|p| (retmp(p), Grant::Read))
        .collect();
    roots.extend(spec.fs.write.iter().map(|p| (retmp(p), Grant::Write)));
    // With namespaces `/dev/shm` is the task's own fresh tmpfs, like its
    // `/tmp` (capped at its memory limit, gone with it), and POSIX
    // semaphores and shared memory live there: Python's multiprocessing
    // locks and Chromium need it. Without, it would be the host's.
    // Scratch trees likewise (an empty directory of the task's in-memory
    // store over each); without namespaces they are not granted at all.
    // Cache trees: written through the task's layer with namespaces (for
    // those the view layers: a directory, not a file); without, the
    // host's, so read-only.
    roots.extend(spec.fs.cache.iter().map(|c| {
        let grant = if isolation == Isolation::Namespaces && ns::own_tree(c) {
            Grant::Write
        } else {
            Grant::Read
        };
        (retmp(c), grant)
    }));
    if isolation == Isolation::Namespaces {
        roots.push((PathBuf::from("/dev/shm"), Grant::Write));
        roots.extend(
            spec.fs
                .scratch
                .iter()
                .filter(|s| ns::own_tree(s))
                .map(|s| (s.clone(), Grant::Write)),
        );
    }
    // With namespaces the mount view masks the deny paths (read-only
    // mode-000 mounts the task can neither remove nor chmod) and binds the
    // protected ones read-only; without, Landlock alone holds them, carved
    // out of the granted trees: a rule per entry of each directory on the
    // way (`/etc` has some 140), which the masks make needless. A mask
    // needs the path to exist, though: a deny path not there at launch is
    // left to Landlock either way (carved where the task could make it).
    // With namespaces, not in the trees that are the task's alone and
    // thrown away after it (the overlay workspace, whose changes reach the
    // real one only through a human's promote, and the fresh /tmp and
    // /dev/shm): there, making one reaches nothing of the host's, while the
    // carve would refuse every new entry on the way (`target/` at the top
    // of the workspace, for a `{workspace}/.env` not there).
    // A writable tree granted inside one of them is the host's, bound
    // back in: a path in it is no throwaway.
    let overlay = plan.overlay.as_ref().map(|_| spec.workspace.as_path());
    let throwaway = |p: &Path| {
        isolation == Isolation::Namespaces
            && overlay
                .into_iter()
                .chain([Path::new("/tmp"), Path::new("/dev/shm")])
                .chain(spec.fs.scratch.iter().map(PathBuf::as_path))
                .chain(spec.fs.cache.iter().map(PathBuf::as_path))
                .any(|t| {
                    ll::within(p, t)
                        && !spec
                            .fs
                            .write
                            .iter()
                            .any(|w| ll::strictly_below(w, t) && ll::within(p, w))
                })
    };
    let mut holes: Vec<Hole> = hidden
        .iter()
        .filter(|p| !throwaway(p))
        .map(|p| Hole {
            path: p.clone(),
            keep: None,
        })
        .collect();
    if isolation == Isolation::LandlockOnly {
        holes.extend(spec.fs.protect.iter().filter(|p| p.exists()).map(|p| Hole {
            path: p.clone(),
            keep: Some(Grant::Read),
        }));
    }
    (roots, holes)
}

impl Prepared {
    fn of(
        plan: &NativePlan,
        tmp_made: bool,
        listings: Vec<ll::Listing>,
        survey: &Survey,
    ) -> StageResult<Self> {
        let spec = &plan.spec;
        let mut hidden = survey.hidden(&spec.fs.deny, plan.uid);
        hidden.extend(plan.hide.iter().cloned());
        let keep = spec
            .fs
            .read
            .iter()
            .chain(&spec.fs.write)
            .chain(&spec.fs.scratch)
            .chain(&spec.fs.cache)
            .cloned()
            .collect();
        let mut inherited = Vec::new();
        for f in &plan.inherit {
            let file = setup(
                std::fs::File::open(&f.path).map_err(|source| NativeError::Setup {
                    what: format!("open {} for the command", f.path.display()),
                    source,
                }),
            )?;
            let fd: std::os::fd::OwnedFd = file.into();
            let _ = nix::fcntl::fcntl(
                &fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            );
            inherited.push((f.env.clone(), fd));
        }
        let disks = super::disk::Disks::of(plan);
        Ok(Self {
            hidden,
            keep,
            inherited,
            view_prepared: None,
            tmp_made,
            landlock: None,
            listings,
            disks,
        })
    }
}

/// The task's mount view, from the plan and what the stage worked out.
fn mount_plan<'a>(
    plan: &'a NativePlan,
    hidden: &'a [PathBuf],
    keep: &'a [PathBuf],
    tops: Option<&'a [(PathBuf, ns::Top)]>,
) -> ns::MountPlan<'a> {
    let spec = &plan.spec;
    ns::MountPlan {
        mask_dirs: &plan.mask_sockets,
        deny: hidden,
        protect: &spec.fs.protect,
        workspace: &spec.workspace,
        keep,
        write: &spec.fs.write,
        overlay: plan
            .overlay
            .as_ref()
            .map(|o| (o.upper.as_path(), o.work.as_path())),
        tops,
        tmp_size: spec.limits.memory,
        scratch: &spec.fs.scratch,
        cache: &spec.fs.cache,
    }
}

/// pid 1 of the task (or the stage itself in Landlock-only mode): builds the
/// view, starts the command, reaps, and kills what is left when it ends.
#[allow(
    clippy::too_many_arguments,
    reason = "one step of the stage, two call sites; each argument is a distinct piece of state"
)]
fn init(
    chan: &mut Channel,
    plan: &NativePlan,
    isolation: Isolation,
    mut notes: Vec<String>,
    deadline: Option<Instant>,
    prebuilt: Prebuilt,
    ahead: Prepared,
) -> StageResult<i32> {
    let spec = &plan.spec;
    let Prepared {
        hidden,
        keep,
        inherited,
        view_prepared,
        tmp_made,
        landlock: shared,
        mut listings,
        mut disks,
    } = ahead;
    if isolation == Isolation::Namespaces {
        disks.with_namespaces(&plan.host_tmp);
    }
    if let Some((path, free, floor)) = disks.short() {
        return Err((
            126,
            NativeError::Requirement {
                missing: format!(
                    "the filesystem of {} has {} free, less than limits.disk_free ({}): the task could fill it. Hint: free space there (`taskbox task discard` frees a task's kept changes), or lower limits.disk_free",
                    path.display(),
                    super::disk::words(free),
                    super::disk::words(floor)
                ),
            },
        ));
    }
    let mut namespaces = Vec::new();
    let mut proxy_port = None;
    if isolation == Isolation::Namespaces {
        let mounts = mount_plan(plan, &hidden, &keep, None);
        setup(match &view_prepared {
            Some(later) => ns::finish_view(&mounts, later),
            None => ns::build_view(&mounts),
        })?;
        setup(write_secret_files(&plan.secret_files))?;
        if spec.net.mode == NetMode::Proxy {
            setup(ns::loopback_up())?;
            proxy_port = Some(setup(proxy_listener())?);
        }
        ns::set_hostname();
        namespaces = ns::NAMESPACES
            .iter()
            .filter(|n| spec.net.mode != NetMode::Host || **n != "net")
            .map(|s| (*s).to_owned())
            .collect();
        if spec.net.mode == NetMode::Host {
            notes.push("network mode host: the task shares the host's network".into());
        }
    }
    // Landlock rules: roots, with deny holes (and, without a mount namespace,
    // protected holes) carved out.
    let tmp = match isolation {
        Isolation::Namespaces => PathBuf::from("/tmp"),
        Isolation::LandlockOnly => {
            if !tmp_made {
                setup(
                    private_dir(&plan.host_tmp).map_err(|source| NativeError::Setup {
                        what: format!("create private tmp {}", plan.host_tmp.display()),
                        source,
                    }),
                )?;
            }
            plan.host_tmp.clone()
        }
    };
    let (mut roots, holes) = landlock_inputs(plan, &hidden, &tmp, isolation);
    if holes.iter().any(|h| h.keep.is_some()) {
        notes.push("protected paths are carved out with Landlock: new files cannot be created directly in their parent directories".into());
    }
    // A shared ruleset has the stage's rules outside /proc already.
    if shared.is_some() {
        roots.retain(|(r, _)| ll::needs_proc(r));
    }
    mark("view");
    let existing = match isolation {
        Isolation::Namespaces => ll::Existing::Masked,
        Isolation::LandlockOnly => ll::Existing::Carved,
    };
    let rules = ll::carve(&roots, &holes, &mut listings, existing);
    // Listings the carve did not take: closed now, not inherited.
    drop(listings);
    if isolation == Isolation::LandlockOnly && rules.iter().any(|r| r.grant == Grant::List) {
        notes.push("without a mount namespace, entry names (never contents) inside a denied directory whose parent is granted can be listed".into());
    }
    let inet = spec.net.mode != NetMode::None;
    let attached = prebuilt.attached.unwrap_or(0);
    let filters = setup(match (isolation, prebuilt.attached) {
        // Namespaces were tried and failed: the filters built for them
        // allow unix sockets and System V IPC, which only a mount view and
        // an IPC namespace keep in bounds.
        (Isolation::LandlockOnly, None) => seccomp::build(inet, false),
        _ if inet => prebuilt.filters.1,
        _ => prebuilt.filters.0,
    })?;
    mark("prepared");
    let mut fds: Vec<(String, String)> = inherited
        .iter()
        .map(|(k, fd)| {
            use std::os::fd::AsRawFd as _;
            (k.clone(), fd.as_raw_fd().to_string())
        })
        .collect();
    for f in &plan.secret_files {
        fds.push((
            super::plan::secret_file_var(&f.name),
            super::plan::secret_file_path(&f.name).display().to_string(),
        ));
    }
    let (exe, argv, envp) =
        exec_args(plan, &tmp, proxy_port, &fds).map_err(|e| (e.exit_code(), e))?;

    let mut moved = Some((notes, namespaces, shared));
    let me = getpid();
    let child = spawn_command(&mut || {
        // The command dies with us: without a pid namespace nothing else
        // would take it down if we were killed (the runner kills a stage
        // whose setup outlives the wall clock, see `Running::started`).
        die_with_parent();
        if nix::unistd::getppid() != me {
            // SAFETY: as below; the stage is gone, nothing is to be told.
            unsafe { libc::_exit(125) }
        }
        let (notes, namespaces, shared) = moved.take().unwrap_or_default();
        let landlock = Landlock {
            rules: &rules,
            shared,
        };
        let code = match command(
            chan, plan, landlock, &filters, attached, namespaces, notes, &exe, &argv, &envp,
        ) {
            Ok(never) => match never {},
            Err((c, e)) => {
                chan.send(&StageMsg::Failed {
                    code: c,
                    message: chain(&e),
                });
                c
            }
        };
        // SAFETY: _exit skips atexit handlers and destructors that belong
        // to the (suspended) stage whose memory this child shares.
        unsafe { libc::_exit(code) }
    })
    .map_err(|e| {
        (
            125,
            NativeError::Setup {
                what: "start the command".into(),
                source: e.into(),
            },
        )
    })?;
    // The command exec'd: the rules' descriptors opened ahead are closed.
    drop(rules);
    restore_cpus();
    release_output();
    let set = handled();
    let mut status: Option<Exit> = None;
    let mut limit = None;
    let started = START.get().copied().unwrap_or_else(Instant::now);
    let mut disk_due = disks.watched().then(|| Instant::now() + super::disk::EVERY);
    let mut leases: Vec<(String, Instant)> = plan
        .secret_files
        .iter()
        .filter_map(|f| {
            Some((
                f.name.clone(),
                started + Duration::from_millis(f.expires_ms?),
            ))
        })
        .collect();
    loop {
        if let Some(exit) = status {
            kill_rest(isolation, child);
            let (ended, code) = finish(exit, limit);
            if isolation == Isolation::LandlockOnly {
                // kill_rest reaped every descendant (we are their subreaper).
                chan.send_all(&[ended, done()]);
                // The task's private tmp on the host goes after the runner
                // has its report (the runner exits without waiting for us;
                // it removes the directory itself if no report came).
                let _ = std::fs::remove_dir_all(&plan.host_tmp);
            } else if pid1_reports_done(plan) {
                reap_namespace();
                chan.send_all(&[ended, done()]);
            } else {
                chan.send(&ended);
            }
            return Ok(code);
        }
        // A file credential whose lease ends before the deadline wakes us
        // first, and so does the next look at the disks.
        let next_lease = leases.iter().map(|(_, at)| *at).min();
        let wake = [deadline, next_lease, disk_due].into_iter().flatten().min();
        let woke = wait_signal(&set, wake);
        // Whatever woke us (a task that keeps forking sends SIGCHLD often).
        if let Some(due) = disk_due
            && Instant::now() >= due
        {
            disk_due = Some(Instant::now() + super::disk::EVERY);
            if status.is_none() && disks.short().is_some() {
                limit = Some(LimitHit::Disk);
                kill_rest(isolation, child);
                status = Some(Exit::Signal(libc::SIGKILL));
                continue;
            }
        }
        if woke.is_none() && deadline.is_none_or(|d| Instant::now() < d) {
            let now = Instant::now();
            leases.retain(|(name, at)| {
                if *at > now {
                    return true;
                }
                let _ = std::fs::remove_file(super::plan::secret_file_path(name));
                chan.send(&StageMsg::LeaseEnded { name: name.clone() });
                false
            });
            continue;
        }
        match woke {
            None => {
                limit = Some(LimitHit::Wall);
                kill_rest(isolation, child);
                status = Some(Exit::Signal(libc::SIGKILL));
            }
            Some(libc::SIGCHLD) => loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                        status = Some(Exit::Code(code))
                    }
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                        status = Some(Exit::Signal(sig as i32))
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            },
            Some(libc::SIGALRM) => {
                kill_rest(isolation, child);
                status = Some(Exit::Signal(libc::SIGKILL));
            }
            Some(sig) => {
                if let Ok(s) = Signal::try_from(sig) {
                    // The command leads its own process group (setsid).
                    let _ = kill(Pid::from_raw(-child.as_raw()), s);
                }
            }
        }
    }
}

/// Makes `dir` (and its missing parents), accessible to its owner only.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Kills everything the command left behind. In a pid namespace, pid 1
/// exiting does it; without one, kill the command's group, then every child
/// reparented to us (we are a subreaper), until none is left.
fn kill_rest(isolation: Isolation, child: Pid) {
    let _ = kill(Pid::from_raw(-child.as_raw()), Signal::SIGKILL);
    if isolation == Isolation::Namespaces {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        return;
    }
    let me = getpid();
    for _ in 0..10_000 {
        let kids = children(me);
        for k in &kids {
            let _ = kill(Pid::from_raw(-k), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(*k), Signal::SIGKILL);
        }
        match waitpid(None, Some(WaitPidFlag::__WALL)) {
            Ok(_) => {}
            Err(_) if kids.is_empty() => return,
            Err(_) => {}
        }
    }
}

fn children(me: Pid) -> Vec<i32> {
    let path = format!("/proc/{me}/task/{me}/children");
    std::fs::read_to_string(path)
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

type CArgs = (
    std::ffi::CString,
    Vec<std::ffi::CString>,
    Vec<std::ffi::CString>,
);

/// Resolves the program on the task's PATH and builds argv and envp.
fn exec_args(
    plan: &NativePlan,
    tmp: &std::path::Path,
    proxy_port: Option<u16>,
    fds: &[(String, String)],
) -> Result<CArgs, NativeError> {
    use std::ffi::CString;
    let mut env: Vec<(String, String)> = plan.spec.env.vars.clone();
    env.retain(|(k, _)| !fds.iter().any(|(n, _)| n == k));
    env.extend(fds.iter().cloned());
    if let Some(port) = proxy_port {
        let vars = crate::proxy::proxy_env(port, &plan.spec.net.allow);
        env.retain(|(k, _)| !vars.iter().any(|(n, _)| n == k));
        env.extend(vars);
    }
    if !env.iter().any(|(k, _)| k == "TMPDIR") {
        env.push(("TMPDIR".into(), tmp.to_string_lossy().into_owned()));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("/usr/local/bin:/usr/bin:/bin", |(_, v)| v.as_str());
    let prog = &plan.argv[0];
    let exe: PathBuf = if prog.contains('/') {
        plan.cwd.join(prog)
    } else {
        path_var
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d).join(prog))
            .find(|p| {
                p.is_file()
                    && nix::unistd::access(p.as_path(), nix::unistd::AccessFlags::X_OK).is_ok()
            })
            .ok_or_else(|| NativeError::NotFound {
                program: prog.clone(),
            })?
    };
    let c = |s: &str| {
        CString::new(s).map_err(|_| NativeError::Plan {
            message: format!("NUL byte in `{s}`"),
        })
    };
    let exe_c = ns::cstring(&exe).ok_or_else(|| NativeError::Plan {
        message: "NUL byte in program path".into(),
    })?;
    let argv = plan
        .argv
        .iter()
        .map(|a| c(a))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|(k, v)| c(&format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((exe_c, argv, envp))
}

enum Never {}

/// Starts the command's process the way `posix_spawn` does: a child that
/// shares this process's memory while this (single-threaded) stage is
/// suspended until the child execs or exits. No page tables are copied and
/// no copy-on-write faults follow, which a `fork` of the stage pays for on
/// every launch. `body` runs on a stack of its own and must end in `execve`
/// or `_exit`, never return.
fn spawn_command(body: &mut dyn FnMut() -> isize) -> nix::Result<Pid> {
    use nix::sched::CloneFlags;
    const STACK: usize = 1 << 20;
    // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: the mapping is STACK bytes, readable and writable, and only
    // the child uses it, until it is unmapped below (after the child
    // exec'd or exited: CLONE_VFORK returns only then).
    let slice = unsafe { std::slice::from_raw_parts_mut(stack.cast::<u8>(), STACK) };
    // SAFETY: this process is single-threaded, and CLONE_VFORK suspends it
    // until the child execs or exits, so nothing runs concurrently on the
    // memory they share; the child runs `body`, which ends in execve or
    // _exit and so never returns into the stage's stack frames.
    let r = unsafe {
        nix::sched::clone(
            Box::new(body),
            slice,
            CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK,
            Some(libc::SIGCHLD),
        )
    };
    // SAFETY: the child no longer runs on this stack (see above).
    unsafe { libc::munmap(stack, STACK) };
    r
}

/// Puts back the default action of the signals the stage inherited
/// ignored for reasons of its own, so the command starts as it would from a
/// shell (an ignored signal stays ignored across exec): SIGPIPE, which every
/// Rust program ignores (with it ignored, `yes | head -1` never ends `yes` by
/// SIGPIPE), and glibc's two internal signals, which its `posix_spawn`
/// leaves ignored in the child. Signals the caller of taskbox ignored on
/// purpose (`nohup`, a background shell's SIGINT) stay ignored.
fn default_signals() {
    /// The kernel's `struct sigaction` (x86_64 and aarch64 layout).
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let dfl = KernelSigaction {
        handler: 0, // SIG_DFL
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for sig in [libc::SIGPIPE, 32, 33] {
        // SAFETY: rt_sigaction reads a live, correctly laid out struct; the
        // raw call because glibc's wrapper refuses its internal signals.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &raw const dfl,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
    }
}

/// The command's Landlock rules, and the ruleset the stage filled too, if so.
struct Landlock<'a> {
    rules: &'a [ll::Rule],
    shared: Option<SharedLandlock>,
}

impl Landlock<'_> {
    /// Builds (or completes) the ruleset and enforces it on this process.
    fn enforce(self, inet: bool) -> Result<ll::LandlockReport, NativeError> {
        let Some(SharedLandlock { filling, ready }) = self.shared else {
            return ll::apply(self.rules, inet);
        };
        let Some(mut filling) = filling else {
            return Ok(ll::absent());
        };
        filling.add(self.rules)?;
        // The stage's rules must all be in before the ruleset is enforced.
        let mut report = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::fs::File::from(ready), &mut report);
        restore_cpus();
        match report.split_first() {
            Some((b'F', _)) => filling.restrict(),
            Some((b'E', why)) => Err(NativeError::Landlock {
                message: String::from_utf8_lossy(why).into_owned(),
            }),
            _ => Err(NativeError::Landlock {
                message: "the stage ended before it added its rules".into(),
            }),
        }
    }
}

/// The command process: session, cwd, limits, privileges, Landlock, seccomp, exec.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site, each argument is a distinct piece of the plan"
)]
fn command(
    chan: &mut Channel,
    plan: &NativePlan,
    landlock: Landlock<'_>,
    filters: &[seccompiler::BpfProgram],
    attached: usize,
    namespaces: Vec<String>,
    mut notes: Vec<String>,
    exe: &std::ffi::CString,
    argv: &[std::ffi::CString],
    envp: &[std::ffi::CString],
) -> StageResult<Never> {
    let spec = &plan.spec;
    setup(
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).map_err(|e| {
            NativeError::Setup {
                what: "unblock signals".into(),
                source: e.into(),
            }
        }),
    )?;
    default_signals();
    setup(setsid().map(|_| ()).map_err(|e| NativeError::Setup {
        what: "setsid".into(),
        source: e.into(),
    }))?;
    setup(
        std::env::set_current_dir(&plan.cwd).map_err(|source| NativeError::Setup {
            what: format!("chdir {}", plan.cwd.display()),
            source,
        }),
    )?;
    mark("forked");
    setup(rlimit::drop_capabilities())?;
    setup(rlimit::no_new_privs())?;
    // seccomp before Landlock: with namespaces the ruleset is enforced only
    // once the stage's rules are in, and the filter's attach (the kernel
    // compiles it: ~0.15 ms) fills that wait instead of following it. What
    // runs between the two (Landlock's own syscalls, the report, setrlimit)
    // is nothing the filter refuses, and both hold before the exec.
    let insns = setup(seccomp::apply(filters))? + attached;
    mark("seccomp");
    let inet = spec.net.mode != NetMode::None;
    let report = setup(landlock.enforce(inet))?;
    mark("landlock");
    // After the rules: a low `open_files` must not make their opens fail
    // (the descriptors opened ahead hold low numbers until the exec).
    setup(rlimit::apply(&spec.limits))?;
    mark("limits");
    if report.abi < spec.require.landlock_abi {
        return Err((
            126,
            NativeError::Requirement {
                missing: format!(
                    "Landlock ABI {} is required but this kernel has {}. Hint: a newer kernel, or boot with lsm=...,landlock",
                    spec.require.landlock_abi, report.abi
                ),
            },
        ));
    }
    if report.level != Level::Full {
        notes.push(format!("landlock {:?}", report.level).to_lowercase());
    }
    let processes = plan.processes.clone();
    let limits = if spec.limits.processes.is_some() && processes == "none" {
        notes.push("the process limit is not enforced: uid 0 ignores RLIMIT_NPROC and no pids cgroup was writable".into());
        Level::Partial
    } else {
        Level::Full
    };
    let enforcement = Enforcement {
        landlock_abi: report.abi,
        landlock: report.level,
        landlock_rights: report.rights,
        seccomp: Level::Full,
        seccomp_insns: insns,
        namespaces,
        network: spec.net.mode,
        limits,
        processes,
        notes,
    };
    let phases = PHASES.lock().map(|p| p.clone()).unwrap_or_default();
    chan.send(&StageMsg::Started {
        enforcement,
        phases,
    });
    let e = nix::unistd::execve(exe, argv, envp).err();
    if e == Some(nix::errno::Errno::ENOENT) {
        return Err((
            127,
            NativeError::NotFound {
                program: plan.argv[0].clone(),
            },
        ));
    }
    let err = e.map_or_else(
        || std::io::Error::other("exec returned"),
        std::io::Error::from,
    );
    Err((
        126,
        NativeError::Exec {
            program: plan.argv[0].clone(),
            source: err,
        },
    ))
}
