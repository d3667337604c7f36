//! Limits contain bombs and overruns; nothing the task started survives it.

use std::time::{Duration, Instant};

use crate::support::{Mode, TestBox, comm_exists, process_alive};

fn tight(t: &TestBox) -> String {
    t.profile(
        "tight",
        &format!("extends = \"{}\"\n[limits]\nwall = \"4s\"\nprocesses = 64\nmemory = \"256MiB\"\noutput = \"1MiB\"\n", t.base()),
    )
}

#[test]
fn wall_clock_overrun_exits_124_and_kills_the_tree() {
    for m in Mode::ALL {
        let t = TestBox::new(m);
        let p = t.profile(
            "wall",
            &format!("extends = \"{}\"\n[limits]\nwall = \"1s\"\n", t.base()),
        );
        let marker = format!("31{}{}", std::process::id(), m as u8);
        let start = Instant::now();
        let r = t.sh(&p, &format!("sleep {marker} & sleep 60"));
        r.code(124);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "took {:?}",
            start.elapsed()
        );
        assert_eq!(r.json()["outcome"]["limit_hit"], "wall", "{r:?}");
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !process_alive(&format!("sleep {marker}")),
            "{m:?}: a child survived the wall-clock kill"
        );
    }
}

#[test]
fn a_double_forked_daemon_does_not_outlive_the_task() {
    for m in Mode::ALL {
        let t = TestBox::new(m);
        let marker = format!("32{}{}", std::process::id(), m as u8);
        let r = t.sh(
            "explore",
            &format!("setsid sh -c 'sleep {marker} &' ; sleep 0.2; echo started"),
        );
        r.code(0);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !process_alive(&format!("sleep {marker}")),
            "{m:?}: the daemon outlived the task"
        );
    }
}

#[test]
fn nothing_of_the_task_is_left_the_moment_taskbox_returns() {
    // A daemon with 300 MiB of touched memory takes milliseconds to die of
    // SIGKILL: a runner that reported the end before every process of the
    // task was reaped would return while it is still there. (Its output
    // goes elsewhere: the runner waits for the task's output to close.)
    for m in Mode::ALL {
        let t = TestBox::new(m);
        let name = format!("tbd{}{}", std::process::id() % 100_000, m as u8);
        let daemon = t.ws.join("daemon.py");
        std::fs::write(
            &daemon,
            format!(
                "import ctypes, os, time\nctypes.CDLL(None).prctl(15, b'{name}')\nb = bytearray(300 << 20)\nopen(os.environ.get('TMPDIR', '/tmp') + '/ready', 'w').close()\ntime.sleep(60)\n"
            ),
        )
        .unwrap();
        t.own(&daemon);
        let p = t.profile(
            "short",
            &format!("extends = \"{}\"\n[limits]\nwall = \"20s\"\n", t.base()),
        );
        let r = t.sh(
            &p,
            "setsid /usr/bin/python3 daemon.py </dev/null >/dev/null 2>&1 & while [ ! -e \"${TMPDIR:-/tmp}/ready\" ]; do sleep 0.01; done; echo started",
        );
        let gone = !comm_exists(&name);
        r.code(0);
        assert!(r.stdout.contains("started"), "{m:?}: {r:?}");
        assert!(
            gone,
            "{m:?}: a process of the task was still there when taskbox returned"
        );
    }
}

#[test]
fn fork_bomb_is_contained() {
    for m in Mode::ALL {
        let t = TestBox::new(m);
        let p = tight(&t);
        let start = Instant::now();
        let r = t.sh(&p, "bomb() { bomb | bomb & }; bomb; sleep 2; echo survived");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{m:?}: took {:?}",
            start.elapsed()
        );
        assert_ne!(r.code, 125, "{r:?}");
        let j = r.json();
        assert!(
            ["rlimit", "cgroup"]
                .contains(&j["outcome"]["enforcement"]["processes"].as_str().unwrap()),
            "{j}"
        );
        // the host can still fork, and nothing of the bomb is left
        assert!(
            std::process::Command::new("/bin/true")
                .status()
                .unwrap()
                .success()
        );
    }
}

