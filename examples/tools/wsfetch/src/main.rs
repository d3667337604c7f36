//! wsfetch: fetches an `http://` URL through taskbox's egress proxy, for
//! taskbox's WASM backend (a wasm32-wasip2 component: it needs sockets).
//! `wsfetch URL` prints the body (exit 0 on 2xx, 1 otherwise, with the
//! status line on stderr). The proxy's address comes from `TASKBOX_PROXY`;
//! the backend lets the guest connect there and nowhere else, and the proxy
//! decides by the profile's allow-list, so a host not allowed gets
//! taskbox's 403. `wsfetch --direct HOST:PORT` tries a direct connection
//! instead (to show that it is refused).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::ExitCode;

fn fetch(url: &str) -> Result<(String, Vec<u8>), String> {
    if !url.starts_with("http://") {
        return Err(format!("{url}: only http:// URLs (https goes through CONNECT, not done here)"));
    }
    let proxy = std::env::var("TASKBOX_PROXY")
        .map_err(|_| "TASKBOX_PROXY is not set: the profile's network mode is not `proxy`".to_owned())?;
    let mut s = TcpStream::connect(&proxy).map_err(|e| format!("connect to the proxy {proxy}: {e}"))?;
    let host = url["http://".len()..].split('/').next().unwrap_or("");
    let req = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wsfetch\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("malformed response")?;
    let head = String::from_utf8_lossy(&resp[..end]).into_owned();
    let status = head.lines().next().unwrap_or("").to_owned();
    Ok((status, resp[end + 4..].to_vec()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, addr] if flag == "--direct" => match TcpStream::connect(addr) {
            Ok(_) => {
                println!("wsfetch: connected directly to {addr}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wsfetch: direct connection to {addr} refused: {e}");
                ExitCode::from(1)
            }
        },
        [url] => match fetch(url) {
            Ok((status, body)) => {
                let _ = std::io::stdout().write_all(&body);
                if status.split_whitespace().nth(1).is_some_and(|c| c.starts_with('2')) {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("wsfetch: {status}");
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("wsfetch: {e}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("usage: wsfetch URL | wsfetch --direct HOST:PORT");
            ExitCode::from(2)
        }
    }
}
