//! The audit log: append-only JSON lines, each hash-chained (sha-256) to the
//! one before, with a head file as a checkpoint against truncation.
//!
//! Owns writing, verifying and querying the log. Imports no other room:
//! other rooms hand it their values as JSON.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Hash of the (absent) record before the first.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One thing that happened, against a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AuditEvent {
    /// A task started running.
    TaskStart {
        /// Task id.
        task: String,
        /// Acting agent.
        agent: Option<String>,
        /// Accountable human.
        on_behalf_of: Option<String>,
        /// Profile name.
        profile: String,
        /// Profile digest (sha-256 over its layers).
        profile_digest: String,
        /// Command and arguments.
        argv: Vec<String>,
        /// Workspace path.
        workspace: String,
        /// What the sandbox enforced.
        enforcement: Value,
    },
    /// A task ended.
    TaskEnd {
        /// Task id.
        task: String,
        /// Shell-style exit status.
        status: i32,
        /// Exit detail (code or signal).
        exit: Value,
        /// Limit that stopped it.
        limit_hit: Option<String>,
        /// Wall time.
        duration_ms: u64,
        /// Resource usage.
        usage: Value,
    },
    /// A task was refused before running (policy or setup).
    TaskRefused {
        /// Task id.
        task: String,
        /// Profile name.
        profile: String,
        /// Exit code given (125/126/127).
        code: i32,
        /// Why.
        reason: String,
    },
    /// What an overlay task changed.
    Changeset {
        /// Task id.
        task: String,
        /// New entries.
        added: usize,
        /// Changed entries.
        modified: usize,
        /// Removed entries.
        deleted: usize,
        /// Moved entries.
        renamed: usize,
        /// Permission changes.
        mode_changed: usize,
        /// The changed paths (the first 200).
        paths: Vec<String>,
    },
    /// An overlay task's changes were thrown away.
    Discarded {
        /// Task id.
        task: String,
    },
    /// An overlay task's changes were applied to the workspace.
    Promoted {
        /// Task id.
        task: String,
        /// Who promoted (the human running taskbox).
        by: String,
        /// The commit, in a git workspace.
        commit: Option<String>,
        /// Its branch.
        branch: Option<String>,
        /// Number of changes.
        changes: usize,
        /// Changes under `.git` (the task's own git state) left out.
        #[serde(default, skip_serializing_if = "is_zero")]
        git_internal: usize,
        /// Fifos, sockets and devices the task made, left out.
        #[serde(default, skip_serializing_if = "is_zero")]
        special: usize,
    },
    /// A promoted task was undone.
    Reverted {
        /// Task id.
        task: String,
        /// Who reverted.
        by: String,
        /// The revert commit, in a git workspace.
        commit: Option<String>,
    },
    /// A task waits for approval; nothing ran.
    ApprovalRequested {
        /// Task id.
        task: String,
        /// Profile name and digest.
        profile: String,
        /// Command.
        argv: Vec<String>,
        /// Credentials the task would get, by name (never values).
        credentials: Vec<String>,
    },
    /// A human approved a pending task.
    Approved {
        /// Task id.
        task: String,
        /// Who.
        by: String,
        /// Why.
        reason: Option<String>,
    },
    /// A human refused a pending task.
    Denied {
        /// Task id.
        task: String,
        /// Who.
        by: String,
        /// Why.
        reason: Option<String>,
    },
    /// An approval was used to run its task.
    ApprovalUsed {
        /// Task id.
        task: String,
        /// Who had approved it.
        approved_by: String,
    },
    /// A WASM tool was readied for a task: the module by sha-256, and
    /// whether its compiled artifact came from the cache.
    WasmTool {
        /// Task id.
        task: String,
        /// The module file as named on the command line.
        module: String,
        /// sha-256 of the module's bytes.
        sha256: String,
        /// `module` (preview 1) or `component` (preview 2).
        wasm_kind: String,
        /// Whether it was compiled now (a cache miss or a corrupt entry).
        compiled: bool,
        /// Milliseconds spent compiling.
        compile_ms: u64,
    },
    /// A credential was granted to a task: by name, source kind, delivery,
    /// hosts and lease, with a short fingerprint; never the value.
    CredentialGranted {
        /// Task id.
        task: String,
        /// Grant name.
        name: String,
        /// `env`, `file` or `cmd`.
        source: String,
        /// `header`, `env:NAME` or `file`.
        delivery: String,
        /// Hosts a header grant may be sent to.
        to: Vec<String>,
        /// Lease length in seconds.
        ttl_s: Option<u64>,
        /// First 12 hex digits of the value's sha-256.
        fingerprint: String,
    },
    /// The proxy injected a header credential into a request to a host
    /// (recorded once per grant and host).
    CredentialUsed {
        /// Task id.
        task: String,
        /// Grant name.
        name: String,
        /// The host.
        host: String,
    },
    /// A credential's lease ended: `expired` (its ttl) or `revoked` (the
    /// task ended first).
    CredentialEnded {
        /// Task id.
        task: String,
        /// Grant name.
        name: String,
        /// `expired` or `revoked`.
        how: String,
    },
    /// One connection through the egress proxy: host, port, resolved
    /// address, decision and rule, bytes each way, duration.
    Connection {
        /// Task id.
        task: String,
        /// The proxy's record.
        connection: Value,
    },
    /// Old tasks were removed from the store.
    Pruned {
        /// How many.
        tasks: usize,
    },
    /// A partial record left by a crash was cut off before this append.
    LogRepaired {
        /// Bytes removed from the end of the log.
        dropped_bytes: u64,
    },
}

