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
