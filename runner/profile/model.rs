//! The validated profile: what a chain of TOML layers means once merged.
//!
//! `Profile` is only made by [`Profile::from_layers`] (or `from_parsed`), which parses, validates
//! and merges; any value in it has passed every check.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use super::ProfileError;
use super::raw::{BackendToml, KindToml, NetModeToml, PathList, ProfileToml, WorkspaceModeToml};

/// Where a profile's text came from; named in every error and in `explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "name", rename_all = "kebab-case")]
pub enum Origin {
    /// Embedded in the binary.
    Builtin(String),
    /// A file on disk (user profile dir or an explicit path).
    File(std::path::PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Builtin(name) => write!(f, "<builtin>/{name}.toml"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// One profile file: where it is, its name and its text.
#[derive(Debug, Clone)]
pub struct Source {
    /// Name used by `-p` and `extends`.
    pub name: String,
    /// Where the text came from.
    pub origin: Origin,
    /// The TOML text.
    pub text: String,
    /// Whether the file lies inside the task's workspace: then it may only narrow.
    pub untrusted: bool,
}

impl Source {
    /// Line and column (1-based) of a byte offset in this source.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    pub(crate) fn error(&self, span: Range<usize>, field: &str, message: String) -> ProfileError {
        let (line, column) = self.line_col(span.start);
        ProfileError::Invalid {
            origin: self.origin.clone(),
            line,
            column,
            field: field.to_owned(),
            message,
        }
    }
}

/// Explore work is reversible; shared change is approved and credentialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Isolated, no credentials, reversible.
    Explore,
    /// Approved, credentialed, audited.
    SharedChange,
}

/// Which backend runs the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Linux processes.
    Native,
    /// WebAssembly tools.
    Wasm,
}

/// How the task sees the workspace; ordered from narrowest to widest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkspaceMode {
    /// Nothing in the workspace can be written.
    ReadOnly,
    /// Writes go to a throwaway layer.
    Overlay,
    /// Writes land in the real workspace.
    Direct,
}

/// Network reach; ordered from narrowest to widest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetMode {
    /// No network: no interface up in the task's namespace, no inet sockets.
    None,
    /// Through taskbox's proxy, by host allow-list.
    Proxy,
    /// The host's network. Dangerous.
    Host,
}

/// A path as written in a profile, with `{workspace}`, `{home}`, `{tmp}` unresolved.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PathTemplate(String);

/// Variables a path template may use.
pub const PATH_VARIABLES: [&str; 3] = ["workspace", "home", "tmp"];

