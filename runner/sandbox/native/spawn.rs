//! Runner side of a native launch: start the stage (forked while the runner
//! is one small thread, else a plain spawn: never a fork or `pre_exec` of
//! the multi-threaded runner), hand it the plan, stream its output under
//! the cap, and collect the outcome.
//!
//! No thread per task: the caller's thread polls the command's output and
//! the stage's messages together, so a launch costs no thread start-ups and
//! no cross-thread wake-ups.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read as _, Write};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::NativeError;
use super::plan::{EarlyNamespaces, NativePlan};
use super::stage::StageMsg;
use crate::sandbox::{Enforcement, Exit, LimitHit, Outcome, Timings, Usage};

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Serializes the window in which the stage's socket end is inheritable, so a
/// concurrent spawn elsewhere in the runner never inherits it.
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

/// Stages that reported their task done but had not exited yet (namespace
/// teardown takes a millisecond or two), with the pids cgroup to remove once
/// they have: settled at the next launch or by [`settle`], off the critical
/// path and without a thread.
static EXITING: Mutex<Vec<(libc::pid_t, Option<PathBuf>)>> = Mutex::new(Vec::new());

fn reap_exited(settling: bool) {
    let mut pids = EXITING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pids.retain(|(pid, cgroup)| {
        let mut st = 0;
        // Settling, a stage with a pids cgroup (root) is waited for: the
        // cgroup can only be removed once it is empty, and leaving it to a
        // later sweep made every launch read a growing directory.
        let flags = if settling && cgroup.is_some() {
            0
        } else {
            libc::WNOHANG
        };
        // SAFETY: waitpid writes the status into a live local.
        let rc = unsafe { libc::waitpid(*pid, &mut st, flags) };
        if rc == 0 {
            return true;
        }
        if let Some(cg) = cgroup {
            let _ = std::fs::remove_dir(cg);
        }
        false
    });
}

/// Call before the runner exits: removes the pids cgroups of stages that
/// are still exiting (waiting for them: root only), and reaps those that
/// are done. One still tearing its namespaces down without a cgroup is
/// left to init: waiting would only delay the caller.
pub fn settle() {
    reap_exited(true);
}

/// Where the command's output goes (the caller's terminal, a buffer, ...).
pub type Sink = Box<dyn Write + Send>;

/// The command's output on its way to the caller, under the output cap.
struct Output {
    stdout: Option<File>,
    stderr: Option<File>,
    to_stdout: Sink,
    to_stderr: Sink,
    cap: Option<u64>,
    total: u64,
    hit: bool,
}

/// The launch stage's process: its pid, and the read ends of the pipes
/// that carry the command's output.
struct StageProc {
    pid: u32,
    stdout: Option<File>,
    stderr: Option<File>,
}

/// How long the runner waits for a stage it killed for outliving the wall
/// clock during setup.
const SETUP_KILL_WAIT: Duration = Duration::from_secs(2);

/// The wall clock ran out.
struct Late;

/// A launched task.
pub struct Running {
    child: StageProc,
    msgs: Option<UnixStream>,
    msg_buf: Vec<u8>,
    queue: VecDeque<StageMsg>,
    output: Output,
    buf: Vec<u8>,
    started_at: Instant,
    /// The wall-clock limit, which also bounds the sandbox's setup.
    wall: Option<Duration>,
    cgroup: Option<PathBuf>,
    enforcement: Option<Enforcement>,
    timings: Timings,
    pass: Option<UnixStream>,
    /// The task's private tmp on the host (Landlock-only mode).
    host_tmp: PathBuf,
}

type Parts = (StageProc, UnixStream, UnixStream);

/// A launch stage started ahead of its plan: it loads, and enters its
/// namespaces, while the runner is still preparing. Dropped without a plan,
/// it exits quietly and is reaped by [`settle`].
pub struct Stage {
    /// `None` once launched.
    parts: Option<Parts>,
    /// What it entered on start.
    early: EarlyNamespaces,
    /// The task's pids cgroup, being made (root).
    cgroup: Option<std::thread::JoinHandle<Option<PathBuf>>>,
}

