//! wshttp: an HTTP GET over `wasi:http` (a wasm32-wasip2 component), for
//! taskbox's WASM backend. `wshttp http://HOST[:PORT]/PATH` prints the body
//! (exit 0 on 2xx, 1 otherwise, the status or error on stderr); a request
//! taskbox's egress policy refuses is the error `HttpRequestDenied`.

use std::io::Write as _;
use std::process::ExitCode;

use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

fn get(url: &str) -> Result<(u16, Vec<u8>), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get).map_err(|()| "bad method")?;
    req.set_scheme(Some(&Scheme::Http)).map_err(|()| "bad scheme")?;
    req.set_authority(Some(authority)).map_err(|()| "bad authority")?;
    req.set_path_with_query(Some(path)).map_err(|()| "bad path")?;
    let fut = outgoing_handler::handle(req, None).map_err(|e| describe(&e))?;
    fut.subscribe().block();
    let resp = fut
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice")?
        .map_err(|e| describe(&e))?;
    let status = resp.status();
    let body = resp.consume().map_err(|()| "no body")?;
    let stream = body.stream().map_err(|()| "no body stream")?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => out.extend(chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => return Err(e.to_debug_string()),
        }
    }
    Ok((status, out))
}

fn describe(e: &ErrorCode) -> String {
    match e {
        ErrorCode::HttpRequestDenied => "denied: HttpRequestDenied".to_owned(),
        other => format!("{other:?}"),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url] = args.as_slice() else {
        eprintln!("usage: wshttp http://HOST[:PORT]/PATH");
        return ExitCode::from(2);
    };
    match get(url) {
        Ok((status, body)) => {
            let _ = std::io::stdout().write_all(&body);
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("wshttp: status {status}");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("wshttp: {e}");
            ExitCode::from(1)
        }
    }
}