impl PathTemplate {
    /// Checks that the template is absolute (or starts with a variable) and uses only known variables.
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("empty path".into());
        }
        if raw.starts_with('~') {
            return Err(format!(
                "`{raw}` starts with `~`. Hint: write `{{home}}` instead"
            ));
        }
        let mut rest = raw;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err(format!("`{raw}` has an unclosed `{{`"));
            };
            let var = &after[..close];
            if !PATH_VARIABLES.contains(&var) {
                return Err(format!(
                    "`{raw}` uses unknown variable `{{{var}}}`; known: {{workspace}}, {{home}}, {{tmp}}"
                ));
            }
            rest = &after[close + 1..];
        }
        if !(raw.starts_with('/') || raw.starts_with('{')) {
            return Err(format!(
                "`{raw}` is a relative path. Hint: paths must be absolute or start with {{workspace}}, {{home}} or {{tmp}}"
            ));
        }
        if raw.split('/').any(|c| c == "..") {
            return Err(format!("`{raw}` contains `..`"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The template text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Substitutes the variables.
    pub fn resolve(&self, vars: &PathVars) -> std::path::PathBuf {
        let s = self
            .0
            .replace("{workspace}", &vars.workspace.to_string_lossy())
            .replace("{home}", &vars.home.to_string_lossy())
            .replace("{tmp}", &vars.tmp.to_string_lossy());
        normalize(std::path::Path::new(&s))
    }

    /// Whether the template names the task's /tmp: `{tmp}` or a literal
    /// path in /tmp.
    pub fn names_tmp(&self) -> bool {
        let s = self.0.as_str();
        s.starts_with("{tmp}") || s == "/tmp" || s.starts_with("/tmp/")
    }

    /// Whether the template has glob characters.
    pub fn is_glob(&self) -> bool {
        self.0.contains(['*', '?', '['])
    }

    /// Whether `self` covers `other` (equal, or `other` is beneath `self`).
    pub fn covers(&self, other: &PathTemplate) -> bool {
        other.0 == self.0
            || other
                .0
                .strip_prefix(self.0.trim_end_matches('/'))
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Removes `.` components, duplicate and trailing slashes.
pub fn normalize(path: &std::path::Path) -> std::path::PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// Values of the path variables for one task.
#[derive(Debug, Clone)]
pub struct PathVars {
    /// The task's workspace.
    pub workspace: std::path::PathBuf,
    /// The caller's home directory.
    pub home: std::path::PathBuf,
    /// The task's private temporary directory.
    pub tmp: std::path::PathBuf,
}

/// `[filesystem]`, merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FsPolicy {
    /// Readable trees.
    pub read: Vec<PathTemplate>,
    /// Writable trees.
    pub write: Vec<PathTemplate>,
    /// Never readable nor writable; accumulates down an `extends` chain.
    pub deny: Vec<PathTemplate>,
    /// Protected paths this profile lets the task write.
    pub unprotect: Vec<PathTemplate>,
    /// The task's own throwaway trees over host directories.
    pub scratch: Vec<PathTemplate>,
    /// Host trees read through a throwaway layer of the task's.
    pub cache: Vec<PathTemplate>,
}

impl FsPolicy {
    /// Whether a `read` or `write` grant covers `t`.
    fn readable(&self, t: &PathTemplate) -> bool {
        self.read.iter().chain(&self.write).any(|r| r.covers(t))
    }
}

/// `[network]`, merged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetPolicy {
    /// Reach.
    pub mode: NetMode,
    /// Allowed host patterns.
    pub allow: Vec<String>,
    /// Denied host patterns; accumulate.
    pub deny: Vec<String>,
}

/// How a granted credential reaches the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Injected by the proxy; the task sees a placeholder.
    Header,
    /// An environment variable of the task.
    Env(String),
    /// A file on a private in-memory mount.
    File,
}

impl Delivery {
    /// As written in a profile: `header`, `env:NAME` or `file`.
    pub fn as_written(&self) -> String {
        match self {
            Delivery::Header => "header".to_owned(),
            Delivery::Env(v) => format!("env:{v}"),
            Delivery::File => "file".to_owned(),
        }
    }
}

/// One credential grant, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// Name in audit records and redaction markers.
    pub name: String,
    /// Source (`env:`, `file:`, `cmd:`), as written.
    pub from: String,
    /// Hosts it may be sent to.
    pub to: Vec<String>,
    /// Delivery.
    pub deliver: Delivery,
    /// Lease length.
    #[serde(with = "humantime_serde_opt")]
    pub ttl: Option<Duration>,
}

/// `[env]`, merged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EnvPolicy {
    /// Passed from the caller.
    pub pass: Vec<String>,
    /// Set to fixed values.
    pub set: BTreeMap<String, String>,
}

/// `[limits]`, merged. `None` means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Wall clock for the whole task.
    #[serde(with = "humantime_serde_opt")]
    pub wall: Option<Duration>,
    /// CPU seconds per process.
    #[serde(with = "humantime_serde_opt")]
    pub cpu: Option<Duration>,
    /// Address space per process, bytes.
    pub memory: Option<u64>,
    /// Processes of the task.
    pub processes: Option<u64>,
    /// Captured output, bytes.
    pub output: Option<u64>,
    /// Largest file written, bytes.
    pub file_size: Option<u64>,
    /// Open descriptors per process.
    pub open_files: Option<u64>,
    /// Free bytes the task must leave on each disk it writes (the task is
    /// stopped below this); `Some(0)` is no floor.
    pub disk_free: Option<u64>,
}

/// `[require]`, merged: the enforcement floor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Require {
    /// Lowest acceptable Landlock ABI (0: Landlock not required).
    pub landlock_abi: u8,
    /// Namespaces required.
    pub namespaces: bool,
    /// Seccomp required.
    pub seccomp: bool,
}

/// A place where a profile grants more than the profile it extends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Widening {
    /// The field, e.g. `filesystem.write`.
    pub field: String,
    /// What was added or raised.
    pub detail: String,
    /// Which profile widened, and where.
    pub at: String,
}

