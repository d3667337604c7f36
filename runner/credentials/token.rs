//! Task identity tokens: short-lived EdDSA (Ed25519) JWTs whose claims bind
//! the task to its agent, accountable human, profile and allowed hosts, so
//! an internal service can tell which task is calling. Keys live in the
//! state directory (hidden from every task); rotation keeps the old key
//! verifying for a grace period, then tokens it signed fail.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Issuer claim of every token.
pub const ISSUER: &str = "taskbox";
/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410); the 32-byte seed follows.
const PKCS8_ED25519: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// What a token says about the task that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Always `taskbox`.
    pub iss: String,
    /// The task id.
    pub sub: String,
    /// The acting agent.
    pub agent: Option<String>,
    /// The accountable human.
    pub on_behalf_of: Option<String>,
    /// `name@digest` of the task's profile.
    pub profile: String,
    /// Hosts the task may reach (its egress allow-list).
    pub hosts: Vec<String>,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
}

/// Why a token did not verify, or keys could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The key file could not be read or written.
    #[error("task token keys: cannot {what} {path}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file is not what taskbox wrote.
    #[error("task token keys: {path} is corrupt: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The token names a key taskbox does not have.
    #[error("token refused: signed by an unknown key `{kid}`")]
    UnknownKey {
        /// Its key id.
        kid: String,
    },
    /// The token's key was rotated out and its grace period is over.
    #[error("token refused: its key `{kid}` was rotated out and the grace period ended")]
    Retired {
        /// Its key id.
        kid: String,
    },
    /// Bad signature, expired, wrong issuer, malformed.
    #[error("token refused: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Key {
    kid: String,
    /// The Ed25519 seed, hex.
    seed: String,
    created: u64,
    /// When it stopped signing, and until when it still verifies.
    retired: Option<(u64, u64)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    current: Option<String>,
    keys: Vec<Key>,
}

/// The signing keys in a state directory.
#[derive(Debug, Clone)]
pub struct Keys {
    path: PathBuf,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn seed_bytes(k: &Key, path: &Path) -> Result<[u8; 32], TokenError> {
    let v = hex::decode(&k.seed).map_err(|e| TokenError::Corrupt {
        path: path.to_path_buf(),
        why: format!("key {}: {e}", k.kid),
    })?;
    v.try_into().map_err(|_| TokenError::Corrupt {
        path: path.to_path_buf(),
        why: format!("key {}: the seed is not 32 bytes", k.kid),
    })
}

impl Keys {
    /// Keys kept in `dir/token-keys.json` (mode 0600).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join("token-keys.json"),
        }
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
        move |source| TokenError::Io {
            what,
            path: self.path.clone(),
            source,
        }
    }

    fn load(&self) -> Result<KeyFile, TokenError> {
        match std::fs::read_to_string(&self.path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| TokenError::Corrupt {
                path: self.path.clone(),
                why: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyFile::default()),
            Err(e) => Err(self.io("read")(e)),
        }
    }

    fn save(&self, f: &KeyFile) -> Result<(), TokenError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        if let Some(d) = self.path.parent() {
            std::fs::create_dir_all(d).map_err(self.io("create the directory of"))?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(f).map_err(|e| TokenError::Corrupt {
            path: self.path.clone(),
            why: e.to_string(),
        })?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(self.io("write"))?;
        std::io::Write::write_all(&mut out, &body).map_err(self.io("write"))?;
        std::fs::rename(&tmp, &self.path).map_err(self.io("write"))
    }

    fn new_key() -> Result<Key, TokenError> {
        let mut seed = [0u8; 32];
        let mut f = std::fs::File::open("/dev/urandom").map_err(|source| TokenError::Io {
            what: "read",
            path: "/dev/urandom".into(),
            source,
        })?;
        std::io::Read::read_exact(&mut f, &mut seed).map_err(|source| TokenError::Io {
            what: "read",
            path: "/dev/urandom".into(),
            source,
        })?;
        Ok(Key {
            kid: ulid::Ulid::generate().to_string().to_ascii_lowercase(),
            seed: hex::encode(seed),
            created: now(),
            retired: None,
        })
    }

    /// Signs `claims` with the current key (made on first use).
    ///
    /// # Errors
    /// When the key file cannot be read or written.
    pub fn mint(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut f = self.load()?;
        let key = match f
            .current
            .as_ref()
            .and_then(|c| f.keys.iter().find(|k| &k.kid == c))
        {
            Some(k) => k.clone(),
            None => {
                let k = Self::new_key()?;
                f.current = Some(k.kid.clone());
                f.keys.push(k.clone());
                self.save(&f)?;
                k
            }
        };
        let mut der = PKCS8_ED25519.to_vec();
        der.extend_from_slice(&seed_bytes(&key, &self.path)?);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&der))
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Checks signature, issuer and expiry, and that the signing key is
    /// current or still within its grace period; returns the claims.
    ///
    /// # Errors
    /// Why the token is refused.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} is not EdDSA",
                header.alg
            )));
        }
        let kid = header.kid.unwrap_or_default();
        let f = self.load()?;
        let key = f
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or_else(|| TokenError::UnknownKey { kid: kid.clone() })?;
        if let Some((_, until)) = key.retired
            && now() > until
        {
            return Err(TokenError::Retired { kid });
        }
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed_bytes(key, &self.path)?);
        let public = signing.verifying_key().to_bytes();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[ISSUER]);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_ed_der(&public), &v)
            .map(|d| d.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Makes a new current key; the old one keeps verifying for `grace`.
    /// Returns the new key id.
    ///
    /// # Errors
    /// When the key file cannot be read or written.
    pub fn rotate(&self, grace: Duration) -> Result<String, TokenError> {
        let mut f = self.load()?;
        let t = now();
        let current = f.current.clone();
        for k in &mut f.keys {
            if Some(&k.kid) == current.as_ref() && k.retired.is_none() {
                k.retired = Some((t, t.saturating_add(grace.as_secs())));
            }
        }
        let k = Self::new_key()?;
        let kid = k.kid.clone();
        f.current = Some(kid.clone());
        f.keys.push(k);
        self.save(&f)?;
        Ok(kid)
    }
}

