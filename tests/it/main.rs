//! The one integration binary: taskbox against the real kernel, effects
//! checked from outside the sandbox, as root and as an unprivileged uid, with
//! and without namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod approval;
mod audit;
mod credentials;
mod egress;
mod limits;
mod overlay;
mod profiles;
mod promote;
mod sandbox;
mod support;
mod wasm;