/// A validated, merged profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    /// Name used by `-p`.
    pub name: String,
    /// Where the leaf came from.
    pub origin: Origin,
    /// Chain of names, root first.
    pub chain: Vec<String>,
    /// sha-256 over every layer's text, root first (see [`Profile::digest`]).
    pub(super) digest: LayersDigest,
    /// One line.
    pub description: String,
    /// Explore or shared change.
    pub kind: Kind,
    /// Backend.
    pub backend: Backend,
    /// Workspace mode.
    pub workspace: WorkspaceMode,
    /// Filesystem.
    pub fs: FsPolicy,
    /// Network.
    pub net: NetPolicy,
    /// Credentials.
    pub grants: Vec<Grant>,
    /// Whether each task gets a signed identity token.
    pub identity: bool,
    /// Environment.
    pub env: EnvPolicy,
    /// Limits.
    pub limits: Limits,
    /// Whether approval is required.
    pub approval_required: bool,
    /// Enforcement floor.
    pub require: Require,
    /// Every place a layer widened its parent.
    pub widenings: Vec<Widening>,
}

/// A profile's digest, hashed when first asked for: the first SHA-256 of
/// a process probes the CPU (three `cpuid`, each a trap to the hypervisor on
/// our VMs) and runs cold code, 0.05 ms before the plan when it was hashed
/// here; a launch now asks only after its plan is sent.
#[derive(Debug, Clone, Default)]
pub(super) struct LayersDigest {
    /// Each layer's name and text, NUL-terminated, root first.
    input: Vec<u8>,
    hex: std::sync::OnceLock<String>,
}

impl LayersDigest {
    fn hex(&self) -> &str {
        self.hex.get_or_init(|| {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(&self.input))
        })
    }
}

impl PartialEq for LayersDigest {
    fn eq(&self, other: &Self) -> bool {
        self.input == other.input
    }
}

impl Eq for LayersDigest {}

impl Serialize for LayersDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.hex())
    }
}

mod humantime_serde_opt {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

impl Profile {
    /// sha-256 (hex) over every layer's name and text, root first: what
    /// audit records and approvals bind a task to.
    pub fn digest(&self) -> &str {
        self.digest.hex()
    }

    /// Defaults of a profile that extends nothing: nothing readable or writable,
    /// no network, empty environment, no credentials, no limits, nothing required.
    fn empty(name: &str, origin: Origin) -> Self {
        Self {
            name: name.to_owned(),
            origin,
            chain: Vec::new(),
            digest: LayersDigest::default(),
            description: String::new(),
            kind: Kind::Explore,
            backend: Backend::Native,
            workspace: WorkspaceMode::ReadOnly,
            fs: FsPolicy::default(),
            net: NetPolicy {
                mode: NetMode::None,
                allow: Vec::new(),
                deny: Vec::new(),
            },
            grants: Vec::new(),
            identity: false,
            env: EnvPolicy::default(),
            limits: Limits::default(),
            approval_required: false,
            require: Require::default(),
            widenings: Vec::new(),
        }
    }

    /// Parses, validates and merges a chain of sources, root first.
    ///
    /// # Errors
    /// The first bad value, naming file, line, column and field.
    pub fn from_layers(layers: &[Source]) -> Result<Self, ProfileError> {
        let parsed = layers
            .iter()
            .map(|s| parse(s).map(|raw| (s, raw)))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_parsed(parsed)
    }

    /// [`Profile::from_layers`] for layers already parsed (the catalog
    /// parses each one to follow `extends`; once is enough).
    pub(crate) fn from_parsed(layers: Vec<(&Source, ProfileToml)>) -> Result<Self, ProfileError> {
        let leaf = layers
            .last()
            .map(|(s, _)| *s)
            .ok_or(ProfileError::EmptyChain)?;
        let mut profile = Self::empty(&leaf.name, leaf.origin.clone());
        let mut hashed = Vec::new();
        for (depth, (source, raw)) in layers.into_iter().enumerate() {
            for part in [source.name.as_bytes(), &[0], source.text.as_bytes(), &[0]] {
                hashed.extend_from_slice(part);
            }
            let before = profile.widenings.len();
            profile.apply(source, raw, depth > 0)?;
            if source.untrusted && profile.widenings.len() > before {
                let w = &profile.widenings[before];
                return Err(ProfileError::UntrustedWidens {
                    origin: source.origin.clone(),
                    field: w.field.clone(),
                    detail: w.detail.clone(),
                });
            }
            profile.chain.push(source.name.clone());
        }
        profile.name = leaf.name.clone();
        profile.origin = leaf.origin.clone();
        profile.digest = LayersDigest {
            input: hashed,
            hex: std::sync::OnceLock::new(),
        };
        profile.check_whole(leaf)?;
        Ok(profile)
    }

