//! `taskbox token ...`: verify a task identity token, rotate the signing key.

use std::time::Duration;

use anyhow::Context as _;

use crate::credentials::Keys;

/// Task identity token commands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Check a token's signature, expiry and key; print its claims (JSON).
    Verify {
        /// The token (a JWT).
        token: String,
    },
    /// Start signing with a new key; tokens of the old one verify for `--grace`.
    Rotate {
        /// How long tokens signed by the old key still verify (e.g. 15m, 0s).
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
}

impl TokenCmd {
    /// Runs the command: 0 on a valid token or a rotation, 1 on a refused token.
    pub fn execute(self) -> anyhow::Result<i32> {
        let keys = Keys::in_dir(&super::state_dir().root().join("keys"));
        match self {
            TokenCmd::Verify { token } => match keys.verify(token.trim()) {
                Ok(claims) => {
                    println!("{}", serde_json::to_string_pretty(&claims)?);
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("taskbox: {e}");
                    Ok(1)
                }
            },
            TokenCmd::Rotate { grace } => {
                let kid = keys
                    .rotate(grace)
                    .context("cannot rotate the task token key")?;
                println!(
                    "taskbox: new signing key {kid}; tokens of the previous key verify for {}",
                    humantime::format_duration(grace)
                );
                Ok(0)
            }
        }
    }
}
