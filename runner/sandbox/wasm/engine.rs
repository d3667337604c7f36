//! wasmtime + WASI: compiles tools, loads compiled artifacts after checking
//! their digest, and runs one call in a fresh store whose WASI context holds
//! exactly the preopens, variables, arguments and sockets it is handed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Config, Module, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{Kind, WasmError};

/// Epoch ticks per second: the deadline's resolution.
const TICKS_PER_SEC: u64 = 100;
/// Exit status of a call stopped by its deadline (as the native backend's 124).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status of a trap (as a native abort, 128 + SIGABRT).
pub const EXIT_TRAP: i32 = 134;

/// A directory the guest may use, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// Host directory (inside the native sandbox when run by `taskbox run`).
    pub host: PathBuf,
    /// The name the guest sees (`.` for its working directory).
    pub guest: String,
    /// Read-only or read-write.
    pub writable: bool,
}

/// Which sockets a preview-2 guest may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sockets {
    /// None at all (preview-1 modules never have any).
    None,
    /// TCP connections to the task's egress proxy only; the proxy decides.
    Proxy(SocketAddr),
    /// The host network, unfiltered (profile network mode `host`).
    Host,
}

/// One call of a tool. Defaults: nothing preopened, no variables, no
/// arguments, no sockets, no memory cap beyond wasmtime's, no deadline.
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// `argv`, the tool's name first.
    pub args: Vec<String>,
    /// The guest's environment.
    pub env: Vec<(String, String)>,
    /// Directories the guest may use.
    pub preopens: Vec<Preopen>,
    /// Sockets for preview-2 guests; `None` means no sockets.
    pub sockets: Option<Sockets>,
    /// Cap on each linear memory, in bytes.
    pub memory: Option<usize>,
    /// Wall-clock deadline for the call.
    pub deadline: Option<Duration>,
    /// Standard streams.
    pub stdio: Stdio,
}

/// A compiled tool, ready to instantiate many times.
pub enum Tool {
    /// A preview-1 module with its linker already resolved.
    Module(wasmtime::InstancePre<P1Host>),
    /// A preview-2 command component.
    Component(CommandPre<P2Host>),
}

/// Store data of a preview-1 call.
pub struct P1Host {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

/// Store data of a preview-2 call.
pub struct P2Host {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    http: wasmtime_wasi_http::WasiHttpCtx,
    hooks: ProxyHttp,
}

impl wasmtime_wasi_http::WasiHttpView for P2Host {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            hooks: &mut self.hooks,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

/// `wasi:http` for guests: every outgoing request goes to the task's egress
/// proxy (absolute-form `http://` URI), which decides with the profile's
/// allow-list and audits it; a refusal there, or no proxy at all, is
/// `HttpRequestDenied` to the guest. `https://` is refused: the guest
/// would need the proxy's CONNECT, which wasi:http does not speak.
struct ProxyHttp {
    proxy: Option<SocketAddr>,
}

type HttpFuture = Box<
    dyn std::future::Future<
            Output = Result<
                (
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<
                        dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>>
                            + Send,
                    >,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl wasmtime_wasi_http::WasiHttpHooks for ProxyHttp {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> HttpFuture {
        use http_body_util::BodyExt as _;
        use wasmtime_wasi_http::Error as HttpError;
        let proxy = self.proxy;
        Box::new(async move {
            let Some(proxy) = proxy else {
                return Err(HttpError::HttpRequestDenied);
            };
            if request.uri().scheme() != Some(&http::uri::Scheme::HTTP) {
                return Err(HttpError::HttpRequestDenied);
            }
            let tcp = tokio::net::TcpStream::connect(proxy)
                .await
                .map_err(|_| HttpError::ConnectionRefused)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(tcp))
                    .await
                    .map_err(HttpError::from)?;
            let driver = tokio::spawn(conn);
            // The URI stays absolute: the proxy reads the host from it.
            let resp = sender
                .send_request(request)
                .await
                .map_err(HttpError::from)?;
            if resp.status() == http::StatusCode::FORBIDDEN
                && resp.headers().contains_key("x-taskbox-denied")
            {
                return Err(HttpError::HttpRequestDenied);
            }
            let resp = resp.map(|b| b.map_err(HttpError::from).boxed_unsync());
            let io: Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send> =
                Box::new(async move {
                    match driver.await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(HttpError::from(e)),
                        Err(_) => Err(HttpError::ConnectionTerminated),
                    }
                });
            Ok((resp, io))
        })
    }
}

impl WasiView for P2Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A guest's captured stdout or stderr: keeps the first `cap` bytes and
/// drops the rest while telling the guest every write succeeded (wasmtime's
/// `MemoryOutputPipe` traps the guest when full instead).
#[derive(Debug, Clone)]
pub struct Captured {
    cap: usize,
    inner: Arc<std::sync::Mutex<(Vec<u8>, u64)>>,
}

impl Captured {
    /// Keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            inner: Arc::new(std::sync::Mutex::new((Vec::new(), 0))),
        }
    }

    /// What was kept, and how many bytes were written in all.
    pub fn take(&self) -> (Vec<u8>, u64) {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total = g.1;
        (std::mem::take(&mut g.0), total)
    }
}