    /// Applies one layer on top of the profile merged so far.
    fn apply(
        &mut self,
        src: &Source,
        raw: ProfileToml,
        has_parent: bool,
    ) -> Result<(), ProfileError> {
        let ProfileToml {
            description,
            extends: _,
            kind,
            backend,
            workspace,
            filesystem,
            network,
            credentials,
            env,
            limits,
            approval,
            require,
        } = raw;
        let widen = |field: &str, detail: String, span: &Range<usize>| {
            if has_parent {
                let (line, col) = src.line_col(span.start);
                self_widenings_push(field, detail, format!("{}:{line}:{col}", src.origin))
            } else {
                None
            }
        };
        let mut widenings: Vec<Widening> = Vec::new();
        let mut push = |w: Option<Widening>| widenings.extend(w);

        if let Some(d) = description {
            self.description = d;
        }
        if let Some(k) = kind {
            let new = match k.get_ref() {
                KindToml::Explore => Kind::Explore,
                KindToml::SharedChange => Kind::SharedChange,
            };
            if new > self.kind {
                push(widen("kind", "explore -> shared-change".into(), &k.span()));
            }
            self.kind = new;
        }
        if let Some(b) = backend {
            self.backend = match b.into_inner() {
                BackendToml::Native => Backend::Native,
                BackendToml::Wasm => Backend::Wasm,
            };
        }
        if let Some(ws) = workspace {
            let span = ws.span();
            let ws = ws.into_inner();
            let Some(mode) = ws.mode else {
                return Err(empty_section(src, "workspace", span));
            };
            let new = match mode.get_ref() {
                WorkspaceModeToml::Overlay => WorkspaceMode::Overlay,
                WorkspaceModeToml::Direct => WorkspaceMode::Direct,
                WorkspaceModeToml::ReadOnly => WorkspaceMode::ReadOnly,
            };
            if new > self.workspace {
                push(widen(
                    "workspace.mode",
                    format!("{:?} -> {:?}", self.workspace, new).to_lowercase(),
                    &mode.span(),
                ));
            }
            self.workspace = new;
        }
        if let Some(fs) = filesystem {
            let span = fs.span();
            let fs = fs.into_inner();
            if fs.read.is_none()
                && fs.write.is_none()
                && fs.deny.is_none()
                && fs.unprotect.is_none()
                && fs.scratch.is_none()
                && fs.cache.is_none()
            {
                return Err(empty_section(src, "filesystem", span));
            }
            // Every grant as written, before those a wider grant absorbs
            // are dropped: each is checked against the denies below.
            let read = paths(src, "filesystem.read", fs.read)?;
            let write = paths(src, "filesystem.write", fs.write)?;
            let scratch = own_trees(src, "filesystem.scratch", fs.scratch)?;
            let cache = own_trees(src, "filesystem.cache", fs.cache)?;
            let asked: Vec<(&str, PathTemplate, Range<usize>)> = read
                .iter()
                .map(|p| ("filesystem.read", p.0.clone(), p.1.clone()))
                .chain(
                    write
                        .iter()
                        .map(|p| ("filesystem.write", p.0.clone(), p.1.clone())),
                )
                .chain(
                    scratch
                        .iter()
                        .map(|p| ("filesystem.scratch", p.0.clone(), p.1.clone())),
                )
                .chain(
                    cache
                        .iter()
                        .map(|p| ("filesystem.cache", p.0.clone(), p.1.clone())),
                )
                .collect();
            // A scratch tree reaches nothing of the host's: no widening.
            for p in scratch {
                if !self.fs.scratch.contains(&p.0) {
                    self.fs.scratch.push(p.0);
                }
            }
            // A cache tree writes nothing of the host's, but reads it: a
            // widening where nothing granted it readable.
            for p in cache {
                if self.fs.cache.contains(&p.0) {
                    continue;
                }
                if !self.fs.readable(&p.0) {
                    push(widen("filesystem.cache", p.0.as_str().to_owned(), &p.1));
                }
                self.fs.cache.push(p.0);
            }
            for p in read {
                if !self.fs.readable(&p.0) {
                    push(widen("filesystem.read", p.0.as_str().to_owned(), &p.1));
                    self.fs.read.push(p.0);
                }
            }
            for p in write {
                if !self.fs.write.iter().any(|r| r.covers(&p.0)) {
                    push(widen("filesystem.write", p.0.as_str().to_owned(), &p.1));
                    self.fs.write.push(p.0);
                }
            }
            for p in paths(src, "filesystem.deny", fs.deny)? {
                if p.0.as_str() == "/" || p.0.as_str() == "{workspace}" {
                    return Err(src.error(
                        p.1,
                        "filesystem.deny",
                        format!(
                            "`{}` cannot be denied: the task could not run at all",
                            p.0.as_str()
                        ),
                    ));
                }
                if !self.fs.deny.contains(&p.0) {
                    self.fs.deny.push(p.0);
                }
            }
            // A grant under a deny gives nothing (a deny holds over every
            // grant, and no child can remove one); one that a wider grant
            // absorbed would otherwise pass silently.
            for (field, g, span) in &asked {
                if let Some(d) = self.fs.deny.iter().find(|d| d.covers(g)) {
                    return Err(src.error(
                        span.clone(),
                        field,
                        format!(
                            "`{}` lies under the deny `{}`: a deny holds over every grant and can never be removed by a child, so this grant would give nothing. Hint: remove it, or grant a path outside the denied one",
                            g.as_str(),
                            d.as_str()
                        ),
                    ));
                }
            }
            for p in paths(src, "filesystem.unprotect", fs.unprotect)? {
                if !self.fs.unprotect.contains(&p.0) {
                    push(widen("filesystem.unprotect", p.0.as_str().to_owned(), &p.1));
                    self.fs.unprotect.push(p.0);
                }
            }
        }
        if let Some(net) = network {
            let span = net.span();
            let net = net.into_inner();
            if net.mode.is_none() && net.allow.is_none() && net.deny.is_none() {
                return Err(empty_section(src, "network", span));
            }
            if let Some(mode) = net.mode {
                let new = match mode.get_ref() {
                    NetModeToml::None => NetMode::None,
                    NetModeToml::Proxy => NetMode::Proxy,
                    NetModeToml::Host => NetMode::Host,
                };
                if new > self.net.mode {
                    push(widen(
                        "network.mode",
                        format!("{:?} -> {:?}", self.net.mode, new).to_lowercase(),
                        &mode.span(),
                    ));
                }
                self.net.mode = new;
            }
            for h in net.allow.unwrap_or_default() {
                let host = host_pattern(src, "network.allow", &h)?;
                if !self.net.allow.contains(&host) {
                    push(widen("network.allow", host.clone(), &h.span()));
                    self.net.allow.push(host);
                }
            }
            for h in net.deny.unwrap_or_default() {
                let host = host_pattern(src, "network.deny", &h)?;
                if !self.net.deny.contains(&host) {
                    self.net.deny.push(host);
                }
            }
        }
        if let Some(creds) = credentials {
            let span = creds.span();
            let creds = creds.into_inner();
            if creds.grant.is_none() && creds.identity.is_none() {
                return Err(empty_section(src, "credentials", span));
            }
            if let Some(id) = creds.identity {
                let on = *id.get_ref();
                if on && !self.identity {
                    push(widen(
                        "credentials.identity",
                        "a task identity token".into(),
                        &id.span(),
                    ));
                }
                self.identity = on;
            }
            for g in creds.grant.unwrap_or_default() {
                let gspan = g.span();
                let grant = grant(src, g)?;
                push(widen("credentials.grant", grant.name.clone(), &gspan));
                self.grants.push(grant);
            }
        }
        if let Some(env) = env {
            let span = env.span();
            let env = env.into_inner();
            if env.pass.is_none() && env.set.is_none() {
                return Err(empty_section(src, "env", span));
            }
            for v in env.pass.unwrap_or_default() {
                let name = v.get_ref();
                if name.is_empty() || name.contains(['=', '\0']) {
                    return Err(src.error(
                        v.span(),
                        "env.pass",
                        format!("`{name}` is not a variable name"),
                    ));
                }
                if !self.env.pass.contains(name) {
                    push(widen("env.pass", name.clone(), &v.span()));
                    self.env.pass.push(name.clone());
                }
            }
            for (k, v) in env.set.unwrap_or_default() {
                if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                    return Err(src.error(
                        span.clone(),
                        "env.set",
                        format!("`{k}` is not a valid variable"),
                    ));
                }
                self.env.set.insert(k, v);
            }
        }
        if let Some(limits) = limits {
            let span = limits.span();
            self.apply_limits(src, limits.into_inner(), span, &mut |f, d, s| {
                push(widen(f, d, s))
            })?;
        }
        if let Some(approval) = approval {
            let span = approval.span();
            let Some(req) = approval.into_inner().required else {
                return Err(empty_section(src, "approval", span));
            };
            if self.approval_required && !*req.get_ref() {
                push(widen(
                    "approval.required",
                    "true -> false".into(),
                    &req.span(),
                ));
            }
            self.approval_required = *req.get_ref();
        }
        if let Some(require) = require {
            let span = require.span();
            let r = require.into_inner();
            if r.landlock_abi.is_none() && r.namespaces.is_none() && r.seccomp.is_none() {
                return Err(empty_section(src, "require", span));
            }
            if let Some(abi) = r.landlock_abi {
                let v = *abi.get_ref();
                if v > 10 {
                    return Err(src.error(
                        abi.span(),
                        "require.landlock_abi",
                        format!("{v} is not a Landlock ABI (1..=10)"),
                    ));
                }
                if v < self.require.landlock_abi {
                    push(widen(
                        "require.landlock_abi",
                        format!("{} -> {v}", self.require.landlock_abi),
                        &abi.span(),
                    ));
                }
                self.require.landlock_abi = v;
            }
            if let Some(ns) = r.namespaces {
                if self.require.namespaces && !*ns.get_ref() {
                    push(widen(
                        "require.namespaces",
                        "true -> false".into(),
                        &ns.span(),
                    ));
                }
                self.require.namespaces = *ns.get_ref();
            }
            if let Some(sc) = r.seccomp {
                if self.require.seccomp && !*sc.get_ref() {
                    push(widen("require.seccomp", "true -> false".into(), &sc.span()));
                }
                self.require.seccomp = *sc.get_ref();
            }
        }
        self.widenings.extend(widenings);
        Ok(())
    }