/// For `skip_serializing_if`: a count of zero is left out of the record.
#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde passes fields by reference"
)]
fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl AuditEvent {
    /// The task this event belongs to, if any.
    pub fn task(&self) -> Option<&str> {
        match self {
            AuditEvent::TaskStart { task, .. }
            | AuditEvent::TaskEnd { task, .. }
            | AuditEvent::TaskRefused { task, .. }
            | AuditEvent::Changeset { task, .. }
            | AuditEvent::Discarded { task }
            | AuditEvent::Promoted { task, .. }
            | AuditEvent::Reverted { task, .. }
            | AuditEvent::ApprovalRequested { task, .. }
            | AuditEvent::Approved { task, .. }
            | AuditEvent::Denied { task, .. }
            | AuditEvent::ApprovalUsed { task, .. }
            | AuditEvent::Connection { task, .. }
            | AuditEvent::WasmTool { task, .. }
            | AuditEvent::CredentialGranted { task, .. }
            | AuditEvent::CredentialUsed { task, .. }
            | AuditEvent::CredentialEnded { task, .. } => Some(task),
            AuditEvent::LogRepaired { .. } | AuditEvent::Pruned { .. } => None,
        }
    }
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// 1-based position in the log.
    pub seq: u64,
    /// RFC 3339 time of writing.
    pub ts: String,
    /// Hash of the previous record.
    pub prev: String,
    /// What happened.
    pub event: AuditEvent,
    /// sha-256 of this record without `hash`, in canonical JSON.
    pub hash: String,
}

/// Why the log could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// I/O on the log.
    #[error("audit log {path}: {what}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be serialized.
    #[error("cannot encode audit record")]
    Encode(#[source] serde_json::Error),
}

/// The first problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// Line number of the first bad record (1-based).
    pub line: u64,
    /// Sequence number of the last good record (0: none).
    pub last_good: u64,
    /// What is wrong.
    pub reason: String,
}

/// Result of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// Hash of the last record.
    pub head: String,
    /// The first problem, if any.
    pub broken: Option<Broken>,
}

/// Canonical hash of a record's fields other than `hash`.
fn hash_of(seq: u64, ts: &str, prev: &str, event: &AuditEvent) -> Result<String, AuditError> {
    let body = serde_json::json!({ "seq": seq, "ts": ts, "prev": prev, "event": event });
    let bytes = serde_json::to_vec(&body).map_err(AuditError::Encode)?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Writes records to the log at a path. Every append takes an exclusive file
/// lock, so concurrent runners interleave whole records in chain order.
#[derive(Clone)]
pub struct Sink {
    path: PathBuf,
    redact: Option<Redaction>,
}

/// Rewrites a string so no secret survives in it (supplied by the runner;
/// this room knows no credentials).
pub type Redaction = std::sync::Arc<dyn Fn(&str) -> String + Send + Sync>;

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("path", &self.path)
            .field("redact", &self.redact.is_some())
            .finish()
    }
}