#[test]
fn the_process_limit_counts_every_process_of_the_task() {
    // 40 forks against a limit of 16: as root (a pids cgroup the stage
    // joins before the task's first process) and as uid 65534 (RLIMIT_NPROC).
    let code = "import os,time\nok=0\nfor i in range(40):\n  try:\n    if os.fork()==0:\n      time.sleep(1); os._exit(0)\n    ok+=1\n  except OSError: pass\nprint('FORKED', ok)\n";
    for m in Mode::ALL {
        let t = TestBox::new(m);
        let p = t.profile(
            "few",
            &format!("extends = \"{}\"\n[limits]\nprocesses = 16\n", t.base()),
        );
        let r = t.py(&p, code);
        r.code(0);
        let forked: u32 = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("FORKED "))
            .unwrap_or_else(|| panic!("{m:?}: {r:?}"))
            .trim()
            .parse()
            .unwrap();
        assert!(forked < 16, "{m:?}: {forked} forks under a limit of 16");
        let j = r.json();
        let how = j["outcome"]["enforcement"]["processes"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(["rlimit", "cgroup"].contains(&how.as_str()), "{j}");
        // The cgroup counts the task alone; RLIMIT_NPROC counts every
        // process of the uid, so other tests running as uid 65534 may
        // leave this task none.
        if how == "cgroup" {
            assert!(forked > 0, "{m:?}: no fork at all: {r:?}");
        }
        if nix::unistd::getuid().is_root() && !m.unprivileged() {
            assert_eq!(how, "cgroup", "{m:?}: {j}");
        }
    }
}

#[test]
fn memory_bomb_is_contained() {
    for m in Mode::ALL {
        let t = TestBox::new(m);
        let p = tight(&t);
        let r = t.py(&p, "x = bytearray(1 << 30); print('ALLOCATED', len(x))");
        assert_ne!(r.code, 0, "{r:?}");
        assert!(
            !r.stdout.contains("ALLOCATED"),
            "{m:?}: 1 GiB allocated under a 256 MiB limit"
        );
    }
}

#[test]
fn a_memory_bomb_in_the_private_tmp_is_contained() {
    // A tmpfs is RAM no rlimit counts (half the host's by default): the
    // task's own /tmp holds at most its `memory` (256 MiB here).
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        let p = tight(&t);
        let r = t.sh(
            &p,
            "dd if=/dev/zero of=/tmp/fill bs=1M count=384 2>&1; stat -c 'SIZE %s' /tmp/fill",
        );
        assert!(r.stdout.contains("No space left on device"), "{m:?}: {r:?}");
        let size: u64 = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("SIZE "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(u64::MAX);
        assert!(size <= 256 << 20, "{m:?}: {size} bytes in /tmp");
    }
}

#[test]
fn the_tasks_in_memory_trees_share_one_cap() {
    // /tmp, /dev/shm, scratch trees and cache layers are RAM that no
    // rlimit counts: with a tmpfs of its own each, a task could hold its
    // `memory` in every one of them. They are one tmpfs: 96 MiB into each
    // of five under a 256 MiB cap must run out of space.
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        let (a, b, s) = (
            t.home.join("cache-a"),
            t.home.join("cache-b"),
            t.home.join("scratch"),
        );
        for d in [&a, &b, &s] {
            std::fs::create_dir_all(d).unwrap();
            t.own(d);
        }
        let p = t.profile(
            "in-memory",
            &format!(
                "extends = \"{}\"\n[filesystem]\ncache = [\"{{home}}/cache-a\", \"{{home}}/cache-b\"]\nscratch = [\"{{home}}/scratch\"]\n[limits]\nwall = \"10s\"\nmemory = \"256MiB\"\n",
                t.explore()
            ),
        );
        let targets = [
            a.join("fill"),
            b.join("fill"),
            s.join("fill"),
            "/tmp/fill".into(),
            "/dev/shm/fill".into(),
        ];
        let script: String = targets
            .iter()
            .map(|f| format!("dd if=/dev/zero of={} bs=1M count=96 2>&1; ", f.display()))
            .chain(
                targets
                    .iter()
                    .map(|f| format!("stat -c 'SIZE %s' {}; ", f.display())),
            )
            .collect();
        let r = t.sh(&p, &script);
        assert!(r.stdout.contains("No space left on device"), "{m:?}: {r:?}");
        let sizes: Vec<u64> = r
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("SIZE "))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .collect();
        assert_eq!(sizes.len(), targets.len(), "{m:?}: {r:?}");
        let total: u64 = sizes.iter().sum();
        assert!(
            total <= 256 << 20,
            "{m:?}: {total} bytes in the task's memory"
        );
        for d in [&a, &b, &s] {
            assert!(
                !d.join("fill").exists(),
                "{m:?}: the host's {} was written",
                d.display()
            );
        }
    }
}