    fn apply_limits(
        &mut self,
        src: &Source,
        l: super::raw::LimitsToml,
        span: Range<usize>,
        widen: &mut dyn FnMut(&str, String, &Range<usize>),
    ) -> Result<(), ProfileError> {
        let super::raw::LimitsToml {
            wall,
            cpu,
            memory,
            processes,
            output,
            file_size,
            open_files,
            disk_free,
        } = l;
        if wall.is_none()
            && cpu.is_none()
            && memory.is_none()
            && processes.is_none()
            && output.is_none()
            && file_size.is_none()
            && open_files.is_none()
            && disk_free.is_none()
        {
            return Err(empty_section(src, "limits", span));
        }
        let lim = &mut self.limits;
        let dur = |f: &str, v: Option<Spanned<String>>| {
            v.map(|s| {
                let sp = s.span();
                parse_duration(src, f, s).map(|d| (d, sp))
            })
            .transpose()
        };
        let size = |f: &str, v: Option<Spanned<String>>| {
            v.map(|s| {
                let sp = s.span();
                parse_size(src, f, s).map(|d| (d, sp))
            })
            .transpose()
        };
        // A floor of 0 is no floor (a zero cap would stop everything).
        let floor = disk_free
            .map(|s| {
                let sp = s.span();
                parse_bytes(src, "limits.disk_free", &s).map(|d| (d, sp))
            })
            .transpose()?;
        let count = |f: &str, v: Option<Spanned<u64>>| {
            v.map(|s| {
                let sp = s.span();
                positive(src, f, s).map(|d| (d, sp))
            })
            .transpose()
        };
        set_limit(
            "limits.wall",
            dur("limits.wall", wall)?,
            &mut lim.wall,
            widen,
        );
        set_limit("limits.cpu", dur("limits.cpu", cpu)?, &mut lim.cpu, widen);
        set_limit(
            "limits.memory",
            size("limits.memory", memory)?,
            &mut lim.memory,
            widen,
        );
        set_limit(
            "limits.output",
            size("limits.output", output)?,
            &mut lim.output,
            widen,
        );
        set_limit(
            "limits.file_size",
            size("limits.file_size", file_size)?,
            &mut lim.file_size,
            widen,
        );
        set_limit(
            "limits.processes",
            count("limits.processes", processes)?,
            &mut lim.processes,
            widen,
        );
        set_limit(
            "limits.open_files",
            count("limits.open_files", open_files)?,
            &mut lim.open_files,
            widen,
        );
        // A floor: lowering it is what widens.
        if let Some((v, span)) = floor {
            if let Some(old) = lim.disk_free
                && v < old
            {
                widen("limits.disk_free", format!("{old:?} -> {v:?}"), &span);
            }
            lim.disk_free = Some(v);
        }
        Ok(())
    }

