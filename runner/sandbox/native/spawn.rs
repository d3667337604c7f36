//! Runner side of a native launch: start the stage with a plain spawn (no
//! `pre_exec`, so no fork of the multi-threaded runner), hand it the plan,
//! stream its output under the cap, and collect the outcome.

use std::io::{BufRead as _, BufReader, Write};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use super::NativeError;
use super::plan::NativePlan;
use super::stage::StageMsg;
use crate::sandbox::{Enforcement, Exit, LimitHit, Outcome, Timings, Usage};

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Serializes the window in which the stage's socket end is inheritable, so a
/// concurrent spawn elsewhere in the runner never inherits it.
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

/// Where the command's output goes (the caller's terminal, a buffer, ...).
pub type Sink = Box<dyn Write + Send>;

/// A launched task.
pub struct Running {
    child: Child,
    msgs: mpsc::Receiver<StageMsg>,
    pumps: Vec<JoinHandle<()>>,
    output: Arc<AtomicU64>,
    output_hit: Arc<AtomicBool>,
    started_at: Instant,
    cgroup: Option<PathBuf>,
    enforcement: Option<Enforcement>,
    timings: Timings,
    pass: Option<UnixStream>,
}

/// Starts the stage and sends it the plan.
///
/// # Errors
/// When the stage cannot be spawned or the plan cannot be sent.
pub fn launch(
    mut plan: NativePlan,
    stage_exe: &Path,
    stdout: Sink,
    stderr: Sink,
    task_id: &str,
) -> Result<Running, NativeError> {
    let (ours, theirs) = UnixStream::pair().map_err(|source| NativeError::Setup {
        what: "socketpair".into(),
        source,
    })?;
    let (pass_ours, pass_theirs) = UnixStream::pair().map_err(|source| NativeError::Setup {
        what: "socketpair".into(),
        source,
    })?;
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(stage_exe);
    cmd.arg("__exec")
        .arg("--fd")
        .arg(fd.to_string())
        .arg("--pass-fd")
        .arg(pass_theirs.as_raw_fd().to_string())
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
    drop(theirs);
    drop(pass_theirs);
    let started_at = Instant::now();
    let mut running = Running {
        child,
        msgs: mpsc::channel().1,
        pumps: Vec::new(),
        output: Arc::new(AtomicU64::new(0)),
        output_hit: Arc::new(AtomicBool::new(false)),
        started_at,
        cgroup: None,
        enforcement: None,
        timings: Timings::default(),
        pass: Some(pass_ours),
    };
    if let Some(max) = plan.spec.limits.processes
        && nix::unistd::getuid().is_root()
    {
        running.cgroup = pids_cgroup(task_id, running.child.id(), max);
        plan.processes = if running.cgroup.is_some() {
            "cgroup".into()
        } else {
            "none".into()
        };
    }
    let cap = plan.spec.limits.output;
    let stage_pid = running.child.id();
    if let Some(out) = running.child.stdout.take() {
        running.pumps.push(pump(
            out,
            stdout,
            cap,
            &running.output,
            &running.output_hit,
            stage_pid,
        ));
    }
    if let Some(err) = running.child.stderr.take() {
        running.pumps.push(pump(
            err,
            stderr,
            cap,
            &running.output,
            &running.output_hit,
            stage_pid,
        ));
    }
    let body = serde_json::to_vec(&plan).map_err(|e| NativeError::Plan {
        message: e.to_string(),
    })?;
    let mut w = &ours;
    let len = u32::try_from(body.len()).map_err(|_| NativeError::Plan {
        message: "plan too large".into(),
    })?;
    w.write_all(&len.to_le_bytes())
        .and_then(|()| w.write_all(&body))
        .map_err(|source| NativeError::Setup {
            what: "send plan".into(),
            source,
        })?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(ours).lines() {
            let Ok(line) = line else { break };
            if let Ok(m) = serde_json::from_str::<StageMsg>(&line)
                && tx.send(m).is_err()
            {
                break;
            }
        }
    });
    running.msgs = rx;
    running.timings.spawned_us = micros(started_at);
    Ok(running)
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

/// Root ignores RLIMIT_NPROC; a pids cgroup bounds the task instead.
fn pids_cgroup(task_id: &str, pid: u32, max: u64) -> Option<PathBuf> {
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
        if std::fs::create_dir(&dir).is_err() {
            continue;
        }
        let ok = std::fs::write(dir.join("pids.max"), max.to_string()).is_ok()
            && std::fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok();
        if ok {
            return Some(dir);
        }
        let _ = std::fs::remove_dir(&dir);
    }
    None
}