#[test]
fn output_flood_is_capped_and_stopped() {
    for m in Mode::ALL {
        let t = TestBox::new(m);
        let p = tight(&t);
        let start = Instant::now();
        let r = t.taskbox(&["run", "-p", &p, "--", "/usr/bin/yes", "flood"]);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{m:?}: flood ran {:?}",
            start.elapsed()
        );
        assert!(
            r.stdout.len() <= 1 << 20,
            "{m:?}: {} bytes passed the 1 MiB cap",
            r.stdout.len()
        );
        assert!(
            r.stdout.len() >= 1 << 19,
            "{m:?}: only {} bytes",
            r.stdout.len()
        );
        assert_eq!(r.code, 137, "{:?}", r.stderr);
        assert!(r.stderr.contains("output limit"), "{}", r.stderr);
    }
}

#[test]
fn killing_the_runner_kills_the_task() {
    for m in [Mode::Root, Mode::RootNoNs] {
        let t = TestBox::new(m);
        let marker = format!("33{}{}", std::process::id(), m as u8);
        let mut child = t
            .cmd(&[
                "run",
                "-p",
                &t.explore(),
                "--",
                "/bin/sh",
                "-c",
                &format!("sleep {marker}"),
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            process_alive(&format!("sleep {marker}")),
            "task did not start"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !process_alive(&format!("sleep {marker}")),
            "{m:?}: the task outlived a killed runner"
        );
    }
}

/// The pid of the first process whose command line is exactly `cmdline`.
fn pid_of(cmdline: &str) -> Option<i32> {
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let c = std::fs::read(e.path().join("cmdline")).ok()?;
        (String::from_utf8_lossy(&c).replace('\0', " ").trim_end() == cmdline)
            .then(|| e.file_name().to_str()?.parse().ok())
            .flatten()
    })
}