    /// Checks that only make sense on the merged whole.
    fn check_whole(&self, leaf: &Source) -> Result<(), ProfileError> {
        let whole = |field: &str, message: String| ProfileError::Invalid {
            origin: leaf.origin.clone(),
            line: 1,
            column: 1,
            field: field.to_owned(),
            message,
        };
        for d in &self.fs.deny {
            for root in self.fs.read.iter().chain(&self.fs.write) {
                if d.covers(root) {
                    return Err(whole(
                        "filesystem.deny",
                        format!(
                            "deny `{}` contains the granted path `{}`: the deny cannot be enforced while the grant stands. Hint: remove the grant or deny narrower paths",
                            d.as_str(),
                            root.as_str()
                        ),
                    ));
                }
            }
        }
        if (!self.grants.is_empty() || self.identity) && self.kind != Kind::SharedChange {
            return Err(whole(
                "credentials.grant",
                "credentials may only be granted by a profile of kind \"shared-change\"".into(),
            ));
        }
        if self.workspace == WorkspaceMode::Direct && self.kind != Kind::SharedChange {
            return Err(whole(
                "workspace.mode",
                "mode \"direct\" is only for profiles of kind \"shared-change\"; explore work uses \"overlay\"".into(),
            ));
        }
        if self.kind == Kind::SharedChange && !self.approval_required {
            return Err(whole(
                "approval.required",
                "a shared-change profile must require approval".into(),
            ));
        }
        if self.net.mode == NetMode::Host && self.require.namespaces {
            return Err(whole(
                "network.mode",
                "mode \"host\" shares the host network, which contradicts `require.namespaces = true`".into(),
            ));
        }
        Ok(())
    }
}

