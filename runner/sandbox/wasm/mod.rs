//! The WASM backend. A `.wasm` command (or `backend = "wasm"`) runs under
//! wasmtime + WASI in the `taskbox-wasm` helper, which itself runs as the
//! command of an ordinary native task: the same namespaces, overlay, Landlock,
//! seccomp, rlimits and egress proxy apply to it, and WASI narrows the guest
//! further to exactly its preopens, variables and sockets.
//!
//! This file is the runner's side (no wasmtime): the compile cache, keyed by
//! the module's sha-256 and the engine configuration and checked by digest,
//! and the helper's command line built from a `SandboxSpec`. The engine and
//! the helper's entry point need the `wasm` feature.

#[cfg(feature = "wasm")]
mod engine;
#[cfg(feature = "wasm")]
mod helper;

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::profile::{NetMode, SandboxSpec, WorkspaceMode};

#[cfg(feature = "wasm")]
pub use engine::{
    Allocation, Call, Captured, EXIT_TIMEOUT, EXIT_TRAP, Ended, Engine, Preopen, Sockets, Stdio,
    Tool,
};
#[cfg(feature = "wasm")]
pub use helper::main as helper_main;

/// File name of the helper binary, installed beside `taskbox`.
pub const HELPER: &str = "taskbox-wasm";
/// Names the engine configuration in cache keys: wasmtime's version and the
/// settings that change generated code. Bump it with either.
pub const ENGINE_ID: &str = "wasmtime-48.0.8/cranelift/epoch-interruption/v1";
/// The variable that tells the helper which descriptor holds the artifact.
pub const ARTIFACT_FD_ENV: &str = "TASKBOX_WASM_ARTIFACT_FD";

/// Why the WASM backend could not run a tool.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The module file could not be read.
    #[error("cannot read the WASM tool {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a WebAssembly module or component.
    #[error(
        "{path} is not a WebAssembly module or component (bad header). Hint: build it for wasm32-wasip1 or wasm32-wasip2"
    )]
    NotWasm {
        /// The file.
        path: PathBuf,
    },
    /// The helper binary is missing.
    #[error(
        "this taskbox has no WASM backend: {path} is missing. Hint: build with the `wasm` feature (the default) and install taskbox-wasm beside taskbox"
    )]
    NoHelper {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The cache could not be read or written.
    #[error("WASM module cache: cannot {what} {path}")]
    Cache {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Compiling failed.
    #[error("compiling {path} failed: {message}")]
    Compile {
        /// The module.
        path: PathBuf,
        /// The helper's words.
        message: String,
    },
    /// A compiled artifact does not match its recorded digest.
    #[error("the compiled artifact is corrupt (sha-256 {got}, recorded {want}); it is not loaded")]
    Corrupt {
        /// Recorded digest.
        want: String,
        /// Actual digest.
        got: String,
    },
    /// wasmtime refused something.
    #[error("wasmtime: cannot {what}: {message}")]
    Engine {
        /// The operation.
        what: &'static str,
        /// wasmtime's error chain.
        message: String,
    },
    /// A preopened directory could not be opened.
    #[error("cannot preopen {path} for the tool: {message}")]
    Preopen {
        /// The directory.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The helper's command line is wrong.
    #[error("taskbox-wasm: {0}")]
    Usage(String),
}

/// Preview-1 module or preview-2 component, from the binary header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A core module (wasm32-wasip1).
    Module,
    /// A component (wasm32-wasip2).
    Component,
}

impl Kind {
    /// Reads the header: `\0asm`, then version 1 (module) or the component layer.
    pub fn of(bytes: &[u8]) -> Option<Self> {
        match bytes.get(..8)? {
            [0, b'a', b's', b'm', 1, 0, 0, 0] => Some(Kind::Module),
            [0, b'a', b's', b'm', _, _, 1, 0] => Some(Kind::Component),
            _ => None,
        }
    }

    /// The helper's `--kind` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Module => "module",
            Kind::Component => "component",
        }
    }

    /// Reads a `--kind` word (the helper's side of [`Kind::as_str`]).
    #[cfg(feature = "wasm")]
    fn parse(s: &str) -> Option<Self> {
        match s {
            "module" => Some(Kind::Module),
            "component" => Some(Kind::Component),
            _ => None,
        }
    }
}

