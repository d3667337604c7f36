//! Launch benchmark: `taskbox run -p explore -- /bin/true` against a bare
//! spawn of `/bin/true` measured in the same run (interleaved: one launch
//! of each case per round), as ratios and added milliseconds (median, p10
//! and p99), plus the runner's peak RSS, the overlay snapshot, and first
//! how long a forked child waits for a CPU (why the stage is moved).
//!
//! `cargo bench --bench launch` (release build). `TASKBOX_BENCH_N` sets the
//! number of rounds (default 300).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark driver")]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Stats {
    median: Duration,
    p99: Duration,
    /// The 10th percentile: on a shared VM, the figure least moved by neighbours.
    p10: Duration,
    min: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        median: at(0.5),
        p99: at(0.99),
        p10: at(0.1),
        min: v[0],
    }
}

/// A named launch: how to build its command.
type Case<'a> = (&'a str, Box<dyn Fn() -> Command + 'a>);

/// One launch of each case per round, `n` rounds (after a tenth as
/// warm-up): on a shared VM whose speed drifts within minutes, every case
/// then sees the same drift, so their differences hold even when the
/// absolute figures move. The order is shuffled each round (fixed seed):
/// a launch right after a namespaced one competes with that one's
/// teardown, and in a fixed order the same case would always pay for it.
fn interleaved(n: usize, cases: &[Case<'_>]) -> Vec<Stats> {
    let mut v: Vec<Vec<Duration>> = cases.iter().map(|_| Vec::with_capacity(n)).collect();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut order: Vec<usize> = (0..cases.len()).collect();
    for round in 0..n + n / 10 {
        rng.shuffle(&mut order);
        for &i in &order {
            let make = &cases[i].1;
            let c = make();
            let t = Instant::now();
            run_ok(c);
            if round >= n / 10 {
                v[i].push(t.elapsed());
            }
        }
    }
    v.into_iter().map(stats).collect()
}

/// The `--json` summary: the last non-empty line of a run's stdout.
fn last_json(stdout: &[u8]) -> serde_json::Value {
    serde_json::from_slice(
        stdout
            .rsplit(|b| *b == b'\n')
            .find(|l| !l.is_empty())
            .unwrap_or_default(),
    )
    .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report(name: &str, s: &Stats, bare: &Stats) {
    println!(
        "{name:<34} median {:>7.3} ms  p10 {:>7.3} ms  p99 {:>7.3} ms  min {:>7.3} ms  | x{:>5.2} bare, +{:>6.3} ms median, +{:>6.3} ms p10, +{:>6.3} ms p99",
        ms(s.median),
        ms(s.p10),
        ms(s.p99),
        ms(s.min),
        s.median.as_secs_f64() / bare.median.as_secs_f64(),
        ms(s.median) - ms(bare.median),
        ms(s.p10) - ms(bare.p10),
        ms(s.p99) - ms(bare.p99),
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn run_ok(mut c: Command) {
    let out = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "launch failed: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes.
fn mono_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// Why the runner moves its stage to another CPU (runner/sandbox/native/
/// cpu.rs): how long a forked child waits to run while its parent keeps
/// computing for 1 ms, left where the kernel put it and moved off the
/// parent's CPU at once. Run first, while this process has one thread.
fn fork_wait(n: usize) {
    use std::sync::atomic::{AtomicU64, Ordering};
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut all: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: the size passed is the set's own.
    unsafe { libc::sched_getaffinity(0, size, &mut all) };
    // SAFETY: reads the set only.
    if unsafe { libc::CPU_COUNT(&all) } < 2 {
        println!("fork-wait: SKIP, this process has one CPU, there is nowhere to move a child");
        return;
    }
    // SAFETY: a fresh shared anonymous page, used only as one AtomicU64.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    // SAFETY: the page is mapped, aligned and shared with the children.
    let stamp = unsafe { &*page.cast::<AtomicU64>() };
    for moved in [false, true] {
        let mut waits = Vec::with_capacity(n);
        for _ in 0..n {
            stamp.store(0, Ordering::SeqCst);
            let t0 = mono_ns();
            // SAFETY: one thread here; the child only stores and exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                stamp.store(mono_ns(), Ordering::SeqCst);
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(0) };
            }
            if moved {
                let mut others = all;
                // SAFETY: sched_getcpu has no arguments; CPU_CLR stays in the set.
                unsafe {
                    if let Ok(me) = usize::try_from(libc::sched_getcpu()) {
                        libc::CPU_CLR(me, &mut others);
                    }
                    libc::sched_setaffinity(pid, size, &others);
                }
            }
            while mono_ns() < t0 + 1_000_000 {
                std::hint::spin_loop();
            }
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            waits.push(Duration::from_nanos(
                stamp.load(Ordering::SeqCst).saturating_sub(t0),
            ));
            std::thread::sleep(Duration::from_millis(1));
        }
        let s = stats(waits);
        println!(
            "fork-wait: child's first run after the fork, parent computing 1 ms, {}: median {:.3} ms, p10 {:.3} ms",
            if moved {
                "child moved to another CPU"
            } else {
                "child left where the kernel put it"
            },
            ms(s.median),
            ms(s.p10)
        );
    }
    // SAFETY: unmaps the page mapped above; no child uses it any more.
    unsafe { libc::munmap(page, 4096) };
}

fn main() {
    let n: usize = std::env::var("TASKBOX_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    fork_wait(200);
    let bin = Path::new(env!("CARGO_BIN_EXE_taskbox"));
    let dir = tempfile::Builder::new()
        .prefix("taskbox-bench")
        .tempdir_in("/var/tmp")
        .unwrap();
    // Searchable by all: as root the stage reaches the state dir from inside
    // its user namespace, where a 0700 directory of uid 65534 is closed to it.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ws = dir.path().join("ws");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&ws).unwrap();
    let tb = |extra_env: &[(&str, &str)]| {
        let mut c = Command::new(bin);
        // Without namespaces there is no overlay: that case runs `readonly`.
        let no_ns = extra_env.iter().any(|(k, _)| *k == "TASKBOX_NO_USERNS");
        c.args([
            "run",
            "-p",
            if no_ns { "readonly" } else { "explore" },
            "--",
            "/bin/true",
        ])
        .current_dir(&ws)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path())
        .env("TASKBOX_STATE_DIR", &state);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c
    };

    println!(
        "taskbox launch benchmark: {n} rounds, each case once per round, in an order shuffled each round (interleaved)"
    );
    // Most users are not root: the same launches as an ordinary uid (no
    // pids cgroup: RLIMIT_NPROC applies to non-root users). Not 65534 by
    // default: that is the kernel's overflow uid, which a user namespace
    // shows as the owner of every file whose owner it does not map, so
    // for that one user the stage cannot tell root's `/etc/shadow` from a
    // file of its own and masks the `/etc` deny paths that file
    // permissions already close (about 0.18 ms). `TASKBOX_BENCH_UID`
    // picks another.
    let uid: u32 = std::env::var("TASKBOX_BENCH_UID")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let ustate = dir.path().join(format!("state-{uid}"));
    let root = nix_is_root();
    if root {
        for p in [dir.path().to_path_buf(), ws.clone(), ustate.clone()] {
            std::fs::create_dir_all(&p).unwrap();
            std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
        }
    }
    let user = |extra: &[(&str, &str)]| {
        let mut c = tb(extra);
        c.env("TASKBOX_STATE_DIR", &ustate);
        std::os::unix::process::CommandExt::uid(&mut c, uid);
        std::os::unix::process::CommandExt::gid(&mut c, uid);
        c
    };
    let same_as_user = format!("  same, as uid {uid}");
    let ll_user = format!("  Landlock+seccomp only, uid {uid}");
    let no_ns = [("TASKBOX_NO_USERNS", "1")];
    let mut cases: Vec<Case<'_>> = vec![
        (
            "bare spawn /bin/true",
            Box::new(|| Command::new("/bin/true")),
        ),
        ("taskbox run -p explore (ns+ll+sc)", Box::new(|| tb(&[]))),
        (
            "taskbox run -p readonly, LL+sc only",
            Box::new(|| tb(&no_ns)),
        ),
    ];
    if root {
        cases.push((&same_as_user, Box::new(|| user(&[]))));
        cases.push((&ll_user, Box::new(|| user(&no_ns))));
    }
    // The exec floor of the runner binary: it starts and exits at once.
    cases.push((
        "taskbox --version (exec floor)",
        Box::new(|| {
            let mut c = Command::new(bin);
            c.arg("--version");
            c
        }),
    ));
    if Path::new("/usr/bin/bwrap").exists() {
        cases.push((
            "bwrap --unshare-all (comparable)",
            Box::new(|| {
                let mut c = Command::new("/usr/bin/bwrap");
                c.args([
                    "--unshare-all",
                    "--die-with-parent",
                    "--ro-bind",
                    "/usr",
                    "/usr",
                    "--symlink",
                    "usr/bin",
                    "/bin",
                ])
                .args([
                    "--symlink",
                    "usr/lib",
                    "/lib",
                    "--symlink",
                    "usr/lib64",
                    "/lib64",
                    "--proc",
                    "/proc",
                    "--dev",
                    "/dev",
                ])
                .args(["--tmpfs", "/tmp", "--bind"])
                .arg(&ws)
                .arg(&ws)
                .args(["--", "/bin/true"]);
                c
            }),
        ));
    } else {
        println!("bwrap: not installed, comparison skipped");
    }
    let results = interleaved(n, &cases);
    for ((name, _), s) in cases.iter().zip(&results) {
        report(name, s, &results[0]);
    }

    // The runner's own peak RSS during a run, as it reports it.
    let mut c = Command::new(bin);
    c.args(["run", "--json", "--", "/bin/true"])
        .current_dir(&ws)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path())
        .env("TASKBOX_STATE_DIR", &state);
    let out = c.output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(line.lines().last().unwrap_or("{}")).unwrap_or_default();
    println!(
        "runner peak RSS during a run: {} KiB",
        v["runner_peak_rss_kib"]
    );
    snapshot_bench(bin, dir.path(), n);
}

/// Overlay snapshot on a generated 50,000-file workspace: the snapshot's own
/// cost (the stage's phases around the overlay mount) and the whole launch,
/// each against an empty workspace in the same rounds (neither should grow),
/// `cp -a` of the same tree, and changeset extraction after 10 changed files.
fn snapshot_bench(bin: &Path, base: &Path, n: usize) {
    let big = base.join("big");
    for d in 0..500 {
        let dir = big.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(dir.join(format!("f{f:03}.txt")), format!("file {d} {f}\n")).unwrap();
        }
    }
    let empty = base.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let state = base.join("state-big");
    let tb_in = |ws: &Path, script: &str| {
        let mut c = Command::new(bin);
        c.args(["run", "--json", "--", "/bin/sh", "-c", script])
            .current_dir(ws)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", base)
            .env("TASKBOX_STATE_DIR", &state);
        c
    };
    let tb = |script: &str| tb_in(&big, script);
    // One launch: its wall time and the snapshot's phase (from --json).
    let launch = |ws: &Path| {
        let t = Instant::now();
        let out = tb_in(ws, "true").output().unwrap();
        let wall = t.elapsed();
        assert!(out.status.success(), "{out:?}");
        let v = last_json(&out.stdout);
        let phase = |name: &str| {
            v["outcome"]["timings"]["stage"]
                .as_array()
                .and_then(|a| a.iter().find(|p| p[0] == name))
                .and_then(|p| p[1].as_u64())
        };
        let snap = phase("snapshot")
            .zip(phase("snapshot-start"))
            .map(|(end, start)| Duration::from_micros(end.saturating_sub(start)))
            .expect("the stage reports the snapshot's phases");
        (wall, snap)
    };
    let (mut walls, mut snaps) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let rounds = n / 3;
    for round in 0..rounds + rounds / 10 {
        for (i, ws) in [&empty, &big].into_iter().enumerate() {
            let (w, s) = launch(ws);
            if round >= rounds / 10 {
                walls[i].push(w);
                snaps[i].push(s);
            }
        }
    }
    let [wall_empty, wall_big] = walls.map(stats);
    let [snap_empty, snap_big] = snaps.map(stats);
    println!(
        "snapshot (the overlay's upper/work dirs and mount, stage phases): 50,000-file workspace median {:.3} ms, p99 {:.3} ms; empty workspace median {:.3} ms, same rounds",
        ms(snap_big.median),
        ms(snap_big.p99),
        ms(snap_empty.median)
    );
    println!(
        "whole launch, taskbox run -p explore -- sh -c true: 50,000-file workspace median {:.3} ms, p99 {:.3} ms; empty workspace median {:.3} ms ({:+.3} ms)",
        ms(wall_big.median),
        ms(wall_big.p99),
        ms(wall_empty.median),
        ms(wall_big.median) - ms(wall_empty.median)
    );
    let t = Instant::now();
    run_ok({
        let mut c = Command::new("cp");
        c.arg("-a").arg(&big).arg(base.join("copy"));
        c
    });
    println!("cp -a of the same workspace: {:.1} ms", ms(t.elapsed()));
    let mut reads = Vec::new();
    for _ in 0..20 {
        let out = tb("for i in 0 1 2 3 4 5 6 7 8 9; do echo changed >> d00$i/f000.txt; done")
            .output()
            .unwrap();
        let v = last_json(&out.stdout);
        assert_eq!(
            v["changeset"]["changes"].as_array().map(Vec::len),
            Some(10),
            "{v}"
        );
        reads.push(Duration::from_micros(v["changeset_us"].as_u64().unwrap()));
    }
    let s = stats(reads);
    println!(
        "changeset after 10 changed files (incl. its audit record): median {:.3} ms, p99 {:.3} ms",
        ms(s.median),
        ms(s.p99)
    );
}