#[test]
fn killing_the_stage_kills_the_command() {
    // What the runner does to a stage whose setup outlived the wall clock:
    // SIGKILL, which no handler of the stage sees. With namespaces pid 1
    // dies with it and takes the namespace; without, the command must die
    // with it too (PR_SET_PDEATHSIG), not live on orphaned. (What it
    // started would: without a pid namespace only the stage, on SIGALRM,
    // kills a whole tree. The setup the runner kills has started nothing.)
    for m in Mode::ALL {
        let t = TestBox::new(m);
        let marker = format!("34{}{}", std::process::id(), m as u8);
        let sleep = format!("sleep {marker}");
        let mut child = t
            .cmd(&[
                "run",
                "-p",
                &t.explore(),
                "--",
                "/bin/sh",
                "-c",
                &format!("exec {sleep}"),
            ])
            .spawn()
            .unwrap();
        let start = Instant::now();
        let pid = loop {
            if let Some(p) = pid_of(&sleep) {
                break p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{m:?}: the task did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let ppid = |pid: i32| -> i32 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            stat.rsplit_once(')')
                .unwrap()
                .1
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse()
                .unwrap()
        };
        // The stage is the runner's child: up the tree from the command.
        let mut stage = ppid(pid);
        while ppid(stage) != child.id() as i32 {
            stage = ppid(stage);
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(stage),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let start = Instant::now();
        while process_alive(&sleep) && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let survived = process_alive(&sleep);
        let _ = child.kill();
        let _ = child.wait();
        assert!(!survived, "{m:?}: the command outlived its killed stage");
    }
}

#[test]
fn only_granted_environment_reaches_the_task() {
    let t = TestBox::new(Mode::Root);
    let mut c = t.cmd(&["run", "--", "/usr/bin/env"]);
    c.env("LEAKY", "should-not-pass").env("LANG", "C.UTF-8");
    let r = crate::support::run(c);
    r.code(0);
    assert!(
        !r.stdout.contains("LEAKY") && !r.stdout.contains("RUNNER-ENV-SECRET"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("LANG=C.UTF-8"), "{}", r.stdout);
    assert!(r.stdout.contains("TMPDIR="), "{}", r.stdout);
}

#[test]
fn a_root_task_leaves_no_pids_cgroup_behind() {
    if !nix::unistd::getuid().is_root() {
        eprintln!(
            "SKIP a_root_task_leaves_no_pids_cgroup_behind: needs root (the pids cgroup is root's process limit)"
        );
        return;
    }
    for m in [Mode::Root, Mode::RootNoNs] {
        let t = TestBox::new(m);
        let r = t.sh("explore", "true");
        r.code(0);
        let j = r.json();
        if j["outcome"]["enforcement"]["processes"] != "cgroup" {
            eprintln!("SKIP {m:?}: no writable pids cgroup here ({j})");
            continue;
        }
        let task = j["task"].as_str().unwrap().to_owned();
        // Gone once the runner has exited, not left to a later sweep.
        for base in ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"] {
            let dir = std::path::Path::new(base).join(format!("taskbox-{task}"));
            assert!(!dir.exists(), "{m:?}: {} is left behind", dir.display());
        }
        // The cgroup is made while the runner reads the profile: a task
        // refused before launch, and one whose profile sets no process
        // limit, leave none either.
        // (A profile of its own, extending nothing: no `[limits]` at all.)
        let unlimited = t.profile(
            "unlimited",
            "kind = \"explore\"\nbackend = \"native\"\n[workspace]\nmode = \"read-only\"\n\
             [filesystem]\nread = [\"/usr\", \"/bin\", \"/lib\", \"/lib64\", \"/etc\", \"/proc\", \"/dev/null\"]\n\
             [network]\nmode = \"none\"\n[require]\nnamespaces = false\n",
        );
        let runs = [
            t.taskbox(&["run", "--json", "-p", "shared-change", "--", "/bin/true"]),
            t.sh(&unlimited, "true"),
        ];
        for r in &runs {
            let task = r.json()["task"].as_str().unwrap().to_owned();
            for base in ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"] {
                let dir = std::path::Path::new(base).join(format!("taskbox-{task}"));
                assert!(
                    !dir.exists(),
                    "{m:?}: {} is left behind ({r:?})",
                    dir.display()
                );
            }
        }
    }
}

/// Without namespaces the task's tmp is a private directory of the state
/// dir (the stage makes it while the runner prepares, and removes it after
/// its report, so a moment after the runner exits): used, owner-only, and
/// gone afterwards, for a task that ran and for one refused before launch.
#[test]
fn the_host_tmp_of_a_task_without_namespaces_is_private_and_removed() {
    for m in [Mode::RootNoNs, Mode::UserNoNs] {
        let t = TestBox::new(m);
        let r = t.sh(
            "explore",
            "echo scratch > \"$TMPDIR/f\" && stat -c %a \"$TMPDIR\" && echo \"$TMPDIR\"",
        );
        r.code(0);
        let mut lines = r.stdout.lines();
        assert_eq!(lines.next(), Some("700"), "{m:?}: {}", r.stdout);
        let tmp = std::path::PathBuf::from(lines.next().unwrap_or_default());
        let id = r.json()["task"].as_str().unwrap_or_default().to_owned();
        assert_eq!(tmp, t.state.join("tmp").join(&id), "{m:?}: {}", r.stdout);
        let gone = |p: &std::path::Path| {
            let until = Instant::now() + Duration::from_secs(5);
            while p.exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            !p.exists()
        };
        assert!(gone(&tmp), "{m:?}: {} outlived the task", tmp.display());
        // Refused before launch (a pending approval): nothing is left either.
        let r = t.taskbox(&["run", "-p", "shared-change", "--", "/bin/true"]);
        r.code(126);
        let tmp_root = t.state.join("tmp");
        let until = Instant::now() + Duration::from_secs(5);
        let left = || {
            std::fs::read_dir(&tmp_root)
                .map(|d| d.flatten().count())
                .unwrap_or(0)
        };
        while left() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(left(), 0, "{m:?}: a refused task left a host tmp behind");
    }
}

/// The `Cpus_allowed_list` lines a task prints: its command's, a child's
/// and (with a pid namespace) its pid 1's, which narrows for a moment at
/// the start: `sleep` lets it widen first.
fn task_cpus(t: &TestBox, mut c: std::process::Command) -> Vec<String> {
    let script = if t.has_ns() {
        "grep Cpus_allowed_list /proc/self/status; sh -c 'grep Cpus_allowed_list /proc/self/status'; sleep 0.2; grep Cpus_allowed_list /proc/1/status"
    } else {
        "grep Cpus_allowed_list /proc/self/status; sh -c 'grep Cpus_allowed_list /proc/self/status'"
    };
    c.args(["--", "/bin/sh", "-c", script]);
    let r = crate::support::run(c);
    r.code(0);
    let lines: Vec<String> = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|l| l.trim().to_owned())
        .collect();
    assert_eq!(lines.len(), if t.has_ns() { 3 } else { 2 }, "{r:?}");
    lines
}

