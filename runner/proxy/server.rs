//! The proxy's I/O on a listener that lives in the task's own network
//! namespace: HTTP CONNECT (TLS passes through untouched), plain-HTTP
//! forwarding, and SOCKS5 CONNECT for other TCP, told apart by the first
//! byte. It resolves names itself, checks the addresses, and connects to the
//! address it checked.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fast_socks5::server::Socks5ServerProtocol;
use fast_socks5::util::target_addr::TargetAddr;
use fast_socks5::{ReplyError, Socks5Command};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::awake::Window;
use super::policy::{Decision, DenyReason, Policy};
use super::tls::Interceptor;
use super::{Injection, Injector};

/// Largest request head accepted (request line + headers).
const MAX_HEAD: usize = 16 * 1024;
/// A client must send its whole head (or SOCKS handshake) within this (slow-loris guard).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Upstream connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once per task; more wait in the kernel's backlog.
/// Each costs two 8 KiB copy buffers and a head buffer: about 5 MiB at most.
const MAX_CONNECTIONS: usize = 256;
/// First byte of a SOCKS5 greeting.
const SOCKS5: u8 = 0x05;

/// How the task asked for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Plain HTTP forwarding of an absolute `http://` URL.
    Http,
    /// HTTP CONNECT tunnel (TLS passes through).
    Connect,
    /// SOCKS5 CONNECT.
    Socks5,
}

/// One connection, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnRecord {
    /// Requested host.
    pub host: String,
    /// Requested port.
    pub port: u16,
    /// The address connected to (after the check), if any.
    pub addr: Option<String>,
    /// How it was asked for.
    pub protocol: Protocol,
    /// The verdict.
    pub decision: Decision,
    /// Why an allowed connection still failed (unreachable, refused), if it did.
    pub error: Option<String>,
    /// Credentials the proxy injected into this request, by grant name.
    pub credentials: Vec<String>,
    /// Bytes from the task to the server.
    pub bytes_up: u64,
    /// Bytes from the server to the task.
    pub bytes_down: u64,
    /// Milliseconds the connection lasted.
    pub duration_ms: u64,
}

/// Told about every connection when it ends; `action` writes it to the audit
/// log while the task still runs, so a killed runner loses no finished one.
pub trait Recorder: Send + Sync {
    /// One connection ended (or was refused).
    fn record(&self, rec: &ConnRecord);
}

/// How names resolve: the system resolver, or (tests only) a fixed map that
/// stands in for DNS. The address checks apply to either.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    fixed: Vec<(String, IpAddr)>,
}

impl Resolver {
    /// The system resolver, unless `spec` (`name=ip,name=ip`) maps names.
    /// With a map, names outside it do not resolve at all.
    pub fn from_spec(spec: Option<&str>) -> Self {
        let fixed = spec
            .unwrap_or("")
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.trim().to_ascii_lowercase(), v.trim().parse().ok()?))
            })
            .collect();
        Self { fixed }
    }

    async fn resolve(&self, host: &str, port: u16) -> Vec<SocketAddr> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return vec![SocketAddr::new(ip, port)];
        }
        if !self.fixed.is_empty() {
            return self
                .fixed
                .iter()
                .filter(|(n, _)| n == host)
                .map(|(_, ip)| SocketAddr::new(*ip, port))
                .collect();
        }
        tokio::net::lookup_host((host, port))
            .await
            .map(Iterator::collect)
            .unwrap_or_default()
    }
}

/// A running proxy; `stop` ends it and returns what it served.
pub struct ProxyHandle {
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
    records: Arc<Mutex<Vec<ConnRecord>>>,
}

