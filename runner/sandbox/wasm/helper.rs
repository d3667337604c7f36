//! `taskbox-wasm`: `compile` (run by the runner, outside any sandbox, into
//! the cache) and `run` (the command of a native task: loads the artifact
//! from an inherited descriptor, checks its digest, runs the tool).

use std::io::Read as _;
use std::net::SocketAddr;
use std::os::fd::FromRawFd as _;
use std::path::PathBuf;
use std::time::Duration;

use super::engine::{Allocation, Call, Engine, Preopen, Sockets};
use super::{ARTIFACT_FD_ENV, Kind, WasmError};

/// Exit status when the helper itself fails (as taskbox's 125).
const EXIT_SETUP: i32 = 125;

/// Entry point of the `taskbox-wasm` binary; returns its exit status.
pub fn main(args: Vec<String>) -> i32 {
    match dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("taskbox-wasm: {e}");
            EXIT_SETUP
        }
    }
}

fn usage(m: &str) -> WasmError {
    WasmError::Usage(format!(
        "{m}. Usage: taskbox-wasm compile --kind module|component IN OUT | taskbox-wasm run --kind K --digest SHA256 [--preopen ro|rw:DIR[=GUEST]]... [--memory BYTES] [--wall-ms MS] [--net none|proxy|host] -- TOOL [ARGS...]"
    ))
}

fn dispatch(args: Vec<String>) -> Result<i32, WasmError> {
    let mut it = args.into_iter().skip(1);
    match it.next().as_deref() {
        Some("compile") => compile(it.collect()),
        Some("run") => run(it.collect()),
        _ => Err(usage("expected `compile` or `run`")),
    }
}

fn kind_arg(v: Option<String>) -> Result<Kind, WasmError> {
    v.as_deref()
        .and_then(Kind::parse)
        .ok_or_else(|| usage("--kind takes module or component"))
}

fn compile(args: Vec<String>) -> Result<i32, WasmError> {
    let mut it = args.into_iter();
    let (Some(flag), kind, Some(input), Some(output)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(usage("compile takes --kind K IN OUT"));
    };
    if flag != "--kind" {
        return Err(usage("compile takes --kind K IN OUT"));
    }
    let kind = kind_arg(kind)?;
    let wasm = std::fs::read(&input).map_err(|source| WasmError::Read {
        path: input.clone().into(),
        source,
    })?;
    let engine = Engine::new(Allocation::OnDemand)?;
    let bytes = engine.compile(&wasm, kind)?;
    std::fs::write(&output, bytes).map_err(|source| WasmError::Cache {
        what: "write",
        path: output.into(),
        source,
    })?;
    Ok(0)
}

/// The artifact the stage opened for us, read whole.
fn read_artifact() -> Result<Vec<u8>, WasmError> {
    let fd: i32 = std::env::var(ARTIFACT_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| usage(&format!("{ARTIFACT_FD_ENV} names no descriptor")))?;
    // SAFETY: the stage opened this descriptor for us and named it in the
    // variable; nothing else in this process uses it.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|source| WasmError::Read {
            path: PathBuf::from(format!("descriptor {fd}")),
            source,
        })?;
    Ok(bytes)
}

fn run(args: Vec<String>) -> Result<i32, WasmError> {
    let mut kind = None;
    let mut digest = None;
    let mut call = Call::default();
    let mut net = "none".to_owned();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--kind" => kind = Some(kind_arg(Some(val()?))?),
            "--digest" => digest = Some(val()?),
            "--preopen" => {
                let v = val()?;
                let (mode, rest) = v
                    .split_once(':')
                    .ok_or_else(|| usage("--preopen takes ro:DIR or rw:DIR"))?;
                let (host, guest) = rest.split_once('=').unwrap_or((rest, rest));
                call.preopens.push(Preopen {
                    host: host.into(),
                    guest: guest.to_owned(),
                    writable: match mode {
                        "rw" => true,
                        "ro" => false,
                        _ => return Err(usage("--preopen takes ro:DIR or rw:DIR")),
                    },
                });
            }
            "--memory" => {
                call.memory = Some(val()?.parse().map_err(|_| usage("--memory takes bytes"))?);
            }
            "--wall-ms" => {
                let ms: u64 = val()?.parse().map_err(|_| usage("--wall-ms takes ms"))?;
                call.deadline = Some(Duration::from_millis(ms));
            }
            "--net" => net = val()?,
            "--" => break,
            other => return Err(usage(&format!("unknown option {other}"))),
        }
    }
    call.args = it.collect();
    if call.args.is_empty() {
        return Err(usage("no tool name after --"));
    }
    let kind = kind.ok_or_else(|| usage("--kind is required"))?;
    let digest = digest.ok_or_else(|| usage("--digest is required"))?;
    call.sockets = Some(match net.as_str() {
        "none" => Sockets::None,
        "host" => Sockets::Host,
        "proxy" => {
            let addr: SocketAddr = std::env::var("TASKBOX_PROXY")
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| usage("--net proxy without TASKBOX_PROXY"))?;
            Sockets::Proxy(addr)
        }
        _ => return Err(usage("--net takes none, proxy or host")),
    });
    // The guest sees the task's environment (already only what the profile
    // passes), less the helper's own plumbing.
    call.env = std::env::vars()
        .filter(|(k, _)| k != ARTIFACT_FD_ENV)
        .collect();
    let artifact = read_artifact()?;
    let engine = Engine::new(Allocation::OnDemand)?;
    let tool = engine.load(&artifact, &digest, kind)?;
    drop(artifact);
    engine.run(&tool, &call)
}