/// A CPU list as the kernel prints it (`0-3,6`).
fn cpu_list(set: &nix::sched::CpuSet) -> String {
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|c| set.is_set(*c).unwrap_or(false))
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

#[test]
fn every_process_of_the_task_keeps_exactly_the_cpus_of_its_caller() {
    // The launch moves the stage and pid 1 off their creator's CPU for a
    // moment (see runner/sandbox/native/cpu.rs): the command, its children
    // and pid 1 must end with the caller's set, neither narrower (a build
    // on one CPU) nor wider (a `taskset` undone).
    use nix::sched::{CpuSet, sched_getaffinity};
    use nix::unistd::Pid;
    let mine = sched_getaffinity(Pid::from_raw(0)).unwrap();
    let all: Vec<usize> = (0..CpuSet::count())
        .filter(|c| mine.is_set(*c).unwrap_or(false))
        .collect();
    if all.len() < 2 {
        eprintln!(
            "SKIP (in part): this machine gives the test one CPU, so the launch never moves anything; only the set's passing through is checked"
        );
    }
    // A narrower caller: all but the first CPU (one CPU on a 2-CPU machine).
    let mut narrow = CpuSet::new();
    for c in all.iter().skip(usize::from(all.len() > 1)) {
        narrow.set(*c).unwrap();
    }
    for m in Mode::ALL {
        let t = TestBox::new(m);
        let p = t.explore();
        let got = task_cpus(&t, t.cmd(&["run", "-p", &p]));
        for g in &got {
            assert_eq!(*g, cpu_list(&mine), "{m:?}: {got:?}");
        }
        let mut c = t.cmd(&["run", "-p", &p]);
        // SAFETY: sched_setaffinity is async-signal-safe; `narrow` is a
        // copy owned by the closure.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut c, move || {
                nix::sched::sched_setaffinity(Pid::from_raw(0), &narrow)
                    .map_err(std::io::Error::from)
            });
        }
        let got = task_cpus(&t, c);
        for g in &got {
            assert_eq!(*g, cpu_list(&narrow), "{m:?}, a narrower caller: {got:?}");
        }
    }
}