impl ProxyHandle {
    /// Stops accepting, drops open connections, returns every connection's record.
    pub fn stop(self) -> Vec<ConnRecord> {
        let _ = self.stop.send(true);
        let _ = self.thread.join();
        std::mem::take(
            &mut *self
                .records
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// What a serving task shares.
struct Shared {
    policy: Policy,
    resolver: Resolver,
    injector: Option<Arc<dyn Injector>>,
    interceptor: Option<Arc<Interceptor>>,
    recorder: Box<dyn Recorder>,
    records: Arc<Mutex<Vec<ConnRecord>>>,
}

/// Header credentials for the proxy: who swaps placeholders, and (for
/// HTTPS) the interception authority for the grants' hosts.
pub struct Inject {
    /// Swaps placeholders for values.
    pub injector: Arc<dyn Injector>,
    /// Terminates TLS for the grants' hosts, if any are HTTPS.
    pub interceptor: Option<Arc<Interceptor>>,
}

/// Serves `listener` (in the task's network namespace) on a thread of its own.
///
/// # Errors
/// When the runtime or the listener cannot be set up.
pub fn start(
    listener: std::net::TcpListener,
    policy: Policy,
    resolver: Resolver,
    inject: Option<Inject>,
    recorder: Box<dyn Recorder>,
) -> std::io::Result<ProxyHandle> {
    let (injector, interceptor) = match inject {
        Some(Inject {
            injector,
            interceptor,
        }) => (Some(injector), interceptor),
        None => (None, None),
    };
    listener.set_nonblocking(true)?;
    let woke = Arc::new(tokio::sync::Notify::new());
    let window = Arc::new(Window::new());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .on_thread_park({
            let window = Arc::clone(&window);
            move || window.parked()
        })
        .on_thread_unpark({
            let woke = Arc::clone(&woke);
            let window = Arc::clone(&window);
            move || {
                window.unparked();
                woke.notify_one();
            }
        })
        .build()?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let records = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::new(Shared {
        policy,
        resolver,
        injector,
        interceptor,
        recorder,
        records: Arc::clone(&records),
    });
    let thread = std::thread::Builder::new()
        .name("taskbox-proxy".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                tokio::spawn(stay_awake(woke, window));
                let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
                let mut tasks = tokio::task::JoinSet::new();
                loop {
                    // A slot first, so a flood waits in the backlog, not in memory.
                    let permit = tokio::select! {
                        _ = stopped.changed() => break,
                        p = Arc::clone(&slots).acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                    };
                    let stream = tokio::select! {
                        _ = stopped.changed() => break,
                        accepted = listener.accept() => match accepted {
                            Ok((s, _)) => s,
                            Err(_) => continue,
                        },
                    };
                    let shared = Arc::clone(&shared);
                    tasks.spawn(async move {
                        if let Some(rec) = serve(stream, &shared).await {
                            shared.recorder.record(&rec);
                            shared
                                .records
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(rec);
                        }
                        drop(permit);
                    });
                    // Reap finished connections so the set does not grow.
                    while tasks.try_join_next().is_some() {}
                }
                tasks.shutdown().await;
            });
        })?;
    Ok(ProxyHandle {
        stop,
        thread,
        records,
    })
}

/// After each wake-up of the proxy's thread, keeps it polling (yielding,
/// which makes the runtime check its sockets without blocking) for the
/// current [`Window`]. An answer that arrives within it (a forwarded
/// request's response) finds the thread running and needs no cross-CPU
/// wake-up. Idle, the thread sleeps as before: the window only opens when
/// something woke it, and it shrinks to nothing when events come late.
async fn stay_awake(woke: Arc<tokio::sync::Notify>, window: Arc<Window>) {
    loop {
        woke.notified().await;
        let until = Instant::now() + window.current();
        while Instant::now() < until {
            tokio::task::yield_now().await;
        }
    }
}

/// Reads a request head; `None` on timeout, overflow or a closed connection.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<(Vec<u8>, usize)> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    let read = async {
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(end + 4);
            }
            if buf.len() > MAX_HEAD {
                return None;
            }
        }
    };
    let end = tokio::time::timeout(HEAD_TIMEOUT, read).await.ok()??;
    Some((buf, end))
}

/// Reads a request head that parses; otherwise answers 400 and gives `None`.
async fn read_request<S>(stream: &mut S) -> Option<(Vec<u8>, usize)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some((buf, end)) = read_head(stream).await else {
        respond(
            stream,
            "400 Bad Request",
            None,
            "taskbox proxy: malformed, oversized or too slow request\n",
        )
        .await;
        return None;
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if matches!(req.parse(&buf[..end]), Ok(httparse::Status::Complete(_))) {
        Some((buf, end))
    } else {
        respond(
            stream,
            "400 Bad Request",
            None,
            "taskbox proxy: malformed request\n",
        )
        .await;
        None
    }
}