impl Stage {
    /// Starts the stage binary, which enters the `early` namespaces at once
    /// (the plan must then run with exactly those).
    ///
    /// # Errors
    /// When the stage cannot be spawned.
    pub fn spawn(stage_exe: &Path, early: EarlyNamespaces) -> Result<Self, NativeError> {
        reap_exited(false);
        Ok(Self {
            parts: Some(spawn_stage(stage_exe, early)?),
            early,
            cgroup: None,
        })
    }

    /// Forks the stage off this process instead of exec'ing a binary: no
    /// exec, no dynamic loading, no C library start-up (its CPU probing
    /// traps to the hypervisor here), about 0.45 ms less per launch. Only
    /// while this process has a single thread and little memory (first
    /// thing in `main`): then a fork copies a few page tables and no lock
    /// can be held by a thread that does not exist in the child. The
    /// child scrubs the runner's environment from its own memory, so
    /// neither the stage nor pid 1 shows it in `/proc/PID/environ`.
    ///
    /// `tmp`: where the task's private tmp on the host will be (its id is
    /// reserved already): if the task is to run without namespaces, the
    /// stage makes it while the runner prepares the plan.
    ///
    /// # Errors
    /// When this process already runs more than one thread (use
    /// [`Stage::spawn`]), or the fork fails.
    pub fn fork(early: EarlyNamespaces, tmp: Option<PathBuf>) -> Result<Self, NativeError> {
        let setup = |what: &str, source: std::io::Error| NativeError::Setup {
            what: what.to_owned(),
            source,
        };
        if threads() != Some(1) {
            return Err(setup(
                "fork the launch stage",
                std::io::Error::other("the runner is multi-threaded already"),
            ));
        }
        reap_exited(false);
        let (ours, theirs, pass_ours, pass_theirs) = channels()?;
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| setup("pipe", e.into()))
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let spread = super::cpu::Spread::here();
        // SAFETY: this process has one thread (checked above), so the child
        // is a complete copy in which no lock is held; it never returns
        // here: `stage::main` ends in exit.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                for (from, to) in [(&out_w, 1), (&err_w, 2)] {
                    // SAFETY: dup2 onto this process's standard descriptors.
                    unsafe { libc::dup2(from.as_raw_fd(), to) };
                }
                // The caller's home, for the base's deny paths the stage
                // looks at before the plan (the environment goes next).
                let home = std::env::var_os("HOME").map(PathBuf::from);
                scrub_environment();
                let (fd, pass) = (theirs.as_raw_fd(), pass_theirs.as_raw_fd());
                // The stage closes every other descriptor (ours included)
                // first, and never returns. A panic (an unwinding build)
                // must not unwind into the runner's frames copied here.
                let _ = std::panic::catch_unwind(move || {
                    super::stage_main(fd, pass, early, tmp.as_deref(), spread, home)
                });
                // SAFETY: _exit ends this child without running anything of the runner's.
                unsafe { libc::_exit(125) }
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                // The stage's work until the plan overlaps with ours only
                // on another CPU; it takes ours back when the plan is in.
                if let Some(s) = spread {
                    s.away(child.as_raw());
                }
                Ok(Self {
                    parts: Some((
                        StageProc {
                            pid: child.as_raw().unsigned_abs(),
                            stdout: Some(File::from(out_r)),
                            stderr: Some(File::from(err_r)),
                        },
                        ours,
                        pass_ours,
                    )),
                    early,
                    cgroup: None,
                })
            }
            Err(e) => Err(setup("fork the launch stage", e.into())),
        }
    }

    /// The namespaces it entered on start.
    pub fn early(&self) -> EarlyNamespaces {
        self.early
    }

    /// As root, makes the pids cgroup of the task about to get `task_id` on
    /// a thread of its own (a cgroupfs mkdir and the sweep of stale ones:
    /// ~0.15 ms), while the runner reads the profile; `launch` sets its
    /// limit, or removes it if the profile sets none. Call after the fork.
    pub fn prepare_cgroup(&mut self, task_id: &str) {
        if !nix::unistd::getuid().is_root() || self.cgroup.is_some() {
            return;
        }
        let id = task_id.to_owned();
        self.cgroup = std::thread::Builder::new()
            .name("cgroup".into())
            .stack_size(64 * 1024)
            .spawn(move || make_cgroup(&id))
            .ok();
    }

    /// Sends the plan: the task starts.
    ///
    /// # Errors
    /// When the plan cannot be sent.
    pub fn launch(
        mut self,
        mut plan: NativePlan,
        stdout: Sink,
        stderr: Sink,
        task_id: &str,
    ) -> Result<Running, NativeError> {
        let (mut child, ours, pass) = self.parts.take().ok_or_else(|| NativeError::Plan {
            message: "the stage was already launched".into(),
        })?;
        let started_at = Instant::now();
        let mut cgroup = None;
        let made = self
            .cgroup
            .take()
            .and_then(|t| t.join().ok().flatten())
            .filter(|d| {
                // Made for the reserved id; an approved task has its own.
                let ours = d
                    .file_name()
                    .is_some_and(|n| *n == *format!("taskbox-{task_id}"));
                if !ours {
                    let _ = std::fs::remove_dir(d);
                }
                ours
            });
        if let Some(max) = plan.spec.limits.processes
            && nix::unistd::getuid().is_root()
        {
            cgroup = match made {
                Some(dir) => limit_cgroup(dir, max),
                None => pids_cgroup(task_id, max),
            };
            plan.cgroup.clone_from(&cgroup);
            plan.processes = if cgroup.is_some() {
                "cgroup".into()
            } else {
                "none".into()
            };
        } else if let Some(dir) = made {
            // No process limit in this profile: no cgroup.
            let _ = std::fs::remove_dir(dir);
        }
        let output = Output {
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            to_stdout: stdout,
            to_stderr: stderr,
            cap: plan.spec.limits.output,
            total: 0,
            hit: false,
        };
        let mut running = Running {
            child,
            msgs: None,
            msg_buf: Vec::new(),
            queue: VecDeque::new(),
            output,
            // Made once the plan is out: zeroing 64 KiB (sixteen fresh
            // pages) took 0.05 ms on the way to it.
            buf: Vec::new(),
            started_at,
            wall: plan.spec.limits.wall_ms.map(Duration::from_millis),
            cgroup,
            enforcement: None,
            timings: Timings::default(),
            pass: Some(pass),
            host_tmp: plan.host_tmp.clone(),
        };
        let body = serde_json::to_vec(&plan).map_err(|e| NativeError::Plan {
            message: e.to_string(),
        })?;
        let len = u32::try_from(body.len()).map_err(|_| NativeError::Plan {
            message: "plan too large".into(),
        })?;
        let mut framed = Vec::with_capacity(4 + body.len());
        framed.extend_from_slice(&len.to_le_bytes());
        framed.extend_from_slice(&body);
        (&ours)
            .write_all(&framed)
            .map_err(|source| NativeError::Setup {
                what: "send plan".into(),
                source,
            })?;
        running.msgs = Some(ours);
        running.buf = vec![0u8; 64 * 1024];
        running.timings.spawned_us = micros(started_at);
        Ok(running)
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Some(dir) = self.cgroup.take().and_then(|t| t.join().ok().flatten()) {
            let _ = std::fs::remove_dir(dir);
        }
        // Not launched: our socket end closes with us, the stage reads EOF
        // and exits; reap it later, off this path.
        if let Some((child, ours, _pass)) = self.parts.take() {
            drop(ours);
            EXITING
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((child.pid as libc::pid_t, None));
        }
    }
}