impl tokio::io::AsyncWrite for Captured {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let room = self.cap.saturating_sub(g.0.len());
        g.0.extend_from_slice(&buf[..buf.len().min(room)]);
        g.1 += buf.len() as u64;
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl wasmtime_wasi::cli::IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for Captured {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    // Written directly: the default adapter starts a background task per
    // stream per call, which dominated a warm call's cost.
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl wasmtime_wasi::p2::Pollable for Captured {
    async fn ready(&mut self) {}
}

impl wasmtime_wasi::p2::OutputStream for Captured {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let room = self.cap.saturating_sub(g.0.len());
        g.0.extend_from_slice(&bytes[..bytes.len().min(room)]);
        g.1 += bytes.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        // Always room: what does not fit is dropped, never a trap.
        Ok(64 * 1024)
    }
}

/// Where a call's standard streams go.
#[derive(Debug, Clone, Default)]
pub enum Stdio {
    /// The process's own stdin, stdout and stderr (one-shot `taskbox run`).
    #[default]
    Inherit,
    /// `stdin` bytes in; stdout and stderr captured (the serve loop, benchmarks).
    Captured {
        /// The guest's stdin.
        stdin: Vec<u8>,
        /// The guest's stdout.
        stdout: Captured,
        /// The guest's stderr.
        stderr: Captured,
    },
}

/// How a call ended: the exit status, and why when it did not exit by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The guest's status, [`EXIT_TIMEOUT`] or [`EXIT_TRAP`].
    pub code: i32,
    /// For a timeout or a trap: what happened, for people.
    pub why: Option<String>,
}

/// The wasmtime engine taskbox runs tools on, with an epoch ticker thread.
pub struct Engine {
    engine: wasmtime::Engine,
    ticking: Arc<AtomicBool>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

/// How the engine allocates instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// On demand: cheapest to start (one-shot `taskbox run`).
    OnDemand,
    /// Pooling: about 3 ms to set up, then the cheapest per call (long-lived modes).
    Pooling,
}

fn wasm_err(what: &'static str) -> impl FnOnce(wasmtime::Error) -> WasmError {
    move |e| WasmError::Engine {
        what,
        message: format!("{e:#}"),
    }
}

