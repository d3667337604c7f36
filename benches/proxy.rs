//! Egress proxy benchmark: 1,000 sequential small HTTP requests to a
//! loopback server, direct and through taskbox's proxy (plain forwarding and
//! a CONNECT tunnel), in the same run; the added connection latency; and the
//! proxy's memory with 100 concurrent connections.
//!
//! `cargo bench --bench proxy`. `TASKBOX_BENCH_N` sets the request count
//! (default 1000). The proxy runs in this process exactly as the runner runs
//! it, audit records included (to a temporary log).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark driver")]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use taskbox::audit::{AuditEvent, Sink, Writer};
use taskbox::proxy::{self, ConnRecord, Policy, Recorder, Resolver};

const BODY: &[u8] = b"hello";
/// How long the upstream takes to answer `/slow`, like a remote server.
const SLOW: Duration = Duration::from_millis(5);

/// A keep-alive HTTP/1.1 server on loopback, a thread per connection, in a
/// child process (this binary again) so the proxy's memory is measured alone.
/// Returns the child (it exits when its stdin closes) and its port.
fn upstream() -> (std::process::Child, u16) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("TASKBOX_BENCH_UPSTREAM", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    (child, line.trim().parse().unwrap())
}

/// The upstream server's process: serves until stdin closes.
fn serve_upstream() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("{}", l.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    buf.drain(..end + 4);
                    let close = head.contains("connection: close");
                    if head.starts_with("get /slow") {
                        std::thread::sleep(SLOW);
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{}\r\n",
                        BODY.len(),
                        if close { "Connection: close\r\n" } else { "" }
                    );
                    let mut out = resp.into_bytes();
                    out.extend_from_slice(BODY);
                    if s.write_all(&out).is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    let _ = std::io::stdin().read(&mut [0u8; 1]);
}