async fn respond<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    denied: Option<&str>,
    body: &str,
) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(d) = denied {
        head.push_str(&format!("X-Taskbox-Denied: {d}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn deny_text(d: &Decision) -> String {
    match d {
        Decision::Deny { rule: Some(r), .. } => format!("deny {r}"),
        Decision::Deny {
            reason: DenyReason::PrivateAddress(why),
            ..
        } => format!("private address: {why}"),
        Decision::Deny { .. } => "not in the allow list".to_owned(),
        Decision::Allow { rule } => format!("allow {rule}"),
    }
}

/// Where an HTTP request wants to go.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    /// Origin-form path for forwarded requests; empty for CONNECT.
    path: String,
}

/// Parses a CONNECT authority or an absolute `http://` URL; `Err` is the
/// reason given to the client.
fn parse_target(connect: bool, target: &str) -> Result<Target, &'static str> {
    let split_port =
        |authority: &str, default: Option<u16>| -> Result<(String, u16), &'static str> {
            let bad = "taskbox proxy: bad host:port in the request\n";
            let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
                let (ip, after) = rest.split_once(']').ok_or(bad)?;
                let port = match after.strip_prefix(':') {
                    Some(p) => p.parse().map_err(|_| bad)?,
                    None if after.is_empty() => default.ok_or(bad)?,
                    None => return Err(bad),
                };
                (format!("[{ip}]"), port)
            } else {
                match authority.rsplit_once(':') {
                    Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad)?),
                    None => (authority.to_owned(), default.ok_or(bad)?),
                }
            };
            if host.is_empty() || host.contains(['@', '/', ' ']) {
                return Err(bad);
            }
            Ok((host.to_ascii_lowercase(), port))
        };
    if connect {
        let (host, port) = split_port(target, None)?;
        return Ok(Target {
            host,
            port,
            path: String::new(),
        });
    }
    let rest = target
        .strip_prefix("http://")
        .or_else(|| {
            target
                .get(..7)
                .filter(|s| s.eq_ignore_ascii_case("http://"))
                .map(|_| &target[7..])
        })
        .ok_or("taskbox proxy: only absolute http:// URLs, CONNECT and SOCKS5 are proxied\n")?;
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (host, port) = split_port(authority, Some(80))?;
    let path = match path {
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    Ok(Target { host, port, path })
}

