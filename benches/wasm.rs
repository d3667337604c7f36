//! WASM backend benchmark, same run: compile time of the example tools;
//! loading a compiled artifact; the warm in-process call (fresh WASI
//! context + store + instantiate + run: wsgrep over three files, and a
//! hello-sized call; pooling and on-demand); and a cold
//! `taskbox run -- wsgrep.wasm` (cache warm) against `taskbox run --
//! /bin/true` and a bare spawn of `/bin/true`.
//!
//! `scripts/build-examples`, then `cargo bench --bench wasm`.
//! `TASKBOX_BENCH_N` sets the warm call count (default 2000).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark driver")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use taskbox::sandbox::wasm::{
    self, Allocation, Call, Captured, Engine, Kind, Preopen, Sockets, Tool,
};

fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tools")
}

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99), at(0.0))
}

fn load(engine: &Engine, wasm: &[u8]) -> (Tool, Duration) {
    let kind = Kind::of(wasm).unwrap();
    let art = engine.compile(wasm, kind).unwrap();
    let digest = hex::encode(Sha256::digest(&art));
    let t = Instant::now();
    let tool = engine.load(&art, &digest, kind).unwrap();
    (tool, t.elapsed())
}

fn warm(name: &str, engine: &Engine, tool: &Tool, args: &[&str], dir: &Path, n: usize) {
    let call = |stdout: &Captured| Call {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: vec![("PATH".into(), "/usr/bin".into())],
        preopens: vec![Preopen {
            host: dir.to_path_buf(),
            guest: ".".into(),
            writable: false,
        }],
        sockets: Some(Sockets::None),
        memory: Some(64 << 20),
        deadline: Some(Duration::from_secs(10)),
        stdio: wasm::Stdio::Captured {
            stdin: Vec::new(),
            stdout: stdout.clone(),
            stderr: Captured::new(4096),
        },
    };
    let mut v = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let out = Captured::new(1 << 16);
        let c = call(&out);
        let t = Instant::now();
        let ended = engine.run(tool, &c).unwrap();
        let took = t.elapsed();
        assert_eq!(ended.code, 0, "{ended:?}");
        if i >= n / 10 {
            v.push(took);
        }
        if i == 0 {
            assert!(!out.take().0.is_empty(), "{name}: no output");
        }
    }
    let (med, p99, min) = stats(v);
    println!("warm call, {name:<34}: median {med:>6.1} µs  p99 {p99:>6.1} µs  min {min:>6.1} µs");
}

