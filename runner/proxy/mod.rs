//! Egress by name: a per-task proxy whose listener lives in the task's own
//! network namespace, deciding each connection with a pure `decide()` over
//! the profile's allow/deny lists.
//!
//! Owns the decision and the proxy I/O. Refuses everything not allowed, and
//! special-purpose addresses (loopback, private, link-local, metadata) unless
//! a literal entry names them.

mod policy;
mod server;

pub use policy::{Decision, DenyReason, HostPattern, Policy, special};
pub use server::{ConnRecord, ProxyHandle, Resolver, start};

/// Environment that points the task's tools at the proxy on `port`.
pub fn proxy_env(port: u16) -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{port}");
    let mut v = Vec::new();
    for k in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        v.push((k.to_owned(), url.clone()));
    }
    // Nothing goes around the proxy: the namespace has no other way out anyway.
    v.push(("NO_PROXY".into(), String::new()));
    v.push(("no_proxy".into(), String::new()));
    // Node's fetch ignores HTTP(S)_PROXY without this; the JVM reads its own properties.
    v.push(("NODE_USE_ENV_PROXY".into(), "1".into()));
    v.push((
        "JAVA_TOOL_OPTIONS".into(),
        format!("-Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort={port} -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort={port}"),
    ));
    v
}