/// The stage's two channels, both ends each (close-on-exec): plan and
/// messages, then descriptors back (the proxy listener). Ours come first.
fn channels() -> Result<(UnixStream, UnixStream, UnixStream, UnixStream), NativeError> {
    let pair = || {
        UnixStream::pair().map_err(|source| NativeError::Setup {
            what: "socketpair".into(),
            source,
        })
    };
    let (ours, theirs) = pair()?;
    let (pass_ours, pass_theirs) = pair()?;
    Ok((ours, theirs, pass_ours, pass_theirs))
}

fn spawn_stage(stage_exe: &Path, early: EarlyNamespaces) -> Result<Parts, NativeError> {
    let (ours, theirs, pass_ours, pass_theirs) = channels()?;
    let mut cmd = Command::new(stage_exe);
    if stage_exe.file_name() != Some(std::ffi::OsStr::new(super::STAGE)) {
        cmd.arg(super::SELF_STAGE_ARG);
    }
    cmd.arg(theirs.as_raw_fd().to_string())
        .arg(pass_theirs.as_raw_fd().to_string())
        .arg(early.arg())
        .env_clear()
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = {
        let _guard = SPAWN_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set_cloexec(&theirs, false)?;
        set_cloexec(&pass_theirs, false)?;
        let r = cmd.spawn();
        set_cloexec(&theirs, true)?;
        set_cloexec(&pass_theirs, true)?;
        r.map_err(|source| NativeError::Spawn {
            exe: stage_exe.to_path_buf(),
            source,
        })?
    };
    let mut child = child;
    let stage = StageProc {
        pid: child.id(),
        stdout: child
            .stdout
            .take()
            .map(|o| File::from(std::os::fd::OwnedFd::from(o))),
        stderr: child
            .stderr
            .take()
            .map(|e| File::from(std::os::fd::OwnedFd::from(e))),
    };
    Ok((stage, ours, pass_ours))
}