impl Engine {
    /// An engine with epoch interruption on, the configuration the cache key names.
    ///
    /// # Errors
    /// When wasmtime refuses the configuration.
    pub fn new(allocation: Allocation) -> Result<Self, WasmError> {
        let mut c = Config::new();
        c.epoch_interruption(true);
        // Traps are reported by their cause; capturing backtraces costs on every trap.
        c.wasm_backtrace_max_frames(None);
        if allocation == Allocation::Pooling {
            let mut pool = wasmtime::PoolingAllocationConfig::default();
            pool.total_memories(64)
                .total_tables(64)
                .total_core_instances(64);
            c.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = wasmtime::Engine::new(&c).map_err(wasm_err("configure the engine"))?;
        let ticking = Arc::new(AtomicBool::new(true));
        let (e, t) = (engine.clone(), Arc::clone(&ticking));
        std::thread::Builder::new()
            .name("taskbox-epoch".into())
            .spawn(move || {
                while t.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1000 / TICKS_PER_SEC));
                    e.increment_epoch();
                }
            })
            .map_err(|e| WasmError::Engine {
                what: "start the epoch thread",
                message: e.to_string(),
            })?;
        Ok(Self { engine, ticking })
    }

    /// Compiles a module or component to the engine's native artifact.
    ///
    /// # Errors
    /// When the bytes are not valid WebAssembly for this engine.
    pub fn compile(&self, wasm: &[u8], kind: Kind) -> Result<Vec<u8>, WasmError> {
        match kind {
            Kind::Module => self.engine.precompile_module(wasm),
            Kind::Component => self.engine.precompile_component(wasm),
        }
        .map_err(wasm_err("compile the tool"))
    }

    /// Loads an artifact [`Engine::compile`] made, after checking that its
    /// sha-256 is `digest` (a changed or truncated cache file is refused
    /// before wasmtime reads it).
    ///
    /// # Errors
    /// On a digest mismatch, or when wasmtime refuses the artifact or the
    /// tool's imports cannot be satisfied.
    pub fn load(&self, artifact: &[u8], digest: &str, kind: Kind) -> Result<Tool, WasmError> {
        let got = hex::encode(Sha256::digest(artifact));
        if got != digest {
            return Err(WasmError::Corrupt {
                want: digest.to_owned(),
                got,
            });
        }
        match kind {
            Kind::Module => {
                // SAFETY: the bytes are an artifact this engine configuration
                // produced (the digest the runner recorded when it compiled
                // them matches), so deserializing them is sound.
                let m = unsafe { Module::deserialize(&self.engine, artifact) }
                    .map_err(wasm_err("load the compiled module"))?;
                let mut linker = wasmtime::Linker::new(&self.engine);
                wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h: &mut P1Host| &mut h.wasi)
                    .map_err(wasm_err("link WASI preview 1"))?;
                let pre = linker
                    .instantiate_pre(&m)
                    .map_err(wasm_err("resolve the module's imports"))?;
                Ok(Tool::Module(pre))
            }
            Kind::Component => {
                // SAFETY: as above, an artifact of this engine whose digest matches.
                let c = unsafe { Component::deserialize(&self.engine, artifact) }
                    .map_err(wasm_err("load the compiled component"))?;
                let mut linker = wasmtime::component::Linker::new(&self.engine);
                wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
                    .map_err(wasm_err("link WASI preview 2"))?;
                wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)
                    .map_err(wasm_err("link wasi:http"))?;
                let pre = linker
                    .instantiate_pre(&c)
                    .map_err(wasm_err("resolve the component's imports"))?;
                let pre = CommandPre::new(pre)
                    .map_err(wasm_err("find the component's wasi:cli/run export"))?;
                Ok(Tool::Component(pre))
            }
        }
    }

    /// Runs one call of `tool` and returns its exit status: the guest's own,
    /// [`EXIT_TIMEOUT`] at the deadline, [`EXIT_TRAP`] on a trap (the reason
    /// is written to stderr).
    ///
    /// # Errors
    /// When a preopen cannot be opened or the instance cannot be created.
    pub fn run(&self, tool: &Tool, call: &Call) -> Result<Ended, WasmError> {
        let Call {
            args,
            env,
            preopens,
            sockets,
            memory,
            deadline,
            stdio,
        } = call;
        let mut b = WasiCtxBuilder::new();
        // Blocking file I/O on this thread: no tokio hop per call.
        b.allow_blocking_current_thread(true);
        b.args(args).envs(env);
        match stdio {
            Stdio::Inherit => {
                b.inherit_stdio();
            }
            Stdio::Captured {
                stdin,
                stdout,
                stderr,
            } => {
                b.stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(stdin.clone()));
                b.stdout(stdout.clone()).stderr(stderr.clone());
            }
        }
        for p in preopens {
            let perms = if p.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            b.preopened_dir(&p.host, &p.guest, perms)
                .map_err(|e| WasmError::Preopen {
                    path: p.host.clone(),
                    message: format!("{e:#}"),
                })?;
        }
        let mut limits = StoreLimitsBuilder::new().trap_on_grow_failure(true);
        if let Some(m) = memory {
            limits = limits.memory_size(*m);
        }
        let limits = limits.build();
        let ticks = deadline.map_or(u64::MAX, |d| {
            (d.as_millis() as u64).saturating_mul(TICKS_PER_SEC) / 1000 + 1
        });
        let name = args.first().cloned().unwrap_or_default();
        let result = match tool {
            Tool::Module(pre) => {
                let mut store = Store::new(
                    &self.engine,
                    P1Host {
                        wasi: b.build_p1(),
                        limits,
                    },
                );
                store.limiter(|h| &mut h.limits);
                store.set_epoch_deadline(ticks);
                let inst = pre
                    .instantiate(&mut store)
                    .map_err(wasm_err("instantiate the module"))?;
                let start = inst
                    .get_typed_func::<(), ()>(&mut store, "_start")
                    .map_err(wasm_err("find the module's _start"))?;
                start.call(&mut store, ()).map(|()| 0)
            }
            Tool::Component(pre) => {
                configure_sockets(&mut b, *sockets);
                let proxy = match sockets {
                    Some(Sockets::Proxy(p)) => Some(*p),
                    Some(Sockets::None | Sockets::Host) | None => None,
                };
                let mut store = Store::new(
                    &self.engine,
                    P2Host {
                        wasi: b.build(),
                        table: ResourceTable::new(),
                        limits,
                        http: wasmtime_wasi_http::WasiHttpCtx::new(),
                        hooks: ProxyHttp { proxy },
                    },
                );
                store.limiter(|h| &mut h.limits);
                store.set_epoch_deadline(ticks);
                let cmd = pre
                    .instantiate(&mut store)
                    .map_err(wasm_err("instantiate the component"))?;
                cmd.wasi_cli_run()
                    .call_run(&mut store)
                    .map(|r| if r.is_ok() { 0 } else { 1 })
            }
        };
        Ok(match result {
            Ok(code) => Ended { code, why: None },
            Err(e) => {
                if let Some(exit) = e.downcast_ref::<I32Exit>() {
                    Ended {
                        code: exit.0,
                        why: None,
                    }
                } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                    Ended {
                        code: EXIT_TIMEOUT,
                        why: Some(format!("{name}: stopped at its wall-clock limit")),
                    }
                } else {
                    // The whole chain (backtraces are off in the engine config).
                    let cause = format!("{e:#}");
                    let why = match e.downcast_ref::<Trap>() {
                        Some(trap) if !cause.contains(&trap.to_string()) => {
                            format!("{trap}: {cause}")
                        }
                        _ => cause,
                    };
                    let hint = match memory {
                        Some(m)
                            if why.contains("memory growth") || why.contains("growing memory") =>
                        {
                            format!(" (the memory limit is {m} bytes)")
                        }
                        _ => String::new(),
                    };
                    Ended {
                        code: EXIT_TRAP,
                        why: Some(format!("{name} trapped{hint}: {why}")),
                    }
                }
            }
        })
    }
}

/// Preview-2 sockets from the profile's network mode. Name lookups stay off
/// in every filtered mode: tools resolve through the proxy.
fn configure_sockets(b: &mut WasiCtxBuilder, sockets: Option<Sockets>) {
    match sockets.unwrap_or(Sockets::None) {
        Sockets::None => {
            b.allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false);
        }
        Sockets::Proxy(proxy) => {
            b.allow_tcp(true)
                .allow_udp(false)
                .allow_ip_name_lookup(false);
            b.socket_addr_check(move |addr, use_| {
                let ok = match use_ {
                    // The implicit bind before a connect asks for the wildcard.
                    SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    SocketAddrUse::TcpConnect => addr == proxy,
                    _ => false,
                };
                if !ok {
                    eprintln!("taskbox-wasm: socket {use_:?} {addr} refused: only the egress proxy at {proxy} is reachable");
                }
                Box::pin(async move { ok })
            });
        }
        Sockets::Host => {
            b.allow_tcp(true).allow_udp(true).allow_ip_name_lookup(true);
            b.socket_addr_check(|_, _| Box::pin(async { true }));
        }
    }
}