fn self_widenings_push(field: &str, detail: String, at: String) -> Option<Widening> {
    Some(Widening {
        field: field.to_owned(),
        detail,
        at,
    })
}

/// Parses one source's TOML into the raw type, mapping errors to file:line:column.
pub(crate) fn parse(src: &Source) -> Result<ProfileToml, ProfileError> {
    toml::from_str::<ProfileToml>(&src.text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| src.line_col(s.start));
        ProfileError::Invalid {
            origin: src.origin.clone(),
            line,
            column,
            field: field_of_toml_error(&src.text, e.span()),
            message: e.message().trim().to_owned(),
        }
    })
}

/// Best effort: the key on the line where toml reported an error.
fn field_of_toml_error(text: &str, span: Option<Range<usize>>) -> String {
    let Some(span) = span else {
        return String::from("(document)");
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let section = text[..line_start].lines().rev().find_map(|l| {
        let t = l.trim();
        t.strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .map(str::to_owned)
    });
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('[')
        .trim_matches(']');
    match section {
        Some(s) if !line.trim_start().starts_with('[') => format!("{s}.{key}"),
        _ => key.to_owned(),
    }
}

fn empty_section(src: &Source, name: &str, span: Range<usize>) -> ProfileError {
    src.error(
        span,
        name,
        format!("[{name}] is empty: an empty section sets nothing and would silently keep (or, without `extends`, drop) every limit. Hint: remove it or set its fields"),
    )
}

fn paths(
    src: &Source,
    field: &str,
    list: Option<PathList>,
) -> Result<Vec<(PathTemplate, Range<usize>)>, ProfileError> {
    list.unwrap_or_default()
        .into_iter()
        .map(|p| {
            let span = p.span();
            PathTemplate::parse(p.get_ref())
                .map(|t| (t, span.clone()))
                .map_err(|m| src.error(span, field, m))
        })
        .collect()
}

/// Scratch or cache trees: paths, but none of the trees that are the
/// kernel's or the task's own (the view replaces `/proc`, and a layer over
/// `/sys`, `/dev` or all of `/` would either fail or mean nothing).
fn own_trees(
    src: &Source,
    field: &str,
    list: Option<PathList>,
) -> Result<Vec<(PathTemplate, Range<usize>)>, ProfileError> {
    let trees = paths(src, field, list)?;
    for (t, span) in &trees {
        let p = t.as_str().trim_end_matches('/');
        let system = ["/proc", "/sys", "/dev"]
            .iter()
            .any(|s| p == *s || p.strip_prefix(s).is_some_and(|r| r.starts_with('/')));
        if p.is_empty() || system {
            return Err(src.error(
                span.clone(),
                field,
                format!(
                    "`{}` cannot be a tree of the task's own: it is the whole filesystem or one of the kernel's (/proc, /sys, /dev). Hint: name a directory of ordinary files",
                    t.as_str()
                ),
            ));
        }
    }
    Ok(trees)
}

fn host_pattern(src: &Source, field: &str, h: &Spanned<String>) -> Result<String, ProfileError> {
    let s = h.get_ref().trim().to_ascii_lowercase();
    let (host, port) = match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => (host, Some(port)),
        _ => (s.as_str(), None),
    };
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(src.error(h.span(), field, format!("`{s}` has a bad port `{p}`")));
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = !name.is_empty()
        && !name.contains('*')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'));
    if !ok {
        return Err(src.error(
            h.span(),
            field,
            format!("`{s}` is not a host pattern. Hint: `name`, `*.suffix`, optionally `:port`"),
        ));
    }
    Ok(s)
}