impl Claims {
    /// Claims for a task, valid from now for `ttl`.
    pub fn for_task(
        task: &str,
        agent: Option<String>,
        on_behalf_of: Option<String>,
        profile: String,
        hosts: Vec<String>,
        ttl: Duration,
    ) -> Self {
        let iat = now();
        Self {
            iss: ISSUER.to_owned(),
            sub: task.to_owned(),
            agent,
            on_behalf_of,
            profile,
            hosts,
            iat,
            exp: iat.saturating_add(ttl.as_secs().max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(ttl: Duration) -> Claims {
        Claims::for_task(
            "01TASK",
            Some("claude".into()),
            Some("alice@example.com".into()),
            "shared-change@abc".into(),
            vec!["api.test".into()],
            ttl,
        )
    }

    #[test]
    fn a_minted_token_verifies_and_says_who_calls() {
        let d = tempfile::tempdir().unwrap();
        let keys = Keys::in_dir(d.path());
        // One value: two calls of `claims` straddle a second now and then.
        let c = claims(Duration::from_secs(60));
        let t = keys.mint(&c).unwrap();
        assert_eq!(keys.verify(&t).unwrap(), c);
    }

    #[test]
    fn tampered_expired_foreign_and_rotated_tokens_fail() {
        let d = tempfile::tempdir().unwrap();
        let keys = Keys::in_dir(d.path());
        let t = keys.mint(&claims(Duration::from_secs(60))).unwrap();
        // Tampered payload: another task id, same signature.
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = claims(Duration::from_secs(60));
        c.sub = "01OTHER".into();
        use base64::Engine as _;
        let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&c).unwrap());
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert!(matches!(keys.verify(&forged), Err(TokenError::Invalid(_))));
        // Expired.
        let mut old = claims(Duration::from_secs(60));
        old.iat -= 600;
        old.exp = old.iat + 60;
        let expired = keys.mint(&old).unwrap();
        assert!(
            matches!(keys.verify(&expired), Err(TokenError::Invalid(m)) if m.contains("xpired"))
        );
        // Another installation's key.
        let other = tempfile::tempdir().unwrap();
        let foreign = Keys::in_dir(other.path())
            .mint(&claims(Duration::from_secs(60)))
            .unwrap();
        assert!(matches!(
            keys.verify(&foreign),
            Err(TokenError::UnknownKey { .. })
        ));
        // Rotated with a grace period: still good; with none: refused.
        keys.rotate(Duration::from_secs(3600)).unwrap();
        assert!(keys.verify(&t).is_ok());
        let t2 = keys.mint(&claims(Duration::from_secs(60))).unwrap();
        keys.rotate(Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(matches!(keys.verify(&t2), Err(TokenError::Retired { .. })));
        // The first key's grace (an hour) still holds.
        assert!(keys.verify(&t).is_ok());
    }
}
