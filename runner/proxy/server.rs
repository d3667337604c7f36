//! The proxy's I/O: HTTP CONNECT (TLS passes through untouched) and
//! plain-HTTP forwarding on a listener that lives in the task's own network
//! namespace. It resolves names itself, checks the addresses, and connects to
//! the address it checked.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::policy::{Decision, DenyReason, Policy};

/// Largest request head accepted (request line + headers).
const MAX_HEAD: usize = 16 * 1024;
/// A client must send its whole head within this (slow-loris guard).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Upstream connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once per task; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;

/// One connection, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnRecord {
    /// Requested host.
    pub host: String,
    /// Requested port.
    pub port: u16,
    /// The address connected to (after the check), if any.
    pub addr: Option<String>,
    /// `connect` or `http`.
    pub protocol: String,
    /// The verdict.
    pub decision: Decision,
    /// Bytes from the task to the server.
    pub bytes_up: u64,
    /// Bytes from the server to the task.
    pub bytes_down: u64,
    /// Milliseconds the connection lasted.
    pub duration_ms: u64,
}

/// How names resolve: the system resolver, or (tests only) a fixed map that
/// stands in for DNS. The address checks apply to either.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    fixed: Vec<(String, IpAddr)>,
}

impl Resolver {
    /// The system resolver, unless `spec` (`name=ip,name=ip`) maps names.
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
        let fixed: Vec<SocketAddr> = self
            .fixed
            .iter()
            .filter(|(n, _)| n == host)
            .map(|(_, ip)| SocketAddr::new(*ip, port))
            .collect();
        if !fixed.is_empty() || !self.fixed.is_empty() {
            return fixed;
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

/// Serves `listener` (in the task's network namespace) on a thread of its own.
///
/// # Errors
/// When the runtime or the listener cannot be set up.
pub fn start(
    listener: std::net::TcpListener,
    policy: Policy,
    resolver: Resolver,
) -> std::io::Result<ProxyHandle> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let records = Arc::new(Mutex::new(Vec::new()));
    let recs = Arc::clone(&records);
    let thread = std::thread::Builder::new().name("taskbox-proxy".into()).spawn(move || {
        rt.block_on(async move {
            let Ok(listener) = TcpListener::from_std(listener) else { return };
            let policy = Arc::new(policy);
            let resolver = Arc::new(resolver);
            let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { break };
                        let (p, r, recs) = (Arc::clone(&policy), Arc::clone(&resolver), Arc::clone(&recs));
                        tasks.spawn(async move {
                            if let Some(rec) = serve(stream, &p, &r).await
                                && let Ok(mut v) = recs.lock()
                            {
                                v.push(rec);
                            }
                            drop(permit);
                        });
                    }
                }
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

/// Reads a request head; `None` on timeout, overflow or a closed connection.
async fn read_head(stream: &mut TcpStream) -> Option<(Vec<u8>, usize)> {
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

async fn respond(stream: &mut TcpStream, status: &str, denied: Option<&str>, body: &str) {
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

/// Serves one client connection.
async fn serve(mut client: TcpStream, policy: &Policy, resolver: &Resolver) -> Option<ConnRecord> {
    let started = Instant::now();
    let Some((buf, end)) = read_head(&mut client).await else {
        respond(
            &mut client,
            "400 Bad Request",
            None,
            "taskbox proxy: malformed, oversized or too slow request\n",
        )
        .await;
        return None;
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(&buf[..end]), Ok(httparse::Status::Complete(_))) {
        respond(
            &mut client,
            "400 Bad Request",
            None,
            "taskbox proxy: malformed request\n",
        )
        .await;
        return None;
    }
    let method = req.method.unwrap_or("").to_owned();
    let target = req.path.unwrap_or("").to_owned();
    let connect = method.eq_ignore_ascii_case("CONNECT");
    let (host, port, origin_path) = if connect {
        let (h, p) = target.rsplit_once(':')?;
        (h.to_ascii_lowercase(), p.parse().ok()?, String::new())
    } else {
        let Some(rest) = target.strip_prefix("http://") else {
            respond(
                &mut client,
                "400 Bad Request",
                None,
                "taskbox proxy: only absolute http:// URLs and CONNECT are proxied\n",
            )
            .await;
            return None;
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (h, p) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                (h, p.parse().unwrap_or(80))
            }
            _ => (authority, 80),
        };
        (
            h.to_ascii_lowercase(),
            p,
            if path.is_empty() {
                "/".to_owned()
            } else {
                path.to_owned()
            },
        )
    };
    let mut rec = ConnRecord {
        host: host.clone(),
        port,
        addr: None,
        protocol: if connect { "connect" } else { "http" }.into(),
        decision: policy.decide(&host, port),
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: 0,
    };
    let finish = |mut r: ConnRecord| {
        r.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Some(r)
    };
    if let Decision::Deny { .. } = &rec.decision {
        let why = deny_text(&rec.decision);
        respond(
            &mut client,
            "403 Forbidden",
            Some(&why),
            &format!("taskbox: egress to {host}:{port} denied by policy ({why})\n"),
        )
        .await;
        return finish(rec);
    }
    let addrs = resolver.resolve(&host, port).await;
    let mut refusal = None;
    let checked: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| match policy.check_addr(a.ip(), port) {
            Ok(()) => true,
            Err(d) => {
                refusal = Some(d);
                false
            }
        })
        .collect();
    let Some(addr) = checked.first().copied() else {
        rec.decision = refusal.unwrap_or(Decision::Deny {
            rule: None,
            reason: DenyReason::PrivateAddress(format!("{host} did not resolve")),
        });
        let why = deny_text(&rec.decision);
        respond(
            &mut client,
            "403 Forbidden",
            Some(&why),
            &format!("taskbox: egress to {host}:{port} denied by policy ({why})\n"),
        )
        .await;
        return finish(rec);
    };
    rec.addr = Some(addr.to_string());
    // Connect to the address that was checked: no second resolution.
    let Ok(Ok(mut upstream)) =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
    else {
        respond(
            &mut client,
            "502 Bad Gateway",
            None,
            &format!("taskbox proxy: cannot connect to {addr}\n"),
        )
        .await;
        return finish(rec);
    };
    if connect {
        if client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
        {
            return finish(rec);
        }
    } else {
        let mut head = format!("{method} {origin_path} HTTP/1.1\r\n");
        for h in req.headers.iter() {
            let name = h.name.to_ascii_lowercase();
            if name.starts_with("proxy-") || name == "connection" {
                continue;
            }
            head.push_str(h.name);
            head.push_str(": ");
            head.push_str(&String::from_utf8_lossy(h.value));
            head.push_str("\r\n");
        }
        head.push_str("Connection: close\r\n\r\n");
        if upstream.write_all(head.as_bytes()).await.is_err() {
            return finish(rec);
        }
        rec.bytes_up += head.len() as u64;
    }
    if end < buf.len() {
        let _ = upstream.write_all(&buf[end..]).await;
        rec.bytes_up += (buf.len() - end) as u64;
    }
    if let Ok((up, down)) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        rec.bytes_up += up;
        rec.bytes_down += down;
    }
    finish(rec)
}