fn grant(src: &Source, g: Spanned<super::raw::GrantToml>) -> Result<Grant, ProfileError> {
    let span = g.span();
    let g = g.into_inner();
    let err = |field: &str, m: String| src.error(span.clone(), field, m);
    if !(g.from.starts_with("env:") || g.from.starts_with("file:") || g.from.starts_with("cmd:")) {
        return Err(err(
            "credentials.grant.from",
            format!(
                "`{}`: a source is `env:NAME`, `file:PATH` or `cmd:COMMAND`",
                g.from
            ),
        ));
    }
    let deliver = match g.deliver_as.as_str() {
        "header" => Delivery::Header,
        "file" => Delivery::File,
        other => match other.strip_prefix("env:") {
            Some(v) if !v.is_empty() => Delivery::Env(v.to_owned()),
            _ => {
                return Err(err(
                    "credentials.grant.as",
                    format!("`{other}`: delivery is `header`, `env:NAME` or `file`"),
                ));
            }
        },
    };
    let to: Vec<String> =
        g.to.as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
    if deliver == Delivery::Header && to.is_empty() {
        return Err(err(
            "credentials.grant.to",
            format!(
                "grant `{}` is delivered as a header but names no host in `to`",
                g.name
            ),
        ));
    }
    let ttl = g
        .ttl
        .as_deref()
        .map(|t| {
            humantime::parse_duration(t)
                .map_err(|e| err("credentials.grant.ttl", format!("`{t}`: {e}")))
        })
        .transpose()?;
    Ok(Grant {
        name: g.name,
        from: g.from,
        to,
        deliver,
        ttl,
    })
}

fn parse_duration(src: &Source, field: &str, s: Spanned<String>) -> Result<Duration, ProfileError> {
    let d = humantime::parse_duration(s.get_ref()).map_err(|e| {
        src.error(
            s.span(),
            field,
            format!(
                "`{}` is not a duration ({e}). Hint: e.g. \"90s\", \"15m\", \"2h\"",
                s.get_ref()
            ),
        )
    })?;
    if d.is_zero() {
        return Err(src.error(
            s.span(),
            field,
            "a zero limit would stop every task at once".into(),
        ));
    }
    Ok(d)
}

/// A size in bytes (`512MiB`, `4GiB`, `0`).
fn parse_bytes(src: &Source, field: &str, s: &Spanned<String>) -> Result<u64, ProfileError> {
    let v: bytesize::ByteSize = s.get_ref().parse().map_err(|e| {
        src.error(
            s.span(),
            field,
            format!(
                "`{}` is not a size ({e}). Hint: e.g. \"512MiB\", \"4GiB\"",
                s.get_ref()
            ),
        )
    })?;
    Ok(v.as_u64())
}

/// A size cap: at least one byte.
fn parse_size(src: &Source, field: &str, s: Spanned<String>) -> Result<u64, ProfileError> {
    let v = parse_bytes(src, field, &s)?;
    if v == 0 {
        return Err(src.error(
            s.span(),
            field,
            "a zero size limit would stop every task at once".into(),
        ));
    }
    Ok(v)
}

fn positive(src: &Source, field: &str, s: Spanned<u64>) -> Result<u64, ProfileError> {
    if *s.get_ref() == 0 {
        return Err(src.error(s.span(), field, "must be at least 1".into()));
    }
    Ok(*s.get_ref())
}

fn set_limit<T: PartialOrd + Copy + std::fmt::Debug>(
    field: &str,
    new: Option<(T, Range<usize>)>,
    slot: &mut Option<T>,
    widen: &mut dyn FnMut(&str, String, &Range<usize>),
) {
    if let Some((v, span)) = new {
        if let Some(old) = *slot
            && v > old
        {
            widen(field, format!("{old:?} -> {v:?}"), &span);
        }
        *slot = Some(v);
    }
}