/// A FUSE filesystem whose server never answers: every access below its
/// mount point blocks (killably) until the connection is aborted, as on a
/// dead network mount. Unmounted and aborted on drop.
struct HungMount {
    // Detached first, then the device closed (fields drop in order): that
    // aborts the connection, and anything still blocked on it gets ENOTCONN.
    _mount: Unmount,
    _dev: std::fs::File,
}

impl HungMount {
    /// Mounts one at `dir` (root only), open to every uid (`allow_other`).
    fn new(dir: &std::path::Path) -> Option<Self> {
        use std::os::fd::AsRawFd as _;
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .ok()?;
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            dev.as_raw_fd()
        );
        nix::mount::mount(
            Some("taskbox-it-hung"),
            dir,
            Some("fuse"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .ok()?;
        Some(Self {
            _mount: Unmount(dir.to_path_buf()),
            _dev: dev,
        })
    }
}

#[test]
fn a_setup_that_hangs_is_ended_by_the_wall_clock() {
    // The stage expands deny globs right after the plan, before its own
    // wall clock runs: a glob into a mount that hangs blocks it there, in
    // the kernel, where no signal handler of its own can run. The runner's
    // wall clock must end it with 124 and leave nothing behind.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: mounting a FUSE filesystem that never answers needs root");
        return;
    }
    for m in Mode::ALL {
        let t = TestBox::new(m);
        let hang = t.ws.join("hang");
        std::fs::create_dir(&hang).unwrap();
        let Some(mount) = HungMount::new(&hang) else {
            eprintln!("SKIP: cannot mount a FUSE filesystem here (/dev/fuse, mount)");
            return;
        };
        let p = t.profile(
            "hang",
            &format!(
                "extends = \"{}\"\n[filesystem]\ndeny = [\"{{workspace}}/hang/*\"]\n[limits]\nwall = \"2s\"\n",
                t.base()
            ),
        );
        let marker = format!("ran{}x{}", std::process::id(), m as u8);
        let script = format!("echo {marker}");
        let start = Instant::now();
        let mut child = t
            .cmd(&["run", "-p", &p, "--json", "--", "/bin/sh", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A runner that does not enforce the wall clock during setup hangs
        // with its stage: fail instead of hanging the suite.
        while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = start.elapsed();
        let hung = child.try_wait().unwrap().is_none();
        if hung {
            let _ = child.kill();
        }
        let left = process_alive(&script);
        drop(mount);
        let out = child.wait_with_output().unwrap();
        let r = crate::support::Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(!hung, "{m:?}: taskbox still ran after {took:?}: {r:?}");
        r.code(124);
        assert!(took < Duration::from_secs(10), "{m:?}: took {took:?}");
        assert!(
            took >= Duration::from_secs(2),
            "{m:?}: ended early, {took:?}: {r:?}"
        );
        assert!(
            r.stderr.contains("not set up within the wall-clock limit"),
            "{m:?}: {r:?}"
        );
        assert!(!r.stdout.contains(&marker), "{m:?}: the command ran: {r:?}");
        assert!(!left, "{m:?}: a process of the task outlived taskbox");
    }
}

/// A low `open_files` limit is the command's, not the setup's: without
/// namespaces the stage opens the entries of `/etc` ahead of the plan (the
/// carve around `/etc/shadow` takes a rule, an open, per entry), and the
/// rules' own opens must not fail against that limit, which would leave
/// granted trees out of the ruleset. The task still reads what it is
/// granted, `/etc/shadow` stays denied, and the limit is in force.
#[test]
fn a_low_open_files_limit_leaves_the_landlock_rules_whole() {
    let shadow = std::fs::read_to_string("/etc/shadow").ok();
    for m in Mode::ALL {
        let t = TestBox::new(m);
        let p = t.profile(
            "fewfds",
            &format!("extends = \"{}\"\n[limits]\nopen_files = 16\n", t.base()),
        );
        let r = t.sh(
            &p,
            "head -c 0 /etc/passwd && echo passwd-read; cat /etc/shadow; ulimit -n",
        );
        assert!(r.stdout.contains("passwd-read"), "{m:?}: {r:?}");
        assert!(
            r.stdout.lines().any(|l| l.trim() == "16"),
            "{m:?}: the limit is not in force: {r:?}"
        );
        if let Some(first) = shadow.as_deref().and_then(|s| s.lines().next()) {
            assert!(
                !r.stdout.contains(first),
                "{m:?}: /etc/shadow leaked: {r:?}"
            );
        }
    }
    if shadow.is_none() {
        eprintln!(
            "SKIP part: /etc/shadow is absent or unreadable here; only the grants were checked"
        );
    }
}

/// Free bytes on the filesystem of `p`, read from outside the sandbox.
fn free_bytes(p: &std::path::Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    #[allow(
        clippy::useless_conversion,
        reason = "field types differ between targets"
    )]
    let free = u64::from(s.blocks_available()) * u64::from(s.fragment_size());
    free
}

