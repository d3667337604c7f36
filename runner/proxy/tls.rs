//! TLS interception for exactly the hosts a header credential is bound to:
//! a per-task CA (its key never leaves the runner) signs a leaf for each such
//! host on first use; the proxy terminates the task's TLS with it, swaps the
//! placeholder in the decrypted request, and opens its own verified TLS
//! connection upstream. Every other host stays untouched pass-through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use super::policy::HostPattern;

/// Why interception could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation failed.
    #[error("cannot make the task's TLS interception certificate: {0}")]
    Cert(String),
    /// A rustls configuration was refused.
    #[error("cannot configure TLS: {0}")]
    Config(String),
}

/// The task's interception authority and the upstream trust store.
pub struct Interceptor {
    ca: CertifiedIssuer<'static, KeyPair>,
    hosts: Vec<HostPattern>,
    upstream: Arc<rustls::ClientConfig>,
    leaves: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interceptor")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Interceptor {
    /// A fresh CA for one task, intercepting `hosts` (the header grants'
    /// `to`). Upstream certificates are verified against the system roots,
    /// plus `extra_roots_pem` (tests name their loopback CA here).
    ///
    /// # Errors
    /// When the CA cannot be made or no trust store can be built.
    pub fn new(hosts: &[String], extra_roots_pem: Option<&str>) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(|e| TlsError::Cert(e.to_string()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| TlsError::Cert(e.to_string()))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, "taskbox per-task interception CA");
        let ca =
            CertifiedIssuer::self_signed(params, key).map_err(|e| TlsError::Cert(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        if let Some(pem) = extra_roots_pem {
            for c in rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes()) {
                let c: CertificateDer<'static> = c.map_err(|e| TlsError::Config(e.to_string()))?;
                roots.add(c).map_err(|e| TlsError::Config(e.to_string()))?;
            }
        }
        let mut upstream = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // One request per connection over HTTP/1.1: no HTTP/2 framing to rewrite.
        upstream.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            ca,
            hosts: hosts.iter().filter_map(|h| HostPattern::parse(h)).collect(),
            upstream: Arc::new(upstream),
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate the task must trust (PEM).
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// Whether connections to `host:port` are intercepted.
    pub fn covers(&self, host: &str, port: u16) -> bool {
        self.hosts.iter().any(|h| h.matches(host, port))
    }

    /// The TLS server side for `host`: a leaf the task CA signs, cached.
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut leaves = self
            .leaves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = leaves.get(host) {
            return Ok(Arc::clone(c));
        }
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let key = KeyPair::generate().map_err(|e| TlsError::Cert(e.to_string()))?;
        let mut params = CertificateParams::new(vec![bare.clone()])
            .map_err(|e| TlsError::Cert(e.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, bare);
        let leaf = params
            .signed_by(&key, &self.ca)
            .map_err(|e| TlsError::Cert(e.to_string()))?;
        let chain = vec![leaf.der().clone()];
        let pk = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, pk)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        leaves.insert(host.to_owned(), Arc::clone(&cfg));
        Ok(cfg)
    }

    /// The verified client side toward the real `host`.
    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.upstream))
    }

    /// The name upstream certificates are checked against.
    pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        ServerName::try_from(bare).map_err(|e| TlsError::Config(e.to_string()))
    }
}