/// The origin-form request head sent upstream: hop-by-hop headers dropped,
/// credential placeholders swapped for values (or the request refused).
fn forward_head(
    method: &str,
    target: &Target,
    headers: &[httparse::Header<'_>],
    injector: Option<&dyn Injector>,
    rec: &mut ConnRecord,
) -> Result<String, String> {
    let mut apply = |text: &str| -> Result<String, String> {
        match injector.map_or(Injection::Keep, |i| {
            i.inject(&target.host, target.port, text)
        }) {
            Injection::Keep => Ok(text.to_owned()),
            Injection::Replace { text, grants } => {
                for g in grants {
                    if !rec.credentials.contains(&g) {
                        rec.credentials.push(g);
                    }
                }
                Ok(text)
            }
            Injection::Refuse { grant, why } => {
                rec.credentials.push(grant);
                Err(why)
            }
        }
    };
    let path = apply(&target.path)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for h in headers {
        let name = h.name.to_ascii_lowercase();
        // Hop-by-hop headers stay between the task and the proxy.
        if name.starts_with("proxy-") || name == "connection" || name == "keep-alive" {
            continue;
        }
        let value = apply(&String::from_utf8_lossy(h.value))?;
        head.push_str(h.name);
        head.push_str(": ");
        head.push_str(&value);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    Ok(head)
}

/// Answers a request whose credential placeholder may not go where it was
/// sent (403 naming the reason) and records the refusal.
async fn refuse_credential<S: tokio::io::AsyncWrite + Unpin>(
    client: &mut S,
    rec: &mut ConnRecord,
    why: String,
) {
    respond(
        client,
        "403 Forbidden",
        Some(&format!("credential: {why}")),
        &format!(
            "taskbox: request to {}:{} refused: {why}\n",
            rec.host, rec.port
        ),
    )
    .await;
    rec.decision = Decision::Deny {
        rule: None,
        reason: DenyReason::Credential(why),
    };
}

/// Why an allowed-by-name connection did not happen.
enum Unreached {
    /// Policy (the name's addresses) refused it.
    Denied,
    /// The upstream could not be reached (the record's `error` says why).
    Failed,
}

/// Decides, resolves, checks the addresses and connects to a checked one.
/// Fills in the record's decision, address and, on failure, error.
async fn reach(
    rec: &mut ConnRecord,
    policy: &Policy,
    resolver: &Resolver,
) -> Result<TcpStream, Unreached> {
    if let Decision::Deny { .. } = rec.decision {
        return Err(Unreached::Denied);
    }
    let addrs = resolver.resolve(&rec.host, rec.port).await;
    if addrs.is_empty() {
        rec.error = Some(format!("{} did not resolve", rec.host));
        return Err(Unreached::Failed);
    }
    let mut refusal = None;
    let checked = addrs
        .into_iter()
        .find(|a| match policy.check_addr(a.ip(), rec.port) {
            Ok(()) => true,
            Err(d) => {
                refusal.get_or_insert(d);
                false
            }
        });
    let Some(addr) = checked else {
        if let Some(d) = refusal {
            rec.decision = d;
        }
        return Err(Unreached::Denied);
    };
    rec.addr = Some(addr.to_string());
    // Connect to the address that was checked: no second resolution.
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => {
            rec.error = Some(format!("cannot connect to {addr}: {e}"));
            Err(Unreached::Failed)
        }
        Err(_) => {
            rec.error = Some(format!("cannot connect to {addr}: timed out"));
            Err(Unreached::Failed)
        }
    }
}

fn new_record(host: String, port: u16, protocol: Protocol, policy: &Policy) -> ConnRecord {
    ConnRecord {
        decision: policy.decide(&host, port),
        host,
        port,
        addr: None,
        protocol,
        error: None,
        credentials: Vec::new(),
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: 0,
    }
}

/// Serves one client connection.
async fn serve(client: TcpStream, shared: &Shared) -> Option<ConnRecord> {
    let (policy, resolver) = (&shared.policy, &shared.resolver);
    let started = Instant::now();
    let _ = client.set_nodelay(true);
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HEAD_TIMEOUT, client.peek(&mut first)).await;
    let mut rec = match peeked {
        Ok(Ok(1)) if first[0] == SOCKS5 => serve_socks(client, policy, resolver).await?,
        Ok(Ok(1)) => serve_http(client, shared).await?,
        _ => return None,
    };
    rec.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Some(rec)
}

async fn serve_http(mut client: TcpStream, shared: &Shared) -> Option<ConnRecord> {
    let (policy, resolver) = (&shared.policy, &shared.resolver);
    let injector = shared.injector.as_deref();
    let (buf, end) = read_request(&mut client).await?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    // read_request checked it parses.
    let _ = req.parse(&buf[..end]);
    let method = req.method.unwrap_or("").to_owned();
    let connect = method.eq_ignore_ascii_case("CONNECT");
    let target = match parse_target(connect, req.path.unwrap_or("")) {
        Ok(t) => t,
        Err(why) => {
            respond(&mut client, "400 Bad Request", None, why).await;
            return None;
        }
    };
    let protocol = if connect {
        Protocol::Connect
    } else {
        Protocol::Http
    };
    let mut rec = new_record(target.host.clone(), target.port, protocol, policy);
    // The forwarded head is built (and credential placeholders swapped or
    // refused) before anything is connected.
    let denied = matches!(rec.decision, Decision::Deny { .. });
    let head = if connect || denied {
        // A denied host is answered by `reach` with the policy's reason.
        None
    } else {
        match forward_head(&method, &target, req.headers, injector, &mut rec) {
            Ok(h) => Some(h),
            Err(why) => {
                refuse_credential(&mut client, &mut rec, why).await;
                return Some(rec);
            }
        }
    };
    let mut upstream = match reach(&mut rec, policy, resolver).await {
        Ok(s) => s,
        Err(Unreached::Denied) => {
            let why = deny_text(&rec.decision);
            respond(
                &mut client,
                "403 Forbidden",
                Some(&why),
                &format!(
                    "taskbox: egress to {}:{} denied by policy ({why})\n",
                    rec.host, rec.port
                ),
            )
            .await;
            return Some(rec);
        }
        Err(Unreached::Failed) => {
            let why = rec.error.as_deref().unwrap_or("unreachable");
            respond(
                &mut client,
                "502 Bad Gateway",
                None,
                &format!("taskbox proxy: {why}\n"),
            )
            .await;
            return Some(rec);
        }
    };
    match head {
        None => {
            if client
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await
                .is_err()
            {
                return Some(rec);
            }
            if let Some(tls) = &shared.interceptor
                && tls.covers(&rec.host, rec.port)
            {
                intercept(client, upstream, tls, injector, &mut rec).await;
                return Some(rec);
            }
        }
        Some(head) => {
            if upstream.write_all(head.as_bytes()).await.is_err() {
                return Some(rec);
            }
            rec.bytes_up += head.len() as u64;
        }
    }
    if end < buf.len() {
        let _ = upstream.write_all(&buf[end..]).await;
        rec.bytes_up += (buf.len() - end) as u64;
    }
    drop(buf);
    if let Ok((up, down)) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        rec.bytes_up += up;
        rec.bytes_down += down;
    }
    Some(rec)
}

