//! Credentials as task-scoped leases. Owns reading a grant's source (the
//! runner's environment, a file, a command run outside the sandbox), the
//! `Secret` that holds a value, per-task placeholders, the lease clock, the
//! proxy's injector, and redaction of every granted value (and its base64
//! and URL-encoded forms) from output, summaries and the audit log.
//!
//! Refuses: a missing or empty source (before anything runs), a placeholder
//! sent to a host its grant does not name, injection after a lease ends.

mod redact;
mod source;
mod token;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::profile::{Delivery, Grant};
use crate::proxy::{HostPattern, Injection, Injector};

pub use redact::{RedactWriter, Redactor};
pub use source::fetch;
pub use token::{Claims, Keys, TokenError};

/// A credential's value. No `Display`, no `Serialize`; `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// Wraps a value read from a source.
    pub fn new(v: String) -> Self {
        Self(v)
    }

    /// The value, for the one place that must send it (the proxy, the
    /// task's environment or file).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short fingerprint for the audit log: the first 12 hex digits of
    /// its sha-256. Never the value.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))[..12].to_owned()
    }
}

/// Why a credential could not be granted or used.
#[derive(Debug, thiserror::Error)]
pub enum CredError {
    /// The source is missing or empty.
    #[error(
        "credential `{name}`: its source {from} is missing or empty. Hint: set it, or remove the grant from the profile"
    )]
    Missing {
        /// Grant name.
        name: String,
        /// The source as written.
        from: String,
    },
    /// The source could not be read.
    #[error("credential `{name}`: cannot read {from}")]
    Read {
        /// Grant name.
        name: String,
        /// The source as written.
        from: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The source command failed or timed out.
    #[error("credential `{name}`: the command in {from} {why}")]
    Command {
        /// Grant name.
        name: String,
        /// The source as written.
        from: String,
        /// What went wrong.
        why: String,
    },
    /// A header grant without the egress proxy has no way to be injected.
    #[error(
        "credential `{name}` is delivered as a header, which needs `[network] mode = \"proxy\"`"
    )]
    NeedsProxy {
        /// Grant name.
        name: String,
    },
}

/// One granted credential for one task.
#[derive(Debug)]
pub struct Lease {
    /// Grant name.
    pub name: String,
    /// The value.
    pub secret: Secret,
    /// How the task gets it.
    pub deliver: Delivery,
    /// Hosts a header grant may be sent to.
    pub to: Vec<String>,
    /// What the task sees instead of the value (header grants).
    pub placeholder: Option<String>,
    /// When the lease ends.
    pub expires: Option<Instant>,
    /// The lease length as granted.
    pub ttl: Option<Duration>,
}

/// Variable name a header grant's placeholder goes in: the source variable
/// for `env:` sources, else the grant name upper-cased.
pub fn placeholder_var(g: &Grant) -> String {
    match g.from.strip_prefix("env:") {
        Some(v) => v.to_owned(),
        None => crate::profile::env_name(&g.name),
    }
}

/// Reads every grant's source and makes the task's leases, starting their
/// clocks now.
///
/// # Errors
/// The first grant whose source is missing, empty or failing.
pub fn grant_all(
    grants: &[Grant],
    env: &[(String, String)],
    home: &Path,
    task: &str,
) -> Result<Vec<Lease>, CredError> {
    let now = Instant::now();
    grants
        .iter()
        .map(|g| {
            let secret = fetch(g, env, home)?;
            // Unguessable and unique per task and grant (80 random bits).
            let placeholder = (g.deliver == Delivery::Header).then(|| {
                format!(
                    "taskbox-placeholder-{}-{}-{}",
                    g.name,
                    task,
                    ulid::Ulid::generate().random()
                )
            });
            Ok(Lease {
                name: g.name.clone(),
                secret,
                deliver: g.deliver.clone(),
                to: g.to.clone(),
                placeholder,
                expires: g.ttl.map(|t| now + t),
                ttl: g.ttl,
            })
        })
        .collect()
}

