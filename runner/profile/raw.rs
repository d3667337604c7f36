//! The profile exactly as written in TOML: every field optional, spans kept so
//! that validation can name the line and column of a bad value.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

/// One profile file, as close to the TOML as possible (ripgrep's `LowArgs`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "taskbox profile")]
pub struct ProfileToml {
    /// One line saying what the profile is for.
    pub description: Option<String>,
    /// Name of the profile this one refines (a built-in or a user profile).
    #[schemars(with = "Option<String>")]
    pub extends: Option<Spanned<String>>,
    /// `explore` (isolated, no credentials) or `shared-change` (approved, credentialed).
    #[schemars(with = "Option<KindToml>")]
    pub kind: Option<Spanned<KindToml>>,
    /// `native` runs processes; `wasm` runs WebAssembly tools.
    #[schemars(with = "Option<BackendToml>")]
    pub backend: Option<Spanned<BackendToml>>,
    /// How the task sees the workspace.
    #[schemars(with = "Option<WorkspaceToml>")]
    pub workspace: Option<Spanned<WorkspaceToml>>,
    /// Paths the task may read and write, and paths it may never touch.
    #[schemars(with = "Option<FilesystemToml>")]
    pub filesystem: Option<Spanned<FilesystemToml>>,
    /// Network reach.
    #[schemars(with = "Option<NetworkToml>")]
    pub network: Option<Spanned<NetworkToml>>,
    /// Credentials granted to the task (shared-change profiles only).
    #[schemars(with = "Option<CredentialsToml>")]
    pub credentials: Option<Spanned<CredentialsToml>>,
    /// Environment the task sees.
    #[schemars(with = "Option<EnvToml>")]
    pub env: Option<Spanned<EnvToml>>,
    /// Resource limits.
    #[schemars(with = "Option<LimitsToml>")]
    pub limits: Option<Spanned<LimitsToml>>,
    /// Whether a human must approve each task.
    #[schemars(with = "Option<ApprovalToml>")]
    pub approval: Option<Spanned<ApprovalToml>>,
    /// Enforcement floor: below it the task does not run.
    #[schemars(with = "Option<RequireToml>")]
    pub require: Option<Spanned<RequireToml>>,
}

/// `kind = ...`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KindToml {
    /// Isolated, no credentials, reversible.
    Explore,
    /// Approved, credentialed, audited change to shared systems.
    SharedChange,
}

/// `backend = ...`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BackendToml {
    /// Linux processes under namespaces, Landlock and seccomp.
    Native,
    /// WebAssembly tools under wasmtime.
    Wasm,
}

/// `[workspace]`
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceToml {
    /// `overlay`, `direct` or `read-only`.
    #[schemars(with = "Option<WorkspaceModeToml>")]
    pub mode: Option<Spanned<WorkspaceModeToml>>,
}

/// `[workspace] mode = ...`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WorkspaceModeToml {
    /// Writes go to a throwaway layer; the result is a changeset.
    Overlay,
    /// Writes land in the real workspace.
    Direct,
    /// The workspace cannot be written.
    ReadOnly,
}

/// A list of path templates, each with its span.
pub type PathList = Vec<Spanned<String>>;

/// `[filesystem]`
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesystemToml {
    /// Readable trees. Variables: `{workspace}`, `{home}`, `{tmp}`.
    #[schemars(with = "Option<Vec<String>>")]
    pub read: Option<PathList>,
    /// Writable trees (also readable).
    #[schemars(with = "Option<Vec<String>>")]
    pub write: Option<PathList>,
    /// Paths never readable nor writable; globs allowed in the last components.
    #[schemars(with = "Option<Vec<String>>")]
    pub deny: Option<PathList>,
    /// Protected paths (e.g. `.git/hooks`) this profile lets the task write.
    #[schemars(with = "Option<Vec<String>>")]
    pub unprotect: Option<PathList>,
    /// Scratch trees: writable, but the task's own, empty at its start and
    /// thrown away after it (an empty directory of the task's in-memory
    /// store over the host's, which stays untouched and unread); they need
    /// namespaces.
    #[schemars(with = "Option<Vec<String>>")]
    pub scratch: Option<PathList>,
    /// Cache trees: the host's directory is read as it is, and the task's
    /// writes land in an in-memory layer of its own over it, thrown away
    /// after the task (a warm package cache the task cannot poison for the
    /// host); they need namespaces, and are read-only without.
    #[schemars(with = "Option<Vec<String>>")]
    pub cache: Option<PathList>,
}