/// Applies `r` to every string inside `v`.
fn redact_value(v: &mut Value, r: &Redaction) {
    match v {
        Value::String(s) => *s = r(s),
        Value::Array(a) => a.iter_mut().for_each(|x| redact_value(x, r)),
        Value::Object(o) => o.values_mut().for_each(|x| redact_value(x, r)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[derive(Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

/// Size of the head file: its JSON padded with spaces (a sha-256 hex and a
/// sequence number take about 90 bytes).
const HEAD_LEN: usize = 128;

impl Sink {
    /// A sink writing to `path` (created on first append) with its head file beside it.
    pub fn new(path: PathBuf) -> Self {
        Self { path, redact: None }
    }

    /// The same log, with every string of every record passed through `r`
    /// before it is hashed and written (redaction at write time).
    pub fn with_redaction(mut self, r: Redaction) -> Self {
        self.redact = Some(r);
        self
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn head_path(&self) -> PathBuf {
        self.path.with_extension("head")
    }

    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
        move |source| AuditError::Io {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// Appends one event and returns its record.
    ///
    /// # Errors
    /// When the log cannot be locked, read or written.
    pub fn append(&self, event: AuditEvent) -> Result<Record, AuditError> {
        let mut recs = self.append_all(vec![event])?;
        recs.pop().ok_or(AuditError::Encode(serde_json::Error::io(
            std::io::Error::other("nothing appended"),
        )))
    }

    /// Appends several events under one lock, in order (one head update).
    ///
    /// # Errors
    /// When the log cannot be locked, read or written.
    pub fn append_all(&self, events: Vec<AuditEvent>) -> Result<Vec<Record>, AuditError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(self.io("create directory"))?;
        }
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(self.io("open"))?;
        f.lock().map_err(self.io("lock"))?;
        let (mut seq, mut prev, dropped) = self.tail(&mut f)?;
        if dropped > 0 {
            let rec = self.write_record(
                &mut f,
                seq + 1,
                &prev,
                AuditEvent::LogRepaired {
                    dropped_bytes: dropped,
                },
            )?;
            seq = rec.seq;
            prev = rec.hash;
        }
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let rec = self.write_record(&mut f, seq + 1, &prev, event)?;
            seq = rec.seq;
            prev = rec.hash.clone();
            out.push(rec);
        }
        // The head is rewritten in place, always HEAD_LEN bytes in one write:
        // a killed runner cannot leave half of one (no temporary file and
        // rename per append, which cost more than the record itself).
        let mut head = serde_json::to_vec(&Head { seq, hash: prev }).map_err(AuditError::Encode)?;
        head.resize(HEAD_LEN - 1, b' ');
        head.push(b'\n');
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.head_path())
            .and_then(|h| std::os::unix::fs::FileExt::write_all_at(&h, &head, 0))
            .map_err(self.io("write head"))?;
        Ok(out)
    }

    fn write_record(
        &self,
        f: &mut File,
        seq: u64,
        prev: &str,
        event: AuditEvent,
    ) -> Result<Record, AuditError> {
        let event = match &self.redact {
            None => event,
            Some(r) => {
                let mut v = serde_json::to_value(&event).map_err(AuditError::Encode)?;
                redact_value(&mut v, r);
                serde_json::from_value(v).map_err(AuditError::Encode)?
            }
        };
        let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        let hash = hash_of(seq, &ts, prev, &event)?;
        let rec = Record {
            seq,
            ts,
            prev: prev.to_owned(),
            event,
            hash,
        };
        let mut line = serde_json::to_vec(&rec).map_err(AuditError::Encode)?;
        line.push(b'\n');
        // One write of the whole line: O_APPEND keeps it contiguous.
        f.write_all(&line).map_err(self.io("append"))?;
        Ok(rec)
    }

    /// Reads the last complete record; cuts off a partial line a crash left.
    fn tail(&self, f: &mut File) -> Result<(u64, String, u64), AuditError> {
        let len = f.seek(SeekFrom::End(0)).map_err(self.io("seek"))?;
        if len == 0 {
            return Ok((0, GENESIS.to_owned(), 0));
        }
        // Records are a few hundred bytes: a small window almost always holds the last one.
        let mut window = 4 * 1024u64;
        loop {
            let start = len.saturating_sub(window);
            f.seek(SeekFrom::Start(start)).map_err(self.io("seek"))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).map_err(self.io("read"))?;
            let end_ok = buf.last() == Some(&b'\n');
            let body = if end_ok {
                &buf[..buf.len() - 1]
            } else {
                &buf[..]
            };
            let (complete, partial_len) = if end_ok {
                (body, 0u64)
            } else {
                match body.iter().rposition(|&b| b == b'\n') {
                    Some(i) => (&body[..i], (body.len() - i - 1) as u64),
                    None if start == 0 => (&body[..0], body.len() as u64),
                    None => {
                        window *= 4;
                        continue;
                    }
                }
            };
            if partial_len > 0 {
                f.set_len(len - partial_len)
                    .map_err(self.io("truncate partial record"))?;
            }
            if complete.is_empty() {
                return Ok((0, GENESIS.to_owned(), partial_len));
            }
            let last_line_start = complete
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            if last_line_start == 0 && start > 0 {
                window *= 4;
                continue;
            }
            let rec: Record =
                serde_json::from_slice(&complete[last_line_start..]).map_err(|e| {
                    AuditError::Io {
                        path: self.path.clone(),
                        what: "parse last record",
                        source: std::io::Error::other(e),
                    }
                })?;
            return Ok((rec.seq, rec.hash, partial_len));
        }
    }

    /// Checks the whole chain and the head checkpoint.
    ///
    /// # Errors
    /// When the log cannot be read (a missing log verifies as empty).
    pub fn verify(&self) -> Result<Verified, AuditError> {
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Verified {
                    records: 0,
                    head: GENESIS.into(),
                    broken: None,
                });
            }
            Err(e) => return Err(self.io("open")(e)),
        };
        let head: Option<Head> = std::fs::read(self.head_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let mut prev = GENESIS.to_owned();
        let mut n = 0u64;
        let mut head_seen = false;
        let broken = |line: u64, last_good: u64, reason: String| {
            Some(Broken {
                line,
                last_good,
                reason,
            })
        };
        let mut result = None;
        let mut reader = BufReader::new(f);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            let read = reader
                .read_until(b'\n', &mut raw)
                .map_err(self.io("read"))?;
            if read == 0 {
                break;
            }
            let line_no = n + 1;
            if raw.last() != Some(&b'\n') {
                result = broken(line_no, n, "incomplete last record (the writer was interrupted); the next append will cut it off".into());
                break;
            }
            let rec: Record = match serde_json::from_slice(&raw) {
                Ok(r) => r,
                Err(e) => {
                    result = broken(line_no, n, format!("not a valid record: {e}"));
                    break;
                }
            };
            if rec.seq != line_no {
                result = broken(
                    line_no,
                    n,
                    format!(
                        "sequence {} where {line_no} was expected (a record was deleted, inserted or moved)",
                        rec.seq
                    ),
                );
                break;
            }
            if rec.prev != prev {
                result = broken(line_no, n, "does not chain to the record before it (a record was deleted, inserted or moved)".into());
                break;
            }
            let want = hash_of(rec.seq, &rec.ts, &rec.prev, &rec.event)?;
            if want != rec.hash {
                result = broken(
                    line_no,
                    n,
                    "content does not match its hash (the record was edited)".into(),
                );
                break;
            }
            if let Some(h) = &head
                && h.seq == rec.seq
            {
                if h.hash != rec.hash {
                    result = broken(
                        line_no,
                        n,
                        "differs from the head checkpoint (the log was rewritten)".into(),
                    );
                    break;
                }
                head_seen = true;
            }
            prev = rec.hash;
            n += 1;
        }
        if result.is_none()
            && let Some(h) = &head
            && !head_seen
        {
            result = broken(
                n + 1,
                n,
                format!(
                    "the log ends at record {n} but the head checkpoint names record {} (records were cut off the end)",
                    h.seq
                ),
            );
        }
        Ok(Verified {
            records: n,
            head: prev,
            broken: result,
        })
    }

    /// Every readable record, optionally only those of one task.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub fn query(&self, task: Option<&str>) -> Result<Vec<Record>, AuditError> {
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("open")(e)),
        };
        let mut out = Vec::new();
        for line in BufReader::new(f).lines() {
            let line = line.map_err(self.io("read"))?;
            let Ok(rec) = serde_json::from_str::<Record>(&line) else {
                continue;
            };
            if task.is_none_or(|t| rec.event.task() == Some(t)) {
                out.push(rec);
            }
        }
        Ok(out)
    }
}