/// This process's thread count (`/proc/self/task` has one entry per thread).
fn threads() -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    // procfs gives the directory 2 + threads links.
    Some(
        std::fs::metadata("/proc/self/task")
            .ok()?
            .nlink()
            .saturating_sub(2),
    )
}

/// Overwrites the environment strings in this process's memory, which
/// `/proc/PID/environ` shows, with zeros (a forked stage has the runner's).
fn scrub_environment() {
    unsafe extern "C" {
        static mut environ: *mut *mut libc::c_char;
    }
    // SAFETY: single-threaded child; `environ` is the C library's
    // NULL-terminated array of NUL-terminated strings, each overwritten
    // within its own length. Nothing reads the environment afterwards.
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            let len = libc::strlen(*p);
            std::ptr::write_bytes(*p, 0, len);
            p = p.add(1);
        }
    }
}

fn set_cloexec(s: &UnixStream, on: bool) -> Result<(), NativeError> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(s, FcntlArg::F_SETFD(flags))
        .map(|_| ())
        .map_err(|e| NativeError::Setup {
            what: "fcntl".into(),
            source: e.into(),
        })
}

/// Root ignores RLIMIT_NPROC; a pids cgroup bounds the task instead. The
/// runner makes it and sets its limit; the stage moves itself in (see
/// `stage::join_cgroup`): moving another process costs an RCU grace period
/// (5-13 ms measured here), a single-threaded process moving itself does not.
fn pids_cgroup(task_id: &str, max: u64) -> Option<PathBuf> {
    limit_cgroup(make_cgroup(task_id)?, max)
}