/// `[network] mode = ...`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NetModeToml {
    /// No network: no interface up in the task's namespace, no inet sockets.
    None,
    /// Egress through taskbox's proxy, by host allow-list.
    Proxy,
    /// The host's network, unfiltered. Dangerous.
    Host,
}

/// `[network]`
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkToml {
    /// `none`, `proxy` or `host`.
    #[schemars(with = "Option<NetModeToml>")]
    pub mode: Option<Spanned<NetModeToml>>,
    /// Hosts reachable through the proxy: `name`, `*.suffix`, optional `:port`.
    #[schemars(with = "Option<Vec<String>>")]
    pub allow: Option<PathList>,
    /// Hosts never reachable; deny beats allow.
    #[schemars(with = "Option<Vec<String>>")]
    pub deny: Option<PathList>,
}

/// `[credentials]`
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialsToml {
    /// Credential grants.
    #[schemars(with = "Option<Vec<GrantToml>>")]
    pub grant: Option<Vec<Spanned<GrantToml>>>,
    /// Mint a short-lived signed task identity token (`TASKBOX_IDENTITY_TOKEN`).
    #[schemars(with = "Option<bool>")]
    pub identity: Option<Spanned<bool>>,
}

/// One credential grant.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantToml {
    /// Name used in the audit log and in redaction markers.
    pub name: String,
    /// Source: `env:NAME`, `file:PATH` or `cmd:...`.
    pub from: String,
    /// Hosts the credential may be sent to (header delivery).
    pub to: Option<String>,
    /// Delivery: `header`, `env:NAME` or `file`.
    #[serde(rename = "as")]
    pub deliver_as: String,
    /// Lease length, e.g. `15m`.
    pub ttl: Option<String>,
}

/// `[env]`
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvToml {
    /// Variables passed from the caller's environment.
    #[schemars(with = "Option<Vec<String>>")]
    pub pass: Option<PathList>,
    /// Variables set to fixed values.
    pub set: Option<BTreeMap<String, String>>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsToml {
    /// Wall-clock limit, e.g. `15m`.
    #[schemars(with = "Option<String>")]
    pub wall: Option<Spanned<String>>,
    /// CPU time limit per process, e.g. `10m`.
    #[schemars(with = "Option<String>")]
    pub cpu: Option<Spanned<String>>,
    /// Address-space limit per process, e.g. `4GiB`.
    #[schemars(with = "Option<String>")]
    pub memory: Option<Spanned<String>>,
    /// Maximum number of processes of the task.
    #[schemars(with = "Option<u64>")]
    pub processes: Option<Spanned<u64>>,
    /// Maximum captured output (stdout + stderr), e.g. `32MiB`.
    #[schemars(with = "Option<String>")]
    pub output: Option<Spanned<String>>,
    /// Largest file the task may write, e.g. `1GiB`.
    #[schemars(with = "Option<String>")]
    pub file_size: Option<Spanned<String>>,
    /// Maximum open file descriptors per process.
    #[schemars(with = "Option<u64>")]
    pub open_files: Option<Spanned<u64>>,
    /// Free space the task must leave on each filesystem its writes reach
    /// on disk, e.g. `1GiB` (`0`: no floor).
    #[schemars(with = "Option<String>")]
    pub disk_free: Option<Spanned<String>>,
}

/// `[approval]`
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalToml {
    /// Whether every task needs a human's approval before it runs.
    #[schemars(with = "Option<bool>")]
    pub required: Option<Spanned<bool>>,
}

/// `[require]`
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequireToml {
    /// Lowest Landlock ABI the task may run under (0 = Landlock not required).
    #[schemars(with = "Option<u8>")]
    pub landlock_abi: Option<Spanned<u8>>,
    /// Whether user/mount/pid/net namespaces are required.
    #[schemars(with = "Option<bool>")]
    pub namespaces: Option<Spanned<bool>>,
    /// Whether the seccomp filter is required.
    #[schemars(with = "Option<bool>")]
    pub seccomp: Option<Spanned<bool>>,
}