/// Appends events from a background thread, batching what queues up under
/// one lock, so a hot path (the egress proxy) never waits on the log.
/// `finish` waits until everything sent is written, in order.
pub struct Writer {
    tx: std::sync::mpsc::Sender<AuditEvent>,
    thread: std::thread::JoinHandle<Result<(), AuditError>>,
}

impl Writer {
    /// Starts the writer thread for `sink`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn(sink: Sink) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<AuditEvent>();
        let thread = std::thread::Builder::new()
            .name("taskbox-audit".into())
            .spawn(move || {
                let mut first_error = Ok(());
                while let Ok(ev) = rx.recv() {
                    let mut batch = vec![ev];
                    batch.extend(rx.try_iter());
                    if let Err(e) = sink.append_all(batch)
                        && first_error.is_ok()
                    {
                        first_error = Err(e);
                    }
                }
                first_error
            })?;
        Ok(Self { tx, thread })
    }

    /// A handle to send events with; cheap to clone.
    pub fn sender(&self) -> std::sync::mpsc::Sender<AuditEvent> {
        self.tx.clone()
    }

    /// Waits until every event sent (by any sender, once all are dropped) is written.
    ///
    /// # Errors
    /// The first append that failed.
    pub fn finish(self) -> Result<(), AuditError> {
        drop(self.tx);
        self.thread.join().unwrap_or_else(|_| {
            Err(AuditError::Encode(serde_json::Error::io(
                std::io::Error::other("the audit writer thread panicked"),
            )))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u32) -> AuditEvent {
        AuditEvent::TaskRefused {
            task: format!("t{i}"),
            profile: "p".into(),
            code: 126,
            reason: "r".into(),
        }
    }

    fn log_with(n: u32) -> (tempfile::TempDir, Sink) {
        let d = tempfile::tempdir().unwrap();
        let s = Sink::new(d.path().join("audit.log"));
        for i in 0..n {
            s.append(ev(i)).unwrap();
        }
        (d, s)
    }

    fn lines(s: &Sink) -> Vec<String> {
        std::fs::read_to_string(s.path())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(s: &Sink, l: &[String]) {
        std::fs::write(
            s.path(),
            l.iter().map(|x| format!("{x}\n")).collect::<String>(),
        )
        .unwrap();
    }

    #[test]
    fn intact_log_verifies() {
        let (_d, s) = log_with(5);
        let v = s.verify().unwrap();
        assert_eq!(v.records, 5);
        assert_eq!(v.broken, None);
    }

    #[test]
    fn edit_is_detected_at_the_edited_record() {
        let (_d, s) = log_with(5);
        let mut l = lines(&s);
        l[2] = l[2].replace("\"t2\"", "\"tX\"");
        write_lines(&s, &l);
        let b = s.verify().unwrap().broken.unwrap();
        assert_eq!((b.line, b.last_good), (3, 2));
        assert!(b.reason.contains("edited"), "{}", b.reason);
    }

    #[test]
    fn deletion_is_detected() {
        let (_d, s) = log_with(5);
        let mut l = lines(&s);
        l.remove(1);
        write_lines(&s, &l);
        let b = s.verify().unwrap().broken.unwrap();
        assert_eq!(b.line, 2);
    }

    #[test]
    fn insertion_is_detected() {
        let (_d, s) = log_with(3);
        let mut l = lines(&s);
        let dup = l[1].clone();
        l.insert(1, dup);
        write_lines(&s, &l);
        // the first copy is genuine; the duplicate after it breaks the chain
        assert_eq!(s.verify().unwrap().broken.unwrap().line, 3);
    }

    #[test]
    fn reordering_is_detected() {
        let (_d, s) = log_with(4);
        let mut l = lines(&s);
        l.swap(1, 2);
        write_lines(&s, &l);
        assert_eq!(s.verify().unwrap().broken.unwrap().line, 2);
    }

    #[test]
    fn truncation_of_whole_records_is_detected_by_the_head() {
        let (_d, s) = log_with(4);
        let mut l = lines(&s);
        l.truncate(2);
        write_lines(&s, &l);
        let b = s.verify().unwrap().broken.unwrap();
        assert_eq!((b.line, b.last_good), (3, 2));
        assert!(b.reason.contains("cut off"), "{}", b.reason);
    }

    #[test]
    fn rewritten_chain_is_caught_by_the_head() {
        let (_d, s) = log_with(3);
        let (_d2, other) = log_with(3);
        std::fs::copy(other.path(), s.path()).unwrap();
        assert!(s.verify().unwrap().broken.is_some());
    }

    #[test]
    fn crash_mid_write_is_reported_then_repaired_by_the_next_append() {
        let (_d, s) = log_with(3);
        let mut f = OpenOptions::new().append(true).open(s.path()).unwrap();
        f.write_all(b"{\"seq\":4,\"ts\":\"half").unwrap();
        let b = s.verify().unwrap().broken.unwrap();
        assert_eq!((b.line, b.last_good), (4, 3));
        s.append(ev(9)).unwrap();
        let v = s.verify().unwrap();
        assert_eq!(v.broken, None);
        assert_eq!(v.records, 5);
        let recs = s.query(None).unwrap();
        assert!(matches!(
            recs[3].event,
            AuditEvent::LogRepaired { dropped_bytes: 19 }
        ));
        assert_eq!(recs[4].event, ev(9));
    }

    #[test]
    fn concurrent_appends_keep_the_chain() {
        let (_d, s) = log_with(0);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        s.append(ev(t * 100 + i)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let v = s.verify().unwrap();
        assert_eq!((v.records, v.broken), (100, None));
    }

    #[test]
    fn query_filters_by_task() {
        let (_d, s) = log_with(4);
        let r = s.query(Some("t2")).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].seq, 3);
    }
}
