//! WASM backend benchmark, same run: compile time of the example tools;
//! loading a compiled artifact; the warm in-process call (fresh WASI
//! context + store + instantiate + run, pooling and on-demand); and a cold
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

fn warm(name: &str, engine: &Engine, tool: &Tool, dir: &Path, n: usize) {
    let call = |stdout: &Captured| Call {
        args: vec!["wsgrep".into(), "hello".into(), ".".into()],
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
            assert!(String::from_utf8_lossy(&out.take().0).contains("hello"));
        }
    }
    let (med, p99, min) = stats(v);
    println!(
        "warm call, {name:<10} (WASI ctx + store + instantiate + run wsgrep over 3 files): median {med:>6.1} µs  p99 {p99:>6.1} µs  min {min:>6.1} µs"
    );
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
    let ws = tempfile::tempdir().unwrap();
    for i in 0..3 {
        std::fs::write(ws.path().join(format!("f{i}.txt")), "hello world\nbye\n").unwrap();
    }
    let wsgrep = std::fs::read(dir.join("wsgrep.wasm")).unwrap();
    let (tool, load_t) = load(&engine, &wsgrep);
    println!(
        "load a compiled artifact (digest check + deserialize + resolve imports): {:.3} ms",
        load_t.as_secs_f64() * 1e3
    );
    warm("on-demand", &engine, &tool, ws.path(), n);
    drop(tool);
    let pooled = Engine::new(Allocation::Pooling).unwrap();
    let (tool, _) = load(&pooled, &wsgrep);
    warm("pooling", &pooled, &tool, ws.path(), n);
    drop(tool);

    // Cold: whole `taskbox run` processes, the module cache warm.
    let bin = Path::new(env!("CARGO_BIN_EXE_taskbox"));
    let state = tempfile::tempdir().unwrap();
    let tb = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.arg("run")
            .args(args)
            .current_dir(ws.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", ws.path())
            .env("TASKBOX_STATE_DIR", state.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let tool_path = dir.join("wsgrep.wasm");
    let tool_arg = tool_path.to_str().unwrap();
    let cold = |mut mk: Box<dyn FnMut() -> Command>| {
        let runs = 100;
        let mut v = Vec::new();
        for i in 0..runs + 10 {
            let t = Instant::now();
            let st = mk().status().unwrap();
            if i >= 10 {
                v.push(t.elapsed());
            }
            assert!(st.success() || st.code() == Some(1), "{st}");
        }
        stats(v)
    };
    let (bare, _, _) = cold(Box::new(|| Command::new("/bin/true")));
    let (native, _, _) = cold(Box::new(|| tb(&["--", "/bin/true"])));
    let (w, wp, _) = cold(Box::new(move || tb(&["--", tool_arg, "hello"])));
    println!(
        "cold, bare spawn /bin/true:                  median {:>6.2} ms",
        bare / 1e3
    );
    println!(
        "cold, taskbox run -- /bin/true:              median {:>6.2} ms",
        native / 1e3
    );
    println!(
        "cold, taskbox run -- wsgrep.wasm (cache warm): median {:>6.2} ms  p99 {:>6.2} ms | x{:.2} taskbox run -- /bin/true, +{:.2} ms",
        w / 1e3,
        wp / 1e3,
        w / native,
        (w - native) / 1e3
    );
}