/// Reads one response (head + `Content-Length: 5` body) from `s`.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n")
            && buf.len() >= end + 4 + BODY.len()
        {
            buf.drain(..end + 4 + BODY.len());
            return;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct Audit(std::sync::mpsc::Sender<AuditEvent>);

impl Recorder for Audit {
    fn record(&self, rec: &ConnRecord) {
        let _ = self.0.send(AuditEvent::Connection {
            task: "bench".into(),
            connection: serde_json::to_value(rec).unwrap_or_default(),
        });
    }
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time (ns) of this process's `taskbox-proxy` thread so far, from its
/// schedstat.
fn proxy_cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim() == "taskbox-proxy")
        })
        .filter_map(|e| {
            std::fs::read_to_string(e.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn main() {
    if std::env::var_os("TASKBOX_BENCH_UPSTREAM").is_some() {
        return serve_upstream();
    }
    let n: usize = std::env::var("TASKBOX_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let (mut child, up) = upstream();
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let px = listener.local_addr().unwrap().port();
    let policy = Policy::new(&[format!("127.0.0.1:{up}")], &[]);
    let writer = Writer::spawn(Sink::new(dir.path().join("audit.log"))).unwrap();
    let handle = proxy::start(
        listener,
        policy,
        Resolver::default(),
        None,
        Box::new(Audit(writer.sender())),
    )
    .unwrap();
    let rss_before = rss_kib();
    println!("taskbox proxy benchmark: {n} sequential requests per case, same run");

    // New connection per request: direct vs plain-HTTP forwarding.
    let one = |port: u16, target: &str| {
        let t = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        read_response(&mut s, &mut Vec::new());
        t.elapsed()
    };
    let abs = format!("http://127.0.0.1:{up}/");
    for _ in 0..n / 10 {
        one(up, "/");
        one(px, &abs);
    }
    // Interleaved, one of each in turn (order alternating), so that the
    // VM's slow and fast minutes fall on both alike.
    let (mut direct, mut proxied) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let cpu0 = proxy_cpu_ns();
    for i in 0..n {
        if i % 2 == 0 {
            direct.push(one(up, "/"));
            proxied.push(one(px, &abs));
        } else {
            proxied.push(one(px, &abs));
            direct.push(one(up, "/"));
        }
    }
    let proxy_cpu = proxy_cpu_ns() - cpu0;
    let direct_total: Duration = direct.iter().sum();
    let proxied_total: Duration = proxied.iter().sum();
    let (dm, dp) = stats(direct);
    let (pm, pp) = stats(proxied);
    println!(
        "new connection per request   direct {:>7.1} ms total ({dm:.0} µs median, {dp:.0} µs p99)",
        direct_total.as_secs_f64() * 1e3
    );
    println!(
        "  through the proxy (http)   {:>7.1} ms total ({pm:.0} µs median, {pp:.0} µs p99) | x{:.2} direct, +{:.0} µs median per connection",
        proxied_total.as_secs_f64() * 1e3,
        proxied_total.as_secs_f64() / direct_total.as_secs_f64(),
        pm - dm
    );
    println!(
        "  the proxy's thread on CPU  {:>7.1} µs per connection (relaying and keeping awake)",
        proxy_cpu as f64 / 1e3 / n as f64
    );

    // Against a server that answers after SLOW, the proxy's thread should
    // stop keeping itself awake: its CPU per connection is then about what
    // relaying alone costs.
    let slow = format!("http://127.0.0.1:{up}/slow");
    let m = (n / 10).max(1);
    let cpu_slow = proxy_cpu_ns();
    let slow_total: Duration = (0..m).map(|_| one(px, &slow)).sum();
    let cpu_slow = proxy_cpu_ns() - cpu_slow;
    println!(
        "  against a server answering after {} ms: {:.1} µs CPU per connection ({m} connections, {:.2} ms each)",
        SLOW.as_millis(),
        cpu_slow as f64 / 1e3 / m as f64,
        slow_total.as_secs_f64() * 1e3 / m as f64
    );

    // One keep-alive connection each: direct, and inside one CONNECT
    // tunnel; a request on each in turn.
    let direct_conn = TcpStream::connect(("127.0.0.1", up)).unwrap();
    let mut tunnel = TcpStream::connect(("127.0.0.1", px)).unwrap();
    tunnel
        .write_all(format!("CONNECT 127.0.0.1:{up} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut b = [0u8; 39];
    tunnel.read_exact(&mut b).unwrap();
    assert!(
        b.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&b)
    );
    let mut conns = [(direct_conn, Vec::new()), (tunnel, Vec::new())];
    let mut spent = [Duration::ZERO; 2];
    let cpu1 = proxy_cpu_ns();
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    for (s, _) in &conns {
        s.set_nodelay(true).unwrap();
    }
    for i in 0..n + n / 10 {
        for k in [i % 2, 1 - i % 2] {
            let (s, buf) = &mut conns[k];
            let t = Instant::now();
            s.write_all(req).unwrap();
            read_response(s, buf);
            if i >= n / 10 {
                spent[k] += t.elapsed();
            }
        }
    }
    let [direct_ka, tunneled] = spent;
    let ka_cpu = proxy_cpu_ns() - cpu1;
    println!(
        "keep-alive connection        direct {:>7.1} ms total",
        direct_ka.as_secs_f64() * 1e3
    );
    println!(
        "  through a CONNECT tunnel   {:>7.1} ms total | x{:.2} direct",
        tunneled.as_secs_f64() * 1e3,
        tunneled.as_secs_f64() / direct_ka.as_secs_f64()
    );
    println!(
        "  the proxy's thread on CPU  {:>7.1} µs per request",
        ka_cpu as f64 / 1e3 / (n + n / 10) as f64
    );

    // Memory with 100 concurrent open tunnels.
    let mut open = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(("127.0.0.1", px)).unwrap();
        s.write_all(format!("CONNECT 127.0.0.1:{up} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut b = [0u8; 39];
        s.read_exact(&mut b).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        read_response(&mut s, &mut Vec::new());
        open.push(s);
    }
    let rss_with = rss_kib();
    println!(
        "100 concurrent tunnels: proxy process RSS {rss_with} KiB ({} KiB more than idle)",
        rss_with.saturating_sub(rss_before)
    );
    drop(open);
    let recs = handle.stop();
    writer.finish().unwrap();
    println!("connections served and audited: {}", recs.len());
    drop(child.stdin.take());
    let _ = child.wait();
}
