//! taskbox: runs each tool action of an AI coding agent inside a sandbox whose
//! filesystem, network and credential reach come from a per-task profile.
//!
//! Rooms (see DESIGN.md): `cli` and `action` on top; `profile` pure at the
//! bottom; `sandbox` builds sandboxes; `audit` records everything.

pub mod action;
pub mod audit;
pub mod cli;
pub mod credentials;
pub mod error;
pub mod profile;
pub mod proxy;
pub mod sandbox;
pub mod task;
pub mod workspace;

pub use error::Error;

/// musl's malloc (mallocng) made the runner's profile load, plan and
/// seccomp build 1.3-5× slower than glibc's; dlmalloc (ptmalloc's
/// ancestor, in Rust, no start-up work) gives that back. Measured on a
/// Landlock + seccomp launch as uid 65534, added median: glibc 3.9 ms,
/// musl 3.3, musl + dlmalloc 2.9 (mimalloc: 4.0, its arenas make every
/// fork dearer).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;