/// A runner killed mid-task leaves its (by then empty) cgroup behind; remove
/// those older than a minute. rmdir refuses a cgroup that still has tasks,
/// and the age check spares one another runner is just setting up.
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
                .is_some_and(|age| age.as_secs() > 60);
        if stale {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

fn pump(
    mut from: impl std::io::Read + Send + 'static,
    mut to: Sink,
    cap: Option<u64>,
    total: &Arc<AtomicU64>,
    hit: &Arc<AtomicBool>,
    stage: u32,
) -> JoinHandle<()> {
    let total = Arc::clone(total);
    let hit = Arc::clone(hit);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let before = total.fetch_add(n as u64, Ordering::Relaxed);
            let allowed = cap.map_or(n as u64, |c| c.saturating_sub(before).min(n as u64)) as usize;
            if allowed > 0 {
                let _ = to.write_all(&buf[..allowed]);
                let _ = to.flush();
            }
            if allowed < n && !hit.swap(true, Ordering::Relaxed) {
                // Past the cap: the stage stops the whole task on SIGALRM.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(stage as i32),
                    nix::sys::signal::Signal::SIGALRM,
                );
            }
        }
    })
}

impl Running {
    /// pid of the launch stage.
    pub fn stage_pid(&self) -> u32 {
        self.child.id()
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

    /// Waits until the sandbox is in force and the command is being exec'd.
    ///
    /// # Errors
    /// The stage's own report of why it refused or failed.
    pub fn started(&mut self) -> Result<Enforcement, NativeError> {
        match self.msgs.recv() {
            Ok(StageMsg::Started {
                enforcement,
                phases,
            }) => {
                self.timings.started_us = micros(self.started_at);
                self.timings.stage = phases;
                self.enforcement = Some(enforcement.clone());
                Ok(enforcement)
            }
            Ok(StageMsg::Failed { code, message }) => {
                let _ = self.finish_wait();
                Err(NativeError::Stage { code, message })
            }
            Ok(StageMsg::Exited { .. } | StageMsg::Done { .. } | StageMsg::LeaseEnded { .. })
            | Err(_) => {
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

    fn finish_wait(&mut self) -> Result<(i32, libc::rusage), NativeError> {
        let pid = self.child.id() as libc::pid_t;
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
        for p in self.pumps.drain(..) {
            let _ = p.join();
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
        while let Ok(m) = self.msgs.recv() {
            match m {
                StageMsg::LeaseEnded { name } => leases_ended.push(name),
                StageMsg::Exited { exit: e, limit: l } => {
                    exit = Some(e);
                    limit = l;
                }
                StageMsg::Done { usage } => {
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
        // (namespace teardown, ~1-2 ms) is off the critical path: reap it in
        // the background. A pids cgroup can only be removed once it is empty,
        // so that case (root) waits.
        let (status, usage) = match done {
            Some(u) if self.cgroup.is_none() => {
                for p in self.pumps.drain(..) {
                    let _ = p.join();
                }
                let pid = self.child.id() as libc::pid_t;
                std::thread::spawn(move || {
                    let mut st = 0;
                    // SAFETY: waitpid writes the status into a live local.
                    unsafe { libc::waitpid(pid, &mut st, 0) };
                });
                (0, u)
            }
            _ => {
                let (status, ru) = self.finish_wait()?;
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
                (status, done.unwrap_or(usage))
            }
        };
        self.timings.exited_us = micros(self.started_at);
        let duration_ms = u64::try_from(self.started_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        let exit = exit.unwrap_or(if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(libc::WEXITSTATUS(status))
        });
        if self.output_hit.load(Ordering::Relaxed) {
            limit = Some(LimitHit::Output);
        }
        Ok(Outcome {
            exit,
            limit_hit: limit,
            enforcement,
            duration_ms,
            usage: Usage {
                output_bytes: self.output.load(Ordering::Relaxed),
                ..usage
            },
            timings: std::mem::take(&mut self.timings),
            leases_ended,
        })
    }

    /// Stops the task now: the stage kills its whole process tree on SIGALRM
    /// (a SIGKILL to the stage would orphan the tree in Landlock-only mode).
    pub fn kill(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGALRM);
    }
}
