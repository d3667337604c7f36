//! Profiles: TOML text -> `ProfileToml` (raw) -> `Profile` (validated, merged
//! along `extends`) -> `SandboxSpec` (resolved for one task).
//!
//! Owns parsing, validation, merging, `explain` and `diff`. Refuses syscalls
//! and network: the only I/O is reading profile files in `catalog`.

mod catalog;
mod explain;
mod model;
mod raw;
mod spec;

pub use catalog::{BASE_DENY, BUILTINS, Catalog};
pub use explain::{diff, explain};
pub use model::{
    Backend, Delivery, EnvPolicy, FsPolicy, Grant, Kind, Limits, NetMode, NetPolicy, Origin,
    PathTemplate, PathVars, Profile, Require, Source, Widening, WorkspaceMode, normalize,
};
pub use spec::{EnvSpec, FsSpec, LimitSpec, NetSpec, PROTECTED, RequireSpec, SandboxSpec};

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// A value failed parsing or validation.
    #[error("{origin}:{line}:{column}: field `{field}`: {message}")]
    Invalid {
        /// File.
        origin: Origin,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Dotted field name.
        field: String,
        /// What is wrong, with a hint when known.
        message: String,
    },
    /// No profile by that name.
    #[error(
        "no profile named `{name}`. Hint: `taskbox profile list` shows the profiles; a path to a .toml file works too"
    )]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// `extends` loops.
    #[error("profile `{name}` extends itself through {chain}")]
    Cycle {
        /// The profile.
        name: String,
        /// The chain.
        chain: String,
    },
    /// A profile file could not be read.
    #[error("cannot read profile {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A profile inside the workspace tried to widen.
    #[error(
        "{origin}: field `{field}`: a profile inside the workspace may only narrow, but it widens ({detail}). Hint: move it to the user profile directory if a human wrote it"
    )]
    UntrustedWidens {
        /// File.
        origin: Origin,
        /// Field.
        field: String,
        /// What it adds.
        detail: String,
    },
    /// Internal: an empty chain.
    #[error("empty profile chain")]
    EmptyChain,
}

/// The JSON Schema of a profile file, for editors.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(raw::ProfileToml)).unwrap_or_default()
}

#[cfg(test)]
mod tests;

/// `name` as an environment variable name: upper-case ASCII letters and
/// digits, everything else `_` (a grant name becomes its variable).
pub fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}
