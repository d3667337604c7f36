//! Reading a grant's source: `env:NAME` of the runner, `file:PATH` (`~`
//! and `{home}` expand to the caller's home), or `cmd:COMMAND` run by the
//! runner outside any sandbox with a timeout.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CredError, Secret};
use crate::profile::Grant;

/// A source command must answer within this.
const CMD_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads `g`'s value; surrounding whitespace (a trailing newline) is dropped.
///
/// # Errors
/// When the source is missing, empty, unreadable, or its command fails or
/// takes longer than 15 s.
pub fn fetch(g: &Grant, env: &[(String, String)], home: &Path) -> Result<Secret, CredError> {
    let missing = || CredError::Missing {
        name: g.name.clone(),
        from: g.from.clone(),
    };
    let value = if let Some(var) = g.from.strip_prefix("env:") {
        env.iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.clone())
            .ok_or_else(missing)?
    } else if let Some(path) = g.from.strip_prefix("file:") {
        let p = expand(path, home);
        match std::fs::read_to_string(&p) {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
            Err(source) => {
                return Err(CredError::Read {
                    name: g.name.clone(),
                    from: g.from.clone(),
                    source,
                });
            }
        }
    } else if let Some(cmd) = g.from.strip_prefix("cmd:") {
        run(g, cmd, env)?
    } else {
        return Err(missing());
    };
    let v = value.trim();
    if v.is_empty() {
        return Err(missing());
    }
    Ok(Secret::new(v.to_owned()))
}

fn expand(path: &str, home: &Path) -> PathBuf {
    if let Some(rest) = path.strip_prefix("~/") {
        home.join(rest)
    } else if let Some(rest) = path.strip_prefix("{home}/") {
        home.join(rest)
    } else {
        PathBuf::from(path)
    }
}

fn run(g: &Grant, cmd: &str, env: &[(String, String)]) -> Result<String, CredError> {
    let fail = |why: String| CredError::Command {
        name: g.name.clone(),
        from: g.from.clone(),
        why,
    };
    let mut child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env_clear()
        .envs(env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("could not start: {e}")))?;
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| fail("has no stdout".into()))?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + CMD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("took longer than {}s", CMD_TIMEOUT.as_secs())));
            }
            Err(e) => return Err(fail(format!("could not be waited for: {e}"))),
        }
    };
    let text = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(fail(format!("exited with {status}")));
    }
    Ok(text)
}
