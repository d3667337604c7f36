//! Egress by name: a per-task proxy whose listener lives in the task's own
//! network namespace, deciding each connection with a pure `decide()` over
//! the profile's allow/deny lists.
//!
//! Owns the decision and the proxy I/O. Refuses everything not allowed, and
//! special-purpose addresses (loopback, private, link-local, metadata) unless
//! a literal entry names them.

mod awake;
mod policy;
mod server;
mod tls;

pub use policy::{Decision, DenyReason, HostPattern, Policy, special};
pub use server::{ConnRecord, Inject, Protocol, ProxyHandle, Recorder, Resolver, start};
pub use tls::{Interceptor, TlsError};

/// What to do with one piece of a request (a header value, the target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injection {
    /// Send it as it is.
    Keep,
    /// Send this instead (placeholders swapped for their values).
    Replace {
        /// The new text.
        text: String,
        /// The grants whose values it now carries.
        grants: Vec<String>,
    },
    /// Refuse the whole request.
    Refuse {
        /// The grant whose placeholder it carried.
        grant: String,
        /// Why, for the task and the audit log.
        why: String,
    },
}

/// Swaps credential placeholders for their values in requests to the hosts
/// a grant names; declared here, implemented by `credentials`.
pub trait Injector: Send + Sync {
    /// Looks at `text`, part of a request to `host:port`.
    fn inject(&self, host: &str, port: u16, text: &str) -> Injection;
}

/// Environment that points the task's tools at the proxy on `port`: HTTP(S)
/// through it as an HTTP proxy, everything else (`ALL_PROXY`) as SOCKS5 with
/// names resolved by the proxy. `allow` is the profile's allow list.
pub fn proxy_env(port: u16, allow: &[String]) -> Vec<(String, String)> {
    let http = format!("http://127.0.0.1:{port}");
    let socks = format!("socks5h://127.0.0.1:{port}");
    let mut v = Vec::new();
    for (k, url) in [
        ("HTTP_PROXY", &http),
        ("HTTPS_PROXY", &http),
        ("ALL_PROXY", &socks),
    ] {
        v.push((k.to_owned(), url.clone()));
        v.push((k.to_ascii_lowercase(), url.clone()));
    }
    // Loopback here is the task's own (its network namespace), so talking to
    // a server the task started itself needs no proxy and reaches nothing of
    // the host's; private ranges have no route at all. Nothing else bypasses.
    // When the profile allows a loopback service of the host, loopback goes
    // through the proxy instead, or that service could not be reached.
    let host_loopback = allow
        .iter()
        .filter_map(|a| HostPattern::parse(a))
        .any(|p| p.is_loopback_literal());
    let local = if host_loopback {
        String::new()
    } else {
        "localhost,127.0.0.1,::1".to_owned()
    };
    v.push(("NO_PROXY".into(), local.clone()));
    v.push(("no_proxy".into(), local));
    // For scripts and ssh's ProxyCommand (`nc -X 5 -x $TASKBOX_PROXY %h %p`).
    v.push(("TASKBOX_PROXY".into(), format!("127.0.0.1:{port}")));
    // Node's fetch ignores HTTP(S)_PROXY without this; the JVM reads its own properties.
    v.push(("NODE_USE_ENV_PROXY".into(), "1".into()));
    v.push((
        "JAVA_TOOL_OPTIONS".into(),
        format!(
            "-Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort={port} \
             -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort={port} \
             -Dhttp.nonProxyHosts=localhost|127.0.0.1"
        ),
    ));
    v
}
