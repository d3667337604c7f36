//! `taskbox-wasm`: `compile` (run by the runner, outside any sandbox, into
//! the cache), `run` (the command of a native task: loads the artifact from
//! an inherited descriptor, checks its digest, runs the tool once) and
//! `serve` (the warm path: many tools, many calls, JSON lines on stdio).

use std::io::Read as _;
use std::net::SocketAddr;
use std::os::fd::FromRawFd as _;
use std::path::PathBuf;
use std::time::Duration;

use super::engine::{Allocation, Call, Captured, Engine, Preopen, Sockets, Stdio};
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
        "{m}. Usage: taskbox-wasm compile --kind module|component IN OUT | taskbox-wasm run --kind K --digest SHA256 [OPTIONS] -- TOOL [ARGS...] | taskbox-wasm serve --tool NAME=KIND:SHA256:FDVAR... [--call-output BYTES] [OPTIONS]; OPTIONS: [--preopen ro|rw:DIR[=GUEST]]... [--memory BYTES] [--wall-ms MS] [--net none|proxy|host]"
    ))
}

fn dispatch(args: Vec<String>) -> Result<i32, WasmError> {
    let mut it = args.into_iter().skip(1);
    match it.next().as_deref() {
        Some("compile") => compile(it.collect()),
        Some("run") => run(it.collect()),
        Some("serve") => serve(it.collect()),
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

/// The artifact the stage opened for us (descriptor named by `var`), read whole.
fn read_artifact(var: &str) -> Result<Vec<u8>, WasmError> {
    let fd: i32 = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| usage(&format!("{var} names no descriptor")))?;
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

/// Options `run` and `serve` share, and what each adds.
struct Opts {
    /// `run`: the artifact's kind and digest (descriptor in [`ARTIFACT_FD_ENV`]).
    single: Option<(Kind, String)>,
    /// `serve`: name, kind, digest and the variable naming each descriptor.
    tools: Vec<(String, Kind, String, String)>,
    /// Per-call output cap (`serve`).
    call_output: usize,
    /// The call every request starts from.
    call: Call,
}

fn parse(args: Vec<String>) -> Result<Opts, WasmError> {
    let mut kind = None;
    let mut digest = None;
    let mut tools = Vec::new();
    let mut call_output = 1 << 20;
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
            "--tool" => {
                let v = val()?;
                let bad = || usage("--tool takes NAME=KIND:SHA256:FDVAR");
                let (name, rest) = v.split_once('=').ok_or_else(bad)?;
                let mut parts = rest.splitn(3, ':');
                let (Some(k), Some(d), Some(var)) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(bad());
                };
                tools.push((
                    name.to_owned(),
                    kind_arg(Some(k.to_owned()))?,
                    d.to_owned(),
                    var.to_owned(),
                ));
            }
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
            "--call-output" => {
                call_output = val()?
                    .parse()
                    .map_err(|_| usage("--call-output takes bytes"))?;
            }
            "--net" => net = val()?,
            "--" => break,
            other => return Err(usage(&format!("unknown option {other}"))),
        }
    }
    call.args = it.collect();
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
        .filter(|(k, _)| !k.starts_with(ARTIFACT_FD_ENV))
        .collect();
    let single = match (kind, digest) {
        (Some(k), Some(d)) => Some((k, d)),
        _ => None,
    };
    Ok(Opts {
        single,
        tools,
        call_output,
        call,
    })
}

fn run(args: Vec<String>) -> Result<i32, WasmError> {
    let Opts { single, call, .. } = parse(args)?;
    let (kind, digest) = single.ok_or_else(|| usage("run needs --kind and --digest"))?;
    if call.args.is_empty() {
        return Err(usage("no tool name after --"));
    }
    let artifact = read_artifact(ARTIFACT_FD_ENV)?;
    let engine = Engine::new(Allocation::OnDemand)?;
    let tool = engine.load(&artifact, &digest, kind)?;
    drop(artifact);
    let ended = engine.run(&tool, &call)?;
    if let Some(why) = ended.why {
        eprintln!("taskbox-wasm: {why}");
    }
    Ok(ended.code)
}

/// One request of the serve loop (a JSON line on stdin).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    /// Echoed in the response.
    #[serde(default)]
    id: serde_json::Value,
    /// A tool name given with `--tool`.
    tool: String,
    /// Its arguments (after its name).
    #[serde(default)]
    args: Vec<String>,
    /// Its stdin.
    #[serde(default)]
    stdin: String,
}

/// The warm path: every tool compiled and linked once (pooling allocator),
/// then one fresh WASI context and store per request line on stdin; one JSON
/// response line per request on stdout.
fn serve(args: Vec<String>) -> Result<i32, WasmError> {
    use std::io::{BufRead as _, Write as _};
    let Opts {
        tools,
        call_output,
        call,
        ..
    } = parse(args)?;
    if tools.is_empty() {
        return Err(usage("serve needs at least one --tool"));
    }
    let engine = Engine::new(Allocation::Pooling)?;
    let mut loaded = Vec::new();
    for (name, kind, digest, var) in &tools {
        let artifact = read_artifact(var)?;
        loaded.push((name.clone(), engine.load(&artifact, digest, *kind)?));
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let resp = match serde_json::from_str::<Request>(&line) {
            Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }),
            Ok(req) => match loaded.iter().find(|(n, _)| *n == req.tool) {
                None => {
                    serde_json::json!({ "id": req.id, "error": format!("no tool named {}", req.tool) })
                }
                Some((name, tool)) => {
                    let stdout = Captured::new(call_output);
                    let stderr = Captured::new(call_output);
                    let mut c = call.clone();
                    c.args = std::iter::once(name.clone()).chain(req.args).collect();
                    c.stdio = Stdio::Captured {
                        stdin: req.stdin.into_bytes(),
                        stdout: stdout.clone(),
                        stderr: stderr.clone(),
                    };
                    match engine.run(tool, &c) {
                        Ok(ended) => {
                            let (o, o_total) = stdout.take();
                            let (e, e_total) = stderr.take();
                            serde_json::json!({
                                "id": req.id,
                                "tool": name,
                                "exit": ended.code,
                                "why": ended.why,
                                "stdout": String::from_utf8_lossy(&o),
                                "stderr": String::from_utf8_lossy(&e),
                                "stdout_truncated": o_total > o.len() as u64,
                                "stderr_truncated": e_total > e.len() as u64,
                                "us": u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                            })
                        }
                        Err(e) => {
                            serde_json::json!({ "id": req.id, "tool": name, "error": e.to_string() })
                        }
                    }
                }
            },
        };
        if serde_json::to_writer(&mut out, &resp).is_err()
            || writeln!(out).is_err()
            || out.flush().is_err()
        {
            break;
        }
    }
    Ok(0)
}