/// The proxy's view of the header grants: swaps a placeholder for its value
/// in requests to the grant's hosts while the lease lasts, and refuses it
/// anywhere else.
pub struct Broker {
    grants: Vec<HeaderGrant>,
    used: Mutex<Vec<(String, String)>>,
}

/// What the broker keeps of one header grant.
struct HeaderGrant {
    name: String,
    placeholder: String,
    secret: Secret,
    hosts: Vec<HostPattern>,
    expires: Option<Instant>,
}

impl Broker {
    /// From the task's header leases.
    pub fn new(leases: &[Lease]) -> Self {
        let grants = leases
            .iter()
            .filter_map(|l| {
                let p = l.placeholder.clone()?;
                let hosts = l.to.iter().filter_map(|h| HostPattern::parse(h)).collect();
                Some(HeaderGrant {
                    name: l.name.clone(),
                    placeholder: p,
                    secret: l.secret.clone(),
                    hosts,
                    expires: l.expires,
                })
            })
            .collect();
        Self {
            grants,
            used: Mutex::new(Vec::new()),
        }
    }

    /// Whether any header grant exists (so the proxy must look at requests).
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// (grant, host) pairs the proxy injected for, first use each.
    pub fn used(&self) -> Vec<(String, String)> {
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Injector for Broker {
    fn inject(&self, host: &str, port: u16, text: &str) -> Injection {
        let mut out = None::<String>;
        let mut injected = Vec::new();
        for HeaderGrant {
            name,
            placeholder,
            secret,
            hosts,
            expires,
        } in &self.grants
        {
            let cur = out.as_deref().unwrap_or(text);
            if !cur.contains(placeholder.as_str()) {
                continue;
            }
            if !hosts.iter().any(|h| h.matches(host, port)) {
                return Injection::Refuse {
                    grant: name.clone(),
                    why: format!("{host} is not a host credential `{name}` may be sent to"),
                };
            }
            if expires.is_some_and(|e| Instant::now() >= e) {
                return Injection::Refuse {
                    grant: name.clone(),
                    why: format!("the lease of credential `{name}` has ended"),
                };
            }
            out = Some(cur.replace(placeholder.as_str(), secret.expose()));
            injected.push(name.clone());
            let mut used = self
                .used
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = (name.clone(), host.to_owned());
            if !used.contains(&key) {
                used.push(key);
            }
        }
        match out {
            Some(text) => Injection::Replace {
                text,
                grants: injected,
            },
            None => Injection::Keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ttl: Option<Duration>, expires: Option<Instant>) -> Lease {
        Lease {
            name: "api".into(),
            secret: Secret::new("real-value".into()),
            deliver: Delivery::Header,
            to: vec!["api.test".into()],
            placeholder: Some("taskbox-placeholder-api-x".into()),
            expires,
            ttl,
        }
    }

    #[test]
    fn the_broker_injects_for_its_hosts_only_and_only_while_the_lease_lasts() {
        let b = Broker::new(&[lease(None, None)]);
        assert_eq!(
            b.inject("api.test", 443, "Bearer taskbox-placeholder-api-x"),
            Injection::Replace {
                text: "Bearer real-value".into(),
                grants: vec!["api".into()]
            }
        );
        assert!(matches!(
            b.inject("evil.test", 443, "Bearer taskbox-placeholder-api-x"),
            Injection::Refuse { .. }
        ));
        assert_eq!(
            b.inject("evil.test", 443, "no placeholder"),
            Injection::Keep
        );
        assert_eq!(b.used(), vec![("api".to_owned(), "api.test".to_owned())]);
        let ended = Broker::new(&[lease(
            Some(Duration::from_millis(1)),
            Some(Instant::now() - Duration::from_millis(1)),
        )]);
        assert!(matches!(
            ended.inject("api.test", 443, "Bearer taskbox-placeholder-api-x"),
            Injection::Refuse { why, .. } if why.contains("lease")
        ));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.fingerprint().len(), 12);
    }
}