/// Makes the task's cgroup in the first hierarchy that has the pids
/// controller (sweeping stale ones first); `None` if none is writable.
fn make_cgroup(task_id: &str) -> Option<PathBuf> {
    let bases = [
        Path::new("/sys/fs/cgroup/pids"),
        Path::new("/sys/fs/cgroup"),
    ];
    for base in bases {
        remove_stale_cgroups(base);
        if !base.join("cgroup.procs").exists() {
            continue;
        }
        let dir = base.join(format!("taskbox-{task_id}"));
        if std::fs::create_dir(&dir).is_ok() {
            if dir.join("pids.max").exists() {
                return Some(dir);
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
    None
}

/// Sets the cgroup's process limit; removes it if that fails.
fn limit_cgroup(dir: PathBuf, max: u64) -> Option<PathBuf> {
    if std::fs::write(dir.join("pids.max"), max.to_string()).is_ok() {
        return Some(dir);
    }
    let _ = std::fs::remove_dir(&dir);
    None
}

/// A runner killed mid-task leaves its (by then empty) cgroup behind;
/// remove those older than ten seconds. rmdir refuses a cgroup that still
/// has tasks, and the age check spares one another runner is just setting
/// up (created, its stage not moved in yet: microseconds).
fn remove_stale_cgroups(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let stale = e.file_name().to_string_lossy().starts_with("taskbox-")
            && e.metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 10);
        if stale {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

impl Output {
    /// Passes `buf` on to the caller, up to the cap; past it, asks the stage
    /// to stop the whole task (SIGALRM).
    fn deliver(&mut self, err: bool, buf: &[u8], stage: u32) {
        let n = buf.len() as u64;
        let before = self.total;
        self.total = self.total.saturating_add(n);
        let allowed = self.cap.map_or(n, |c| c.saturating_sub(before).min(n)) as usize;
        if allowed > 0 {
            let to = if err {
                &mut self.to_stderr
            } else {
                &mut self.to_stdout
            };
            let _ = to.write_all(&buf[..allowed]);
            let _ = to.flush();
        }
        if allowed < buf.len() && !self.hit {
            self.hit = true;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(stage as i32),
                nix::sys::signal::Signal::SIGALRM,
            );
        }
    }
}

impl Running {
    /// pid of the launch stage.
    pub fn stage_pid(&self) -> u32 {
        self.child.pid
    }

    /// The proxy listener the stage opened in the task's network namespace
    /// (network mode proxy); call after [`Running::started`].
    ///
    /// # Errors
    /// When the stage sent no listener.
    pub fn take_listener(&mut self) -> Result<std::net::TcpListener, NativeError> {
        use std::os::fd::{AsRawFd as _, FromRawFd as _};
        let err = |m: &str| NativeError::Setup {
            what: "receive the proxy listener".into(),
            source: std::io::Error::other(m.to_owned()),
        };
        let pass = self.pass.take().ok_or_else(|| err("already taken"))?;
        pass.set_nonblocking(true)
            .map_err(|source| NativeError::Setup {
                what: "receive the proxy listener".into(),
                source,
            })?;
        let mut byte = [0u8; 1];
        let mut iov = [std::io::IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = nix::sys::socket::recvmsg::<()>(
            pass.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| err(&e.to_string()))?;
        for c in msg.cmsgs().map_err(|e| err(&e.to_string()))? {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c
                && let Some(fd) = fds.first()
            {
                // SAFETY: the kernel just installed this descriptor for us; we own it.
                return Ok(unsafe { std::net::TcpListener::from_raw_fd(*fd) });
            }
        }
        Err(err("no descriptor in the message"))
    }

    /// Moves whatever is ready: output to the sinks, stage messages to the
    /// queue. Blocks until something is ready, every stream is closed or
    /// `timeout` passed.
    fn poll_once(&mut self, timeout: nix::poll::PollTimeout) {
        use nix::poll::{PollFd, PollFlags, poll};
        let stage = self.child.pid;
        let (ready_out, ready_err, ready_msg) = {
            let mut fds = Vec::with_capacity(3);
            let mut which = Vec::with_capacity(3);
            if let Some(o) = &self.output.stdout {
                fds.push(PollFd::new(o.as_fd(), PollFlags::POLLIN));
                which.push(0);
            }
            if let Some(e) = &self.output.stderr {
                fds.push(PollFd::new(e.as_fd(), PollFlags::POLLIN));
                which.push(1);
            }
            if let Some(m) = &self.msgs {
                fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
                which.push(2);
            }
            if fds.is_empty() {
                return;
            }
            match poll(&mut fds, timeout) {
                Ok(0) => return,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => return, // the caller polls again
                Err(_) => {
                    // Cannot wait on them (ENOMEM): give up on every stream
                    // rather than spin; the stage is then waited for.
                    self.output.stdout = None;
                    self.output.stderr = None;
                    self.msgs = None;
                    return;
                }
            }
            let mut ready = [false; 3];
            for (fd, w) in fds.iter().zip(which) {
                ready[w] = fd.revents().is_some_and(|r| !r.is_empty());
            }
            (ready[0], ready[1], ready[2])
        };
        if ready_out {
            match self.output.stdout.as_mut().map(|o| o.read(&mut self.buf)) {
                Some(Ok(n)) if n > 0 => self.output.deliver(false, &self.buf[..n], stage),
                _ => self.output.stdout = None,
            }
        }
        if ready_err {
            match self.output.stderr.as_mut().map(|e| e.read(&mut self.buf)) {
                Some(Ok(n)) if n > 0 => self.output.deliver(true, &self.buf[..n], stage),
                _ => self.output.stderr = None,
            }
        }
        if ready_msg {
            match self.msgs.as_mut().map(|m| m.read(&mut self.buf)) {
                Some(Ok(n)) if n > 0 => {
                    self.msg_buf.extend_from_slice(&self.buf[..n]);
                    while let Some(i) = self.msg_buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = self.msg_buf.drain(..=i).collect();
                        if let Ok(m) = serde_json::from_slice::<StageMsg>(&line) {
                            self.queue.push_back(m);
                        }
                    }
                }
                _ => self.msgs = None,
            }
        }
    }

    /// The stage's next message, passing output on meanwhile; `None` once the
    /// stage closed its channel.
    fn next_msg(&mut self) -> Option<StageMsg> {
        self.next_msg_by(None).unwrap_or(None)
    }

    /// [`Self::next_msg`], or `Err(Late)` once `deadline` passed without one.
    fn next_msg_by(&mut self, deadline: Option<Instant>) -> Result<Option<StageMsg>, Late> {
        use nix::poll::PollTimeout;
        loop {
            if let Some(m) = self.queue.pop_front() {
                return Ok(Some(m));
            }
            if self.msgs.is_none() {
                return Ok(None);
            }
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Late);
                    }
                    // Rounded up: a poll that wakes a little early polls again.
                    let ms = left.as_micros().div_ceil(1000);
                    PollTimeout::try_from(ms.min(i32::MAX as u128) as i32)
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            self.poll_once(timeout);
        }
    }

    /// Passes output on until the command's streams are closed.
    fn drain_output(&mut self) {
        self.msgs = None;
        while self.output.stdout.is_some() || self.output.stderr.is_some() {
            self.poll_once(nix::poll::PollTimeout::NONE);
        }
    }

    /// Waits until the sandbox is in force and the command is being exec'd.
    /// The wall clock bounds this too: a setup that outlives it (a granted
    /// filesystem that hangs, say) is killed, and the task ends with 124
    /// without its command having run.
    ///
    /// # Errors
    /// The stage's own report of why it refused or failed; 124 when the
    /// setup outlived the wall clock.
    pub fn started(&mut self) -> Result<Enforcement, NativeError> {
        let deadline = self.wall.map(|w| self.started_at + w);
        let Ok(msg) = self.next_msg_by(deadline) else {
            return Err(self.kill_setup());
        };
        match msg {
            Some(StageMsg::Started {
                enforcement,
                phases,
            }) => {
                self.timings.started_us = micros(self.started_at);
                self.timings.stage = phases;
                self.enforcement = Some(enforcement.clone());
                Ok(enforcement)
            }
            Some(StageMsg::Failed { code, message }) => {
                let _ = self.finish_wait();
                Err(NativeError::Stage { code, message })
            }
            Some(StageMsg::Exited { .. } | StageMsg::Done { .. } | StageMsg::LeaseEnded { .. })
            | None => {
                let status = self.finish_wait().map(|(s, _)| s).unwrap_or(-1);
                Err(NativeError::Stage {
                    code: 125,
                    message: format!(
                        "the launch stage ended before the command started (wait status {status})"
                    ),
                })
            }
        }
    }

    /// Kills a stage whose setup outlived the wall clock. It may be blocked
    /// in the kernel, past handling any signal of its own, so SIGKILL: its
    /// pid 1 (namespace mode) or its command (Landlock-only mode) die with
    /// it (`PR_SET_PDEATHSIG`). Waits a bounded time for it: a process
    /// stuck in an unkillable wait is left behind, and the error says so.
    fn kill_setup(&mut self) -> NativeError {
        let pid = self.child.pid as libc::pid_t;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.output.stdout = None;
        self.output.stderr = None;
        self.msgs = None;
        let wall = self.wall.map_or_else(String::new, |w| {
            format!(" of {}", humantime::format_duration(w))
        });
        let mut reaped = false;
        let give_up = Instant::now() + SETUP_KILL_WAIT;
        while Instant::now() < give_up {
            let mut status = 0;
            // SAFETY: wait4 writes into `status`, a live local.
            let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, std::ptr::null_mut()) };
            if rc == pid || rc < 0 {
                reaped = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = std::fs::remove_dir(cg);
        }
        let _ = std::fs::remove_dir_all(&self.host_tmp);
        let left = if reaped {
            String::new()
        } else {
            format!(
                " The stage (pid {pid}) did not die within {}: it is blocked in the kernel and was left behind.",
                humantime::format_duration(SETUP_KILL_WAIT)
            )
        };
        NativeError::Stage {
            code: 124,
            message: format!(
                "the sandbox was not set up within the wall-clock limit{wall}, so the command never started and the launch stage was killed.{left} Hint: a filesystem the profile grants may be hanging (a dead network mount?), or raise limits.wall"
            ),
        }
    }

    fn finish_wait(&mut self) -> Result<(i32, libc::rusage), NativeError> {
        self.drain_output();
        let pid = self.child.pid as libc::pid_t;
        let mut status = 0;
        // SAFETY: rusage is plain old data; zeroed is valid.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: wait4 writes into `status` and `usage`, both live locals.
            let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            if rc == pid {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(NativeError::Setup {
                    what: "wait for the stage".into(),
                    source: err,
                });
            }
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = std::fs::remove_dir(cg);
        }
        Ok((status, usage))
    }

    /// Waits for the task to end and collects its outcome.
    ///
    /// # Errors
    /// When the stage cannot be waited for, or it failed after starting.
    pub fn wait(mut self) -> Result<Outcome, NativeError> {
        let enforcement = match self.enforcement.take() {
            Some(e) => e,
            None => self.started()?,
        };
        let mut exit = None;
        let mut limit = None;
        let mut done = None;
        let mut leases_ended = Vec::new();
        while let Some(m) = self.next_msg() {
            match m {
                StageMsg::LeaseEnded { name } => leases_ended.push(name),
                StageMsg::Exited { exit: e, limit: l } => {
                    exit = Some(e);
                    limit = l;
                }
                StageMsg::Done {
                    usage,
                    cgroup_removed,
                } => {
                    if cgroup_removed {
                        self.cgroup = None;
                    }
                    done = Some(usage);
                    break;
                }
                StageMsg::Failed { code, message } => {
                    return Err(NativeError::Stage { code, message });
                }
                StageMsg::Started { .. } => {}
            }
        }
        // Once the stage says no process of the task is left, its own exit
        // (namespace teardown, ~1-2 ms) and the removal of its pids cgroup
        // are off the critical path: see `settle`.
        let (status, usage) = match done {
            Some(u) => {
                self.drain_output();
                EXITING
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((self.child.pid as libc::pid_t, self.cgroup.take()));
                (0, u)
            }
            None => {
                let (status, ru) = self.finish_wait()?;
                // The stage removes the task's host tmp after its report;
                // without one it is gone, and so is every process of the task.
                let _ = std::fs::remove_dir_all(&self.host_tmp);
                let us = |t: libc::timeval| {
                    (t.tv_sec as u64)
                        .saturating_mul(1_000_000)
                        .saturating_add(t.tv_usec as u64)
                };
                let usage = Usage {
                    user_us: us(ru.ru_utime),
                    sys_us: us(ru.ru_stime),
                    max_rss_kib: ru.ru_maxrss as u64,
                    output_bytes: 0,
                };
                (status, usage)
            }
        };
        self.timings.exited_us = micros(self.started_at);
        let duration_ms = u64::try_from(self.started_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        let exit = exit.unwrap_or(if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(libc::WEXITSTATUS(status))
        });
        if self.output.hit {
            limit = Some(LimitHit::Output);
        }
        Ok(Outcome {
            exit,
            limit_hit: limit,
            enforcement,
            duration_ms,
            usage: Usage {
                output_bytes: self.output.total,
                ..usage
            },
            timings: std::mem::take(&mut self.timings),
            leases_ended,
        })
    }

    /// Stops the task now: the stage kills its whole process tree on SIGALRM
    /// (a SIGKILL to the stage would orphan the tree in Landlock-only mode).
    pub fn kill(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGALRM);
    }
}