/// A tool ready to launch: its compiled artifact in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// sha-256 of the `.wasm` file (named in the audit log).
    pub module_sha256: String,
    /// Module or component.
    pub kind: Kind,
    /// The artifact in the cache.
    pub artifact: PathBuf,
    /// sha-256 of the artifact, checked before every load.
    pub artifact_sha256: String,
    /// Whether this call compiled it (a cache miss, or a corrupt entry).
    pub compiled: bool,
    /// Milliseconds spent compiling (0 on a hit).
    pub compile_ms: u64,
}

/// The helper beside `exe` (the runner's own binary).
///
/// # Errors
/// When it is not there.
pub fn helper_beside(exe: &Path) -> Result<PathBuf, WasmError> {
    let path = exe.with_file_name(HELPER);
    if path.is_file() {
        Ok(path)
    } else {
        Err(WasmError::NoHelper { path })
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Finds the tool's compiled artifact in `cache`, or compiles it with the
/// helper (outside any sandbox, as the user). An entry whose bytes do not
/// match the digest recorded beside it is compiled again.
///
/// # Errors
/// When the module cannot be read, is not WebAssembly, or does not compile.
pub fn ensure_compiled(cache: &Path, module: &Path, helper: &Path) -> Result<Compiled, WasmError> {
    let wasm = std::fs::read(module).map_err(|source| WasmError::Read {
        path: module.to_path_buf(),
        source,
    })?;
    let kind = Kind::of(&wasm).ok_or_else(|| WasmError::NotWasm {
        path: module.to_path_buf(),
    })?;
    let module_sha256 = sha256_hex(&wasm);
    let key = sha256_hex(format!("{ENGINE_ID}\n{}\n{module_sha256}", kind.as_str()).as_bytes());
    let artifact = cache.join(format!("{key}.cwasm"));
    let sum_path = cache.join(format!("{key}.sha256"));
    let cache_err = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| WasmError::Cache { what, path, source }
    };
    if let (Ok(bytes), Ok(sum)) = (std::fs::read(&artifact), std::fs::read_to_string(&sum_path))
        && sha256_hex(&bytes) == sum.trim()
    {
        return Ok(Compiled {
            module_sha256,
            kind,
            artifact,
            artifact_sha256: sum.trim().to_owned(),
            compiled: false,
            compile_ms: 0,
        });
    }
    std::fs::create_dir_all(cache).map_err(cache_err("create", cache))?;
    let started = std::time::Instant::now();
    let tmp = cache.join(format!("{key}.{}.tmp", std::process::id()));
    let out = std::process::Command::new(helper)
        .args(["compile", "--kind", kind.as_str()])
        .arg(module)
        .arg(&tmp)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(cache_err("run the compiler", helper))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(WasmError::Compile {
            path: module.to_path_buf(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let bytes = std::fs::read(&tmp).map_err(cache_err("read", &tmp))?;
    let sum = sha256_hex(&bytes);
    // The artifact lands before its digest: a crash between the two leaves an
    // entry without a digest, which the next run compiles again.
    std::fs::rename(&tmp, &artifact).map_err(cache_err("write", &artifact))?;
    let sum_tmp = cache.join(format!("{key}.{}.sum", std::process::id()));
    std::fs::write(&sum_tmp, &sum).map_err(cache_err("write", &sum_tmp))?;
    std::fs::rename(&sum_tmp, &sum_path).map_err(cache_err("write", &sum_path))?;
    Ok(Compiled {
        module_sha256,
        kind,
        artifact,
        artifact_sha256: sum,
        compiled: true,
        compile_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Filesystems a WASM tool never needs preopened.
fn special(p: &Path) -> bool {
    ["/proc", "/sys", "/dev"].iter().any(|s| p.starts_with(s))
}

/// Options both helper commands take: preopens from `[filesystem]` (the
/// working directory also as `.`), the memory cap and wall clock from
/// `[limits]`, sockets from `[network]`.
fn common_args(spec: &SandboxSpec, cwd: &Path) -> Vec<String> {
    let (fs, net, limits) = (&spec.fs, &spec.net, &spec.limits);
    let writable = |p: &Path| {
        let in_ws = p.starts_with(&spec.workspace);
        let granted = fs.write.iter().any(|w| p.starts_with(w));
        match spec.workspace_mode {
            WorkspaceMode::ReadOnly if in_ws => false,
            WorkspaceMode::Overlay | WorkspaceMode::Direct if in_ws => true,
            _ => granted,
        }
    };
    let mut v = Vec::new();
    let mut dirs: Vec<&PathBuf> = fs.write.iter().chain(&fs.read).collect();
    dirs.push(&spec.workspace);
    let mut seen: Vec<&Path> = Vec::new();
    for d in dirs {
        if special(d) || seen.contains(&d.as_path()) || !d.is_dir() {
            continue;
        }
        seen.push(d);
        let mode = if writable(d) { "rw" } else { "ro" };
        v.push("--preopen".into());
        v.push(format!("{mode}:{}", d.display()));
    }
    if cwd.is_dir() {
        let mode = if writable(cwd) { "rw" } else { "ro" };
        v.push("--preopen".into());
        v.push(format!("{mode}:{}=.", cwd.display()));
    }
    if let Some(m) = limits.memory {
        v.push("--memory".into());
        v.push(m.to_string());
    }
    if let Some(w) = limits.wall_ms {
        v.push("--wall-ms".into());
        v.push(w.to_string());
    }
    v.push("--net".into());
    v.push(
        match net.mode {
            NetMode::None => "none",
            NetMode::Proxy => "proxy",
            NetMode::Host => "host",
        }
        .into(),
    );
    v
}

/// The helper's command line for one run of one tool inside the task
/// (`tool_args[0]` is its name).
pub fn run_argv(
    helper: &Path,
    compiled: &Compiled,
    spec: &SandboxSpec,
    cwd: &Path,
    tool_args: &[String],
) -> Vec<String> {
    let mut v = vec![
        helper.display().to_string(),
        "run".into(),
        "--kind".into(),
        compiled.kind.as_str().into(),
        "--digest".into(),
        compiled.artifact_sha256.clone(),
    ];
    v.extend(common_args(spec, cwd));
    v.push("--".into());
    v.extend(tool_args.iter().cloned());
    v
}

/// The variable naming the descriptor of the `i`th tool of a serve loop.
pub fn artifact_var(i: usize) -> String {
    format!("{ARTIFACT_FD_ENV}_{i}")
}

/// The helper's command line for the serve loop over `tools` (name and
/// artifact; the `i`th artifact's descriptor is in [`artifact_var`]`(i)`).
pub fn serve_argv(
    helper: &Path,
    tools: &[(String, Compiled)],
    spec: &SandboxSpec,
    cwd: &Path,
) -> Vec<String> {
    let mut v = vec![helper.display().to_string(), "serve".into()];
    for (i, (name, c)) in tools.iter().enumerate() {
        v.push("--tool".into());
        v.push(format!(
            "{name}={}:{}:{}",
            c.kind.as_str(),
            c.artifact_sha256,
            artifact_var(i)
        ));
    }
    if let Some(o) = spec.limits.output {
        v.push("--call-output".into());
        v.push(o.min(1 << 20).to_string());
    }
    v.extend(common_args(spec, cwd));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_tell_modules_from_components() {
        assert_eq!(Kind::of(b"\0asm\x01\0\0\0rest"), Some(Kind::Module));
        assert_eq!(Kind::of(b"\0asm\x0d\0\x01\0rest"), Some(Kind::Component));
        assert_eq!(Kind::of(b"\x7fELF\x02\x01\x01\0"), None);
        assert_eq!(Kind::of(b"\0asm"), None);
    }
}
