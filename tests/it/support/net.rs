//! Loopback servers for the tests (127.0.0.1 only, each stops by itself
//! after 30 s): a plain HTTP server answering by path, and an HTTPS one with
//! a certificate from a throwaway test CA. Both keep what they received.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A loopback server that counts and keeps the request heads it saw.
pub struct Server {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Requests seen.
    pub hits: Arc<AtomicUsize>,
    /// Their heads, in order.
    pub heads: Arc<Mutex<Vec<String>>>,
}

/// Reads up to the end of a request head (or EOF, or the read timeout).
pub fn read_head(s: &mut impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// Accepts loopback connections for 30 s and hands each to `serve`.
fn accept_loop(l: TcpListener, mut serve: impl FnMut(TcpStream) + Send + 'static) {
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            let Ok((s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            serve(s);
        }
    });
}

/// Serves each request's path with `answer` (one request per connection).
pub fn http_server(answer: impl Fn(&str) -> Vec<u8> + Send + 'static) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (h, hd) = (Arc::clone(&hits), Arc::clone(&heads));
    accept_loop(l, move |mut s| {
        let head = String::from_utf8_lossy(&read_head(&mut s)).into_owned();
        let Some(path) = head.split_whitespace().nth(1).map(str::to_owned) else {
            return;
        };
        h.fetch_add(1, Ordering::SeqCst);
        hd.lock().unwrap().push(head);
        let _ = s.write_all(&answer(&path));
    });
    Server { port, hits, heads }
}

/// An HTTPS server for `name`, its certificate signed by a fresh test CA
/// (returned as PEM); answers `secure`.
pub fn https_server(name: &str) -> (Server, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (h, hd) = (Arc::clone(&hits), Arc::clone(&heads));
    accept_loop(l, move |s| {
        let conn = rustls::ServerConnection::new(Arc::clone(&cfg)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, s);
        let buf = read_head(&mut tls);
        if buf.is_empty() {
            return;
        }
        h.fetch_add(1, Ordering::SeqCst);
        hd.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&buf).into_owned());
        let _ = tls.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nsecure\n",
        );
        tls.conn.send_close_notify();
        let _ = tls.flush();
    });
    (Server { port, hits, heads }, ca.pem())
}