/// A CONNECT tunnel to a host a header credential is bound to: terminate
/// the task's TLS with a leaf of the task CA, verify the real server,
/// forward one request with its placeholder swapped, then relay the rest.
async fn intercept(
    client: TcpStream,
    upstream: TcpStream,
    tls: &Interceptor,
    injector: Option<&dyn Injector>,
    rec: &mut ConnRecord,
) {
    let fail = |rec: &mut ConnRecord, why: String| rec.error = Some(why);
    let cfg = match tls.server_config(&rec.host) {
        Ok(c) => c,
        Err(e) => return fail(rec, e.to_string()),
    };
    let accepted = tokio::time::timeout(
        HEAD_TIMEOUT,
        tokio_rustls::TlsAcceptor::from(cfg).accept(client),
    )
    .await;
    let mut client = match accepted {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return fail(rec, format!("TLS from the task: {e}")),
        Err(_) => return fail(rec, "TLS from the task: timed out".into()),
    };
    let name = match Interceptor::server_name(&rec.host) {
        Ok(n) => n,
        Err(e) => return fail(rec, e.to_string()),
    };
    let connected =
        tokio::time::timeout(CONNECT_TIMEOUT, tls.connector().connect(name, upstream)).await;
    let mut upstream = match connected {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            respond(
                &mut client,
                "502 Bad Gateway",
                None,
                &format!(
                    "taskbox proxy: TLS to {} failed verification or setup: {e}\n",
                    rec.host
                ),
            )
            .await;
            return fail(rec, format!("TLS to the server: {e}"));
        }
        Err(_) => return fail(rec, "TLS to the server: timed out".into()),
    };
    let Some((buf, end)) = read_request(&mut client).await else {
        return;
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    // read_request checked it parses.
    let _ = req.parse(&buf[..end]);
    let target = Target {
        host: rec.host.clone(),
        port: rec.port,
        path: req.path.unwrap_or("/").to_owned(),
    };
    let method = req.method.unwrap_or("GET").to_owned();
    let head = match forward_head(&method, &target, req.headers, injector, rec) {
        Ok(h) => h,
        Err(why) => return refuse_credential(&mut client, rec, why).await,
    };
    if upstream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    rec.bytes_up += head.len() as u64;
    if end < buf.len() {
        let _ = upstream.write_all(&buf[end..]).await;
        rec.bytes_up += (buf.len() - end) as u64;
    }
    if let Ok((up, down)) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        rec.bytes_up += up;
        rec.bytes_down += down;
    }
}