fn main() {
    let n: usize = std::env::var("TASKBOX_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let dir = tools_dir();
    let names = ["wsgrep", "wsedit", "wsprobe", "wsfetch"];
    for t in names {
        if !dir.join(format!("{t}.wasm")).is_file() {
            eprintln!("examples/tools/{t}.wasm is missing: run scripts/build-examples first");
            std::process::exit(1);
        }
    }
    println!("taskbox WASM benchmark (wasmtime 48, release), same run");
    let engine = Engine::new(Allocation::OnDemand).unwrap();
    for t in names {
        let wasm = std::fs::read(dir.join(format!("{t}.wasm"))).unwrap();
        let kind = Kind::of(&wasm).unwrap();
        let start = Instant::now();
        let art = engine.compile(&wasm, kind).unwrap();
        println!(
            "compile {t:<8} ({:?}, {} KiB -> {} KiB): {:.1} ms",
            kind,
            wasm.len() / 1024,
            art.len() / 1024,
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    // Not under /tmp: a task's /tmp is its own, and a workspace there is
    // carried into it by extra binds.
    let ws = tempfile::tempdir_in("/var/tmp").unwrap();
    for i in 0..3 {
        std::fs::write(ws.path().join(format!("f{i}.txt")), "hello world\nbye\n").unwrap();
    }
    let wsgrep = std::fs::read(dir.join("wsgrep.wasm")).unwrap();
    let (tool, load_t) = load(&engine, &wsgrep);
    println!(
        "load a compiled artifact (digest check + deserialize + resolve imports): {:.3} ms",
        load_t.as_secs_f64() * 1e3
    );
    let probe = std::fs::read(dir.join("wsprobe.wasm")).unwrap();
    let grep_args = ["wsgrep", "hello", "."];
    let env_args = ["wsprobe", "env", "PATH"];
    warm(
        "on-demand, wsgrep over 3 files",
        &engine,
        &tool,
        &grep_args,
        ws.path(),
        n,
    );
    let (ptool, _) = load(&engine, &probe);
    warm(
        "on-demand, wsprobe env (hello-sized)",
        &engine,
        &ptool,
        &env_args,
        ws.path(),
        n,
    );
    drop((tool, ptool));
    let pooled = Engine::new(Allocation::Pooling).unwrap();
    let (tool, _) = load(&pooled, &wsgrep);
    warm(
        "pooling, wsgrep over 3 files",
        &pooled,
        &tool,
        &grep_args,
        ws.path(),
        n,
    );
    let (ptool, _) = load(&pooled, &probe);
    warm(
        "pooling, wsprobe env (hello-sized)",
        &pooled,
        &ptool,
        &env_args,
        ws.path(),
        n,
    );
    drop((tool, ptool));

    // Cold: whole `taskbox run` processes, the module cache warm. As root
    // each launch also moves the task into a pids cgroup (cgroup v1 here:
    // 5-20 ms per move), so when root the same cases also run as uid 65534.
    let bin = Path::new(env!("CARGO_BIN_EXE_taskbox"));
    let is_root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let users: &[Option<u32>] = if is_root {
        &[None, Some(65534)]
    } else {
        &[None]
    };
    for uid in users {
        let base = tempfile::tempdir_in("/var/tmp").unwrap();
        let (cws, state, home) = (
            base.path().join("ws"),
            base.path().join("state"),
            base.path().join("home"),
        );
        for d in [&cws, &state, &home] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(cws.join("a.txt"), "hello\n").unwrap();
        std::fs::copy(dir.join("wsgrep.wasm"), cws.join("wsgrep.wasm")).unwrap();
        if let Some(u) = uid {
            for p in [
                base.path().to_path_buf(),
                cws.clone(),
                state.clone(),
                home.clone(),
                cws.join("a.txt"),
                cws.join("wsgrep.wasm"),
            ] {
                std::os::unix::fs::chown(&p, Some(*u), Some(*u)).unwrap();
            }
        }
        let tb = |args: &[&str]| {
            let mut c = Command::new(bin);
            c.arg("run")
                .args(args)
                .current_dir(&cws)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("HOME", &home)
                .env("TASKBOX_STATE_DIR", &state)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(u) = uid {
                std::os::unix::process::CommandExt::uid(&mut c, *u);
                std::os::unix::process::CommandExt::gid(&mut c, *u);
            }
            c
        };
        let cold = |mk: &dyn Fn() -> Command| {
            let mut v = Vec::new();
            for i in 0..110 {
                let t = Instant::now();
                let st = mk().status().unwrap();
                if i >= 10 {
                    v.push(t.elapsed());
                }
                assert!(st.success(), "{st}");
            }
            stats(v)
        };
        let who = uid.map_or("as the caller".to_owned(), |u| format!("as uid {u}"));
        let (bare, _, _) = cold(&|| Command::new("/bin/true"));
        let (native, _, _) = cold(&|| tb(&["--", "/bin/true"]));
        let (w, wp, _) = cold(&|| tb(&["--", "wsgrep.wasm", "hello", "a.txt"]));
        println!(
            "cold {who}: bare spawn /bin/true median {:.2} ms; taskbox run -- /bin/true median {:.2} ms",
            bare / 1e3,
            native / 1e3
        );
        println!(
            "cold {who}: taskbox run -- wsgrep.wasm (cache warm) median {:.2} ms  p99 {:.2} ms | x{:.2} taskbox run -- /bin/true, +{:.2} ms",
            w / 1e3,
            wp / 1e3,
            w / native,
            (w - native) / 1e3
        );
    }
}
