//! Where profiles come from: the built-ins embedded in the binary, the user
//! profile directory, and explicit paths. Follows `extends` chains.

use std::path::{Path, PathBuf};

use super::ProfileError;
use super::model::{Origin, Profile, Source, parse};

/// The built-in base's deny paths as written there (a unit test keeps the
/// two equal). Every built-in extends base and a child can only add denies,
/// so the launch stage looks at these before its plan arrives (see
/// `sandbox::native::survey`); any other deny path is looked at after.
pub const BASE_DENY: &[&str] = &[
    "{home}/.ssh",
    "{home}/.aws",
    "{home}/.azure",
    "{home}/.config/gcloud",
    "{home}/.config/gh",
    "{home}/.netrc",
    "{home}/.git-credentials",
    "{home}/.gnupg",
    "{home}/.docker/config.json",
    "{home}/.kube",
    "{home}/.npmrc",
    "{home}/.pypirc",
    "{home}/.cargo/credentials.toml",
    "{home}/.cargo/credentials",
    "{home}/.config/taskbox",
    "{home}/.local/state/taskbox",
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/ssh/ssh_host_*_key",
    "/etc/ssl/private",
    "/etc/pki/tls/private",
    "/etc/krb5.keytab",
    "/etc/NetworkManager/system-connections",
    "/etc/wireguard",
    "/etc/letsencrypt",
    "/etc/ipsec.secrets",
    "/etc/ppp/chap-secrets",
    "/etc/ppp/pap-secrets",
    "/etc/kubernetes/admin.conf",
    "/etc/kubernetes/pki",
    "/etc/rancher/k3s/k3s.yaml",
];

/// Built-in profiles, embedded from `sandbox-profiles/`.
pub const BUILTINS: &[(&str, &str)] = &[
    ("base", include_str!("../../sandbox-profiles/base.toml")),
    (
        "readonly",
        include_str!("../../sandbox-profiles/readonly.toml"),
    ),
    (
        "explore",
        include_str!("../../sandbox-profiles/explore.toml"),
    ),
    ("build", include_str!("../../sandbox-profiles/build.toml")),
    (
        "build-wasm",
        include_str!("../../sandbox-profiles/build-wasm.toml"),
    ),
    (
        "ci-untrusted",
        include_str!("../../sandbox-profiles/ci-untrusted.toml"),
    ),
    (
        "shared-change",
        include_str!("../../sandbox-profiles/shared-change.toml"),
    ),
];

/// Longest `extends` chain accepted.
const MAX_DEPTH: usize = 16;

/// The profiles taskbox can load by name.
#[derive(Debug, Clone)]
pub struct Catalog {
    user_dir: Option<PathBuf>,
}

impl Catalog {
    /// A catalog over the built-ins and the user profile directory (`None`: built-ins only).
    pub fn new(user_dir: Option<PathBuf>) -> Self {
        Self { user_dir }
    }

    /// The user profile directory, if any.
    pub fn user_dir(&self) -> Option<&Path> {
        self.user_dir.as_deref()
    }

    /// Names of every loadable profile with its origin; built-ins first.
    ///
    /// # Errors
    /// When the user directory exists but cannot be listed.
    pub fn list(&self) -> Result<Vec<(String, Origin)>, ProfileError> {
        let mut out: Vec<(String, Origin)> = BUILTINS
            .iter()
            .map(|(n, _)| ((*n).to_owned(), Origin::Builtin((*n).to_owned())))
            .collect();
        if let Some(dir) = &self.user_dir {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(source) => {
                    return Err(ProfileError::Read {
                        path: dir.clone(),
                        source,
                    });
                }
            };
            let mut user: Vec<(String, Origin)> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .filter_map(|p| {
                    let name = p.file_stem()?.to_str()?.to_owned();
                    (!BUILTINS.iter().any(|(b, _)| *b == name)).then_some((name, Origin::File(p)))
                })
                .collect();
            user.sort_by(|a, b| a.0.cmp(&b.0));
            out.extend(user);
        }
        Ok(out)
    }

    /// Loads a profile by name or path, following `extends`.
    ///
    /// A path (containing `/` or ending in `.toml`) is read directly; if it
    /// lies inside `workspace`, it may only narrow what it extends.
    ///
    /// # Errors
    /// Unknown names, unreadable files, cycles, and every validation error.
    pub fn load(
        &self,
        name_or_path: &str,
        workspace: Option<&Path>,
    ) -> Result<Profile, ProfileError> {
        let mut chain = vec![self.source(name_or_path, workspace)?];
        let mut parsed = Vec::new();
        loop {
            let top = chain.last().ok_or(ProfileError::EmptyChain)?;
            let raw = parse(top)?;
            let parent = raw.extends.clone();
            parsed.push(raw);
            let Some(parent) = parent else {
                break;
            };
            let parent_name = parent.get_ref().clone();
            if chain.iter().any(|s| s.name == parent_name) || chain.len() >= MAX_DEPTH {
                let names: Vec<&str> = chain.iter().map(|s| s.name.as_str()).collect();
                return Err(ProfileError::Cycle {
                    name: name_or_path.to_owned(),
                    chain: format!("{} -> {parent_name}", names.join(" -> ")),
                });
            }
            let next = self.source(&parent_name, None).map_err(|e| match e {
                ProfileError::NotFound { name } => top.error(
                    parent.span(),
                    "extends",
                    format!("no profile named `{name}`. Hint: `taskbox profile list`"),
                ),
                other => other,
            })?;
            chain.push(next);
        }
        Profile::from_parsed(chain.iter().zip(parsed).rev().collect())
    }

    /// Finds one source by name or path.
    fn source(&self, name_or_path: &str, workspace: Option<&Path>) -> Result<Source, ProfileError> {
        if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
            let path = std::path::absolute(name_or_path).map_err(|source| ProfileError::Read {
                path: PathBuf::from(name_or_path),
                source,
            })?;
            let text = std::fs::read_to_string(&path).map_err(|source| ProfileError::Read {
                path: path.clone(),
                source,
            })?;
            let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            let untrusted = workspace
                .map(|w| std::fs::canonicalize(w).unwrap_or_else(|_| w.to_path_buf()))
                .is_some_and(|w| real.starts_with(w));
            let name = path.file_stem().map_or_else(
                || name_or_path.to_owned(),
                |s| s.to_string_lossy().into_owned(),
            );
            return Ok(Source {
                name,
                origin: Origin::File(path),
                text,
                untrusted,
            });
        }
        if let Some((name, text)) = BUILTINS.iter().find(|(n, _)| *n == name_or_path) {
            return Ok(Source {
                name: (*name).to_owned(),
                origin: Origin::Builtin((*name).to_owned()),
                text: (*text).to_owned(),
                untrusted: false,
            });
        }
        if let Some(dir) = &self.user_dir {
            let path = dir.join(format!("{name_or_path}.toml"));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    return Ok(Source {
                        name: name_or_path.to_owned(),
                        origin: Origin::File(path),
                        text,
                        untrusted: false,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ProfileError::Read { path, source }),
            }
        }
        Err(ProfileError::NotFound {
            name: name_or_path.to_owned(),
        })
    }
}