async fn serve_socks(
    client: TcpStream,
    policy: &Policy,
    resolver: &Resolver,
) -> Option<ConnRecord> {
    let handshake = async {
        let proto = Socks5ServerProtocol::accept_no_auth(client).await.ok()?;
        proto.read_command().await.ok()
    };
    let (proto, cmd, target) = tokio::time::timeout(HEAD_TIMEOUT, handshake).await.ok()??;
    let (host, port) = match target {
        TargetAddr::Ip(sa) => (
            match sa.ip() {
                IpAddr::V6(v6) => format!("[{v6}]"),
                IpAddr::V4(v4) => v4.to_string(),
            },
            sa.port(),
        ),
        TargetAddr::Domain(h, p) => (h.to_ascii_lowercase(), p),
    };
    let mut rec = new_record(host, port, Protocol::Socks5, policy);
    if cmd != Socks5Command::TCPConnect {
        rec.decision = Decision::Deny {
            rule: None,
            reason: DenyReason::Unsupported(format!("SOCKS5 command {cmd:?}")),
        };
        let _ = proto.reply_error(&ReplyError::CommandNotSupported).await;
        return Some(rec);
    }
    let mut upstream = match reach(&mut rec, policy, resolver).await {
        Ok(s) => s,
        Err(Unreached::Denied) => {
            let _ = proto.reply_error(&ReplyError::ConnectionNotAllowed).await;
            return Some(rec);
        }
        Err(Unreached::Failed) => {
            let _ = proto.reply_error(&ReplyError::HostUnreachable).await;
            return Some(rec);
        }
    };
    let bound = upstream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let mut client = proto.reply_success(bound).await.ok()?;
    if let Ok((up, down)) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        rec.bytes_up += up;
        rec.bytes_down += down;
    }
    Some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16, path: &str) -> Result<Target, &'static str> {
        Ok(Target {
            host: host.into(),
            port,
            path: path.into(),
        })
    }

    struct Nothing;
    impl Recorder for Nothing {
        fn record(&self, _: &ConnRecord) {}
    }

    /// Threads of this process named `taskbox-proxy`, with their CPU time
    /// in clock ticks.
    fn proxy_threads() -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let dir = e.path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim() != "taskbox-proxy" {
                continue;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
            // utime and stime: fields 14 and 15, the 12th and 13th after the name.
            let ticks: u64 = stat
                .rsplit_once(')')
                .map(|(_, rest)| {
                    rest.split_whitespace()
                        .skip(11)
                        .take(2)
                        .filter_map(|f| f.parse::<u64>().ok())
                        .sum()
                })
                .unwrap_or(0);
            out.push((e.file_name().to_string_lossy().into_owned(), ticks));
        }
        out
    }

    #[test]
    fn the_proxy_thread_sleeps_when_nothing_happens() {
        use std::io::{Read as _, Write as _};
        let before: Vec<String> = proxy_threads().into_iter().map(|(t, _)| t).collect();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = start(
            l,
            Policy::new(&[], &[]),
            Resolver::default(),
            None,
            Box::new(Nothing),
        )
        .unwrap();
        // Wake it: a request it refuses.
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"GET /relative HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        let ticks = || {
            proxy_threads()
                .into_iter()
                .find(|(t, _)| !before.contains(t))
                .map(|(_, ticks)| ticks)
                .unwrap()
        };
        std::thread::sleep(Duration::from_millis(50));
        let t0 = ticks();
        std::thread::sleep(Duration::from_millis(500));
        let used = ticks() - t0;
        h.stop();
        // A thread that kept polling would have used ~50 ticks (100 Hz).
        assert!(
            used <= 5,
            "the idle proxy thread used {used} ticks of CPU in 0.5 s"
        );
    }

    #[test]
    fn connect_targets_need_a_port() {
        assert_eq!(
            parse_target(true, "Example.COM:443"),
            t("example.com", 443, "")
        );
        assert_eq!(parse_target(true, "[::1]:8443"), t("[::1]", 8443, ""));
        assert!(parse_target(true, "example.com").is_err());
        assert!(parse_target(true, "example.com:https").is_err());
        assert!(parse_target(true, ":443").is_err());
        assert!(parse_target(true, "[::1]").is_err());
    }

    #[test]
    fn absolute_urls_default_to_port_80_and_keep_the_path() {
        assert_eq!(
            parse_target(false, "http://a.test/x?y=1"),
            t("a.test", 80, "/x?y=1")
        );
        assert_eq!(
            parse_target(false, "HTTP://a.test:8080"),
            t("a.test", 8080, "/")
        );
        assert_eq!(
            parse_target(false, "http://a.test?q"),
            t("a.test", 80, "/?q")
        );
        assert_eq!(parse_target(false, "http://[::1]/"), t("[::1]", 80, "/"));
        assert!(parse_target(false, "/relative").is_err());
        assert!(parse_target(false, "https://a.test/").is_err());
        // userinfo could smuggle a different host past a naive parser
        assert!(parse_target(false, "http://allowed.test@evil.test/").is_err());
        assert!(parse_target(false, "http://a.test:99999/").is_err());
    }
}