/// Detaches a mount the test made, even when an assert fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_task_that_fills_the_disk_is_stopped_at_the_floor() {
    // No rlimit bounds what a task writes in total. The state dir (the
    // overlay's upper layer, or the task's tmp without namespaces) is put
    // on a 200 MiB filesystem; the task writes 1 MiB every 10 ms, 180 MiB
    // in all, under a 150 MiB floor: it must be stopped with about 50 MiB
    // written, the filesystem far from full.
    if !nix::unistd::getuid().is_root() {
        eprintln!(
            "SKIP a_task_that_fills_the_disk_is_stopped_at_the_floor: needs root (it mounts a small tmpfs as the state dir)"
        );
        return;
    }
    for m in Mode::ALL {
        let t = TestBox::new(m);
        nix::mount::mount(
            Some("tmpfs"),
            &t.state,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=200m,mode=0755"),
        )
        .unwrap();
        let _unmount = Unmount(t.state.clone());
        t.own(&t.state);
        let p = t.profile(
            "floor",
            &format!(
                "extends = \"{}\"\n[limits]\nwall = \"30s\"\ndisk_free = \"150MiB\"\n",
                t.base()
            ),
        );
        // The workspace's overlay with namespaces, the task's tmp without.
        let dir = if t.has_ns() { "." } else { "$TMPDIR" };
        let r = t.sh(
            &p,
            &format!(
                "for i in $(seq 180); do head -c 1048576 /dev/zero > {dir}/fill$i || exit 3; sleep 0.01; done; echo WROTE-ALL"
            ),
        );
        r.code(137);
        assert!(!r.stdout.contains("WROTE-ALL"), "{m:?}: {r:?}");
        assert_eq!(r.json()["outcome"]["limit_hit"], "disk", "{m:?}: {r:?}");
        assert!(r.stderr.contains("limits.disk_free"), "{m:?}: {r:?}");
        let free = free_bytes(&t.state);
        assert!(
            free > 120 << 20,
            "{m:?}: {} MiB left free: the task was not stopped at the floor",
            free >> 20
        );
        assert!(
            !t.ws.join("fill1").exists(),
            "{m:?}: the real workspace was written"
        );
        if t.has_ns() {
            // Its changes are kept (under the floor now): the next task is
            // refused before it starts, and says why.
            let r = t.sh(&p, "touch ran");
            r.code(126);
            assert!(
                r.stderr.contains("less than limits.disk_free"),
                "{m:?}: {r:?}"
            );
            assert!(!t.ws.join("ran").exists());
            // A task that writes nothing on disk (a read-only workspace,
            // its tmp in memory) has no disk to watch: it runs.
            let ro = t.profile(
                "floor-ro",
                "extends = \"readonly\"\n[limits]\ndisk_free = \"150MiB\"\n",
            );
            t.sh(&ro, "true").code(0);
        }
    }
}
