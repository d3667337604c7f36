//! The orchestrator: profile -> spec -> plan -> backend -> outcome -> audit.
//!
//! Owns the order of a task's steps and the exit-code contract. Refuses to
//! run anything its profile needs but this build cannot enforce.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::audit::{AuditEvent, Sink as AuditSink};
use crate::credentials;
use crate::profile::{
    Backend, Catalog, Delivery, NetMode, PathVars, Profile, ProfileError, WorkspaceMode,
};
use crate::proxy;
use crate::sandbox::native::{self, NativeError, PlanInputs, Sink};
use crate::sandbox::wasm;
use crate::sandbox::{Enforcement, LimitHit, Outcome};
use crate::task::{Lifecycle, StateDir, TaskError, TaskId, TaskRecord};
use crate::workspace::{self, Changeset, WorkspaceError};

/// Exit code when taskbox itself failed.
pub const EXIT_TASKBOX: i32 = 125;
/// Exit code when policy refused to run the command.
pub const EXIT_POLICY: i32 = 126;
/// Exit code when a time limit stopped the command.
pub const EXIT_TIMEOUT: i32 = 124;

/// Why a task could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The profile failed to load.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The native backend failed.
    #[error(transparent)]
    Native(#[from] NativeError),
    /// The audit log could not be written: nothing runs unaudited.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// `run --task` named a task that is not approved.
    #[error("task {task} is not approved ({state}). Hint: `taskbox approve {task}`")]
    NotApproved {
        /// The task.
        task: String,
        /// Its state.
        state: String,
    },
    /// The task store failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// Reading the changeset failed.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    /// The workspace does not exist.
    #[error("workspace {path} is not a directory")]
    NoWorkspace {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ActionError {
    /// The exit code for this failure (DESIGN.md's contract).
    pub fn exit_code(&self) -> i32 {
        match self {
            ActionError::Native(e) => e.exit_code(),
            ActionError::NotApproved { .. } => EXIT_POLICY,
            ActionError::Profile(_)
            | ActionError::Audit(_)
            | ActionError::NoWorkspace { .. }
            | ActionError::Task(_)
            | ActionError::Workspace(_) => EXIT_TASKBOX,
        }
    }
}

/// A request to run one command as a task.
pub struct RunRequest {
    /// Profile name or path.
    pub profile: String,
    /// Workspace (canonicalized here).
    pub workspace: PathBuf,
    /// Working directory, symlinks resolved (defaults to the workspace).
    pub cwd: Option<PathBuf>,
    /// Acting agent.
    pub agent: Option<String>,
    /// Accountable human.
    pub on_behalf_of: Option<String>,
    /// Command and arguments.
    pub argv: Vec<String>,
    /// The caller's environment (only `[env] pass` of it reaches the task).
    pub caller_env: Vec<(String, String)>,
    /// Where taskbox keeps state.
    pub state: StateDir,
    /// Profiles.
    pub catalog: Catalog,
    /// The launch stage binary (`taskbox-stage`, beside taskbox; the WASM
    /// helper is looked for beside it).
    pub stage_exe: PathBuf,
    /// The stage, if the caller started it already (as early as it could,
    /// with namespaces unless `TASKBOX_NO_USERNS=1`); else it starts here.
    pub stage: Option<native::Stage>,
    /// The id reserved for a new task when `stage` was started (the stage
    /// may have made the task's host tmp under it already).
    pub reserved_id: Option<TaskId>,
    /// Where the command's stdout goes.
    pub stdout: Sink,
    /// Where the command's stderr goes.
    pub stderr: Sink,
    /// A command, or the WASM serve loop over the modules in `argv`.
    pub mode: RunMode,
    /// Run this approved task (its recorded profile, command and workspace)
    /// instead of a new one.
    pub approved_task: Option<String>,
}

/// What happened to a task; printed by `run --json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Task id.
    pub task: String,
    /// Profile name.
    pub profile: String,
    /// Profile digest.
    pub profile_digest: String,
    /// Shell-style status taskbox exits with.
    pub status: i32,
    /// The run's outcome, when the command ran.
    pub outcome: Option<Outcome>,
    /// Why it did not run, when it did not.
    pub refused: Option<String>,
    /// The runner's own peak resident set, KiB.
    pub runner_peak_rss_kib: u64,
    /// Microseconds the runner spent before spawning the stage (profile, plan).
    pub prepare_us: u64,
    /// Microseconds spent reading the changeset (and auditing it).
    pub changeset_us: u64,
    /// What an overlay task changed (kept apart until promoted or discarded).
    pub changeset: Option<Changeset>,
    /// For a task waiting for approval: the plan a human approves.
    pub plan: Option<String>,
    /// Hosts the egress proxy refused (`host:port`), in order.
    pub denied_hosts: Vec<String>,
    /// When the task was stopped because its longest credential lease
    /// ended (exit 124): that grant's name.
    pub lease_ended: Option<String>,
    /// Removes granted values from anything printed about the task.
    #[serde(skip)]
    pub redactor: Option<credentials::Redactor>,
}

/// Paths listed in a changeset audit record; the counts are always complete.
const MAX_AUDITED_PATHS: usize = 200;

fn peak_rss_kib() -> u64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map_or(0, |u| u64::try_from(u.max_rss()).unwrap_or(0))
}

/// Name of the file credential that carries the system CAs plus the task's
/// interception CA.
const CA_BUNDLE: &str = "taskbox-ca-bundle.pem";

/// What a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// `argv` is a command (a `.wasm` one picks the WASM backend).
    Command,
    /// `argv` lists WASM modules served warm over JSON lines on stdio.
    ServeWasm,
}

/// Runs one task end to end. Failures before the command starts are audited
/// as refusals and returned in the report with their exit code.
///
/// # Errors
/// Only when even the refusal cannot be audited, or the profile cannot be loaded.
pub fn run(req: RunRequest) -> Result<RunReport, ActionError> {
    let RunRequest {
        profile,
        workspace,
        cwd,
        agent,
        on_behalf_of,
        argv,
        caller_env,
        state,
        catalog,
        stage_exe,
        stage,
        reserved_id,
        stdout,
        stderr,
        mode,
        approved_task,
    } = req;
    let begun = std::time::Instant::now();
    // The stage starts before anything else, so that its start-up and its
    // namespaces overlap with the preparation below. If the task is
    // refused before launch, it exits unused.
    let force_no_userns = caller_env
        .iter()
        .any(|(k, v)| k == "TASKBOX_NO_USERNS" && v == "1");
    let mut stage = match stage {
        Some(s) => s,
        None => native::Stage::spawn(
            &stage_exe,
            native::EarlyNamespaces::before_profile(force_no_userns),
        )?,
    };
    let prepare_us = || u64::try_from(begun.elapsed().as_micros()).unwrap_or(u64::MAX);
    let audit = AuditSink::new(state.audit_log());
    // An approved task runs exactly what was approved: its own profile,
    // command, workspace and attribution, whatever this invocation says.
    let (task, profile, argv, workspace, agent, on_behalf_of, approval) = match approved_task {
        Some(id) => {
            let rec = state.load(&id)?;
            let approval = match rec.lifecycle {
                Lifecycle::Approved { approval } => approval,
                other => {
                    return Err(ActionError::NotApproved {
                        task: rec.id.to_string(),
                        state: format!("{other:?}"),
                    });
                }
            };
            (
                rec.id,
                rec.profile_ref,
                rec.argv,
                rec.workspace,
                rec.agent,
                rec.on_behalf_of,
                Some(approval),
            )
        }
        None => (
            reserved_id.unwrap_or_default(),
            profile,
            argv,
            workspace,
            agent,
            on_behalf_of,
            None,
        ),
    };
    let workspace =
        std::fs::canonicalize(&workspace).map_err(|source| ActionError::NoWorkspace {
            path: workspace.clone(),
            source,
        })?;
    if !workspace.is_dir() {
        return Err(ActionError::NoWorkspace {
            path: workspace,
            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        });
    }
    let prof = catalog.load(&profile, Some(&workspace))?;
    // Network mode host keeps the host's network, which a stage that
    // entered a network namespace on start can never rejoin: start another.
    if prof.net.mode == NetMode::Host && stage.early() == native::EarlyNamespaces::All {
        stage = native::Stage::spawn(&stage_exe, native::EarlyNamespaces::AllButNet)?;
    }
    let refuse = |code: i32, reason: String| -> Result<RunReport, ActionError> {
        audit.append(AuditEvent::TaskRefused {
            task: task.to_string(),
            profile: prof.name.clone(),
            code,
            reason: reason.clone(),
        })?;
        Ok(RunReport {
            task: task.to_string(),
            profile: prof.name.clone(),
            profile_digest: prof.digest().to_owned(),
            status: code,
            outcome: None,
            refused: Some(reason),
            runner_peak_rss_kib: peak_rss_kib(),
            prepare_us: prepare_us(),
            changeset_us: 0,
            changeset: None,
            plan: None,
            denied_hosts: Vec::new(),
            lease_ended: None,
            redactor: None,
        })
    };
    if prof.approval_required {
        let cmd_digest = crate::task::command_digest(&argv, &workspace);
        match &approval {
            None => {
                // Record a pending task with the plan a human will approve.
                state.create_task(&task, false)?;
                state.save(&TaskRecord {
                    id: task.clone(),
                    created: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                        .to_string(),
                    agent: agent.clone(),
                    on_behalf_of: on_behalf_of.clone(),
                    profile: prof.name.clone(),
                    profile_ref: profile.clone(),
                    profile_digest: prof.digest().to_owned(),
                    argv: argv.clone(),
                    workspace: workspace.clone(),
                    overlay: false,
                    denied: Vec::new(),
                    lifecycle: Lifecycle::Pending {
                        command_digest: cmd_digest.clone(),
                    },
                })?;
                let credentials: Vec<String> = prof
                    .grants
                    .iter()
                    .map(|g| {
                        format!(
                            "{} (from {}, as {:?}{})",
                            g.name,
                            g.from.split(':').next().unwrap_or(""),
                            g.deliver,
                            if g.to.is_empty() {
                                String::new()
                            } else {
                                format!(", to {}", g.to.join(", "))
                            }
                        )
                    })
                    .collect();
                audit.append(AuditEvent::ApprovalRequested {
                    task: task.to_string(),
                    profile: format!("{}@{}", prof.name, prof.digest()),
                    argv: argv.clone(),
                    credentials: credentials.clone(),
                })?;
                let plan = format!(
                    "{}command: {}\nworkspace: {}\ncredentials: {}\n",
                    crate::profile::explain(&prof),
                    crate::workspace::display_argv(&argv),
                    workspace.display(),
                    if credentials.is_empty() {
                        "none".to_owned()
                    } else {
                        credentials.join("; ")
                    }
                );
                return Ok(RunReport {
                    task: task.to_string(),
                    profile: prof.name.clone(),
                    profile_digest: prof.digest().to_owned(),
                    status: EXIT_POLICY,
                    outcome: None,
                    refused: Some(format!(
                        "approval required: nothing ran. Hint: `taskbox approve {task}` (or `taskbox deny {task}`), then `taskbox run --task {task}`"
                    )),
                    runner_peak_rss_kib: peak_rss_kib(),
                    prepare_us: prepare_us(),
                    changeset_us: 0,
                    changeset: None,
                    plan: Some(plan),
                    denied_hosts: Vec::new(),
                    lease_ended: None,
                    redactor: None,
                });
            }
            Some(a) => {
                if a.profile_digest != prof.digest() || a.command_digest != cmd_digest {
                    return refuse(
                        EXIT_POLICY,
                        "the approval no longer applies: the profile or the command changed since it was approved. Hint: run it again to request a new approval".into(),
                    );
                }
                audit.append(AuditEvent::ApprovalUsed {
                    task: task.to_string(),
                    approved_by: a.by.clone(),
                })?;
            }
        }
    }
    let home = caller_env
        .iter()
        .find(|(k, _)| k == "HOME")
        .map_or_else(|| PathBuf::from("/"), |(_, v)| PathBuf::from(v));
    let vars = PathVars {
        workspace: workspace.clone(),
        home,
        tmp: PathBuf::from("/tmp"),
    };
    let mut spec = prof.resolve(&vars, &caller_env);
    // Credentials: every source is read now (nothing runs if one is
    // missing); values reach the task only as its profile delivers them,
    // and are redacted from everything taskbox writes.
    let leases = match credentials::grant_all(&prof.grants, &caller_env, &vars.home, task.as_str())
    {
        Ok(l) => l,
        Err(e) => return refuse(EXIT_TASKBOX, e.to_string()),
    };
    let mut secret_files = Vec::new();
    let granted_at = std::time::Instant::now();
    for (l, g) in leases.iter().zip(&prof.grants) {
        match &l.deliver {
            Delivery::Env(var) => {
                spec.env.vars.retain(|(k, _)| k != var);
                spec.env
                    .vars
                    .push((var.clone(), l.secret.expose().to_owned()));
            }
            Delivery::Header => {
                if prof.net.mode != NetMode::Proxy {
                    let e = credentials::CredError::NeedsProxy {
                        name: l.name.clone(),
                    };
                    return refuse(EXIT_TASKBOX, e.to_string());
                }
                let var = credentials::placeholder_var(g);
                spec.env.vars.retain(|(k, _)| *k != var);
                spec.env
                    .vars
                    .push((var, l.placeholder.clone().unwrap_or_default()));
            }
            Delivery::File => secret_files.push(native::SecretFile {
                name: l.name.clone(),
                value: l.secret.expose().to_owned(),
                expires_ms: l
                    .ttl
                    .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            }),
        }
    }
    // A task that outlives its longest lease is stopped (124).
    let lease_end = leases.iter().filter_map(|l| l.ttl).max();
    let mut lease_stops = false;
    if let Some(end) = lease_end {
        let end_ms = u64::try_from(end.as_millis()).unwrap_or(u64::MAX);
        if spec.limits.wall_ms.is_none_or(|w| end_ms < w) {
            spec.limits.wall_ms = Some(end_ms);
            lease_stops = true;
        }
    }
    // The task identity token: signed claims that bind this task to its
    // agent, human, profile and hosts, valid as long as the task may run.
    let mut identity = None;
    if prof.identity {
        let ttl = spec.limits.wall_ms.map_or(
            std::time::Duration::from_secs(15 * 60),
            std::time::Duration::from_millis,
        );
        let claims = credentials::Claims::for_task(
            task.as_str(),
            agent.clone(),
            on_behalf_of.clone(),
            format!("{}@{}", prof.name, prof.digest()),
            prof.net.allow.clone(),
            ttl,
        );
        match credentials::Keys::in_dir(&state.root().join("keys")).mint(&claims) {
            Ok(tok) => {
                spec.env.vars.retain(|(k, _)| k != "TASKBOX_IDENTITY_TOKEN");
                spec.env
                    .vars
                    .push(("TASKBOX_IDENTITY_TOKEN".into(), tok.clone()));
                identity = Some(credentials::Lease {
                    name: "identity".into(),
                    secret: credentials::Secret::new(tok),
                    deliver: Delivery::Env("TASKBOX_IDENTITY_TOKEN".into()),
                    to: prof.net.allow.clone(),
                    placeholder: None,
                    expires: None,
                    ttl: Some(ttl),
                });
            }
            Err(e) => return refuse(EXIT_TASKBOX, e.to_string()),
        }
    }
    let redactor =
        credentials::Redactor::new(&leases.iter().chain(identity.as_ref()).collect::<Vec<_>>());
    let audit = if redactor.is_empty() {
        audit.clone()
    } else {
        let r = redactor.clone();
        audit
            .clone()
            .with_redaction(std::sync::Arc::new(move |s: &str| r.redact(s)))
    };
    let (stdout, stderr): (Sink, Sink) = if redactor.is_empty() {
        (stdout, stderr)
    } else {
        (
            Box::new(credentials::RedactWriter::new(stdout, redactor.clone())),
            Box::new(credentials::RedactWriter::new(stderr, redactor.clone())),
        )
    };
    let broker = std::sync::Arc::new(credentials::Broker::new(&leases));
    // HTTPS to a header grant's hosts: a per-task CA the task trusts (its
    // key stays here) lets the proxy swap the placeholder there too.
    let mut interceptor = None;
    if !broker.is_empty() {
        let hosts: Vec<String> = leases
            .iter()
            .filter(|l| l.deliver == Delivery::Header)
            .flat_map(|l| l.to.iter().cloned())
            .collect();
        let extra = caller_env
            .iter()
            .find(|(k, _)| k == "TASKBOX_UPSTREAM_CA_FILE")
            .and_then(|(_, p)| std::fs::read_to_string(p).ok());
        match proxy::Interceptor::new(&hosts, extra.as_deref()) {
            Ok(i) => {
                let mut bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")
                    .unwrap_or_default();
                bundle.push_str(&i.ca_pem());
                let path = native::secret_file_path(CA_BUNDLE).display().to_string();
                for var in [
                    "SSL_CERT_FILE",
                    "CURL_CA_BUNDLE",
                    "REQUESTS_CA_BUNDLE",
                    "GIT_SSL_CAINFO",
                    "NODE_EXTRA_CA_CERTS",
                    "PIP_CERT",
                ] {
                    spec.env.vars.retain(|(k, _)| k != var);
                    spec.env.vars.push((var.to_owned(), path.clone()));
                }
                secret_files.push(native::SecretFile {
                    name: CA_BUNDLE.to_owned(),
                    value: bundle,
                    expires_ms: None,
                });
                interceptor = Some(std::sync::Arc::new(i));
            }
            Err(e) => return refuse(EXIT_TASKBOX, e.to_string()),
        }
    }
    if !leases.is_empty() || identity.is_some() {
        let sources = prof
            .grants
            .iter()
            .map(|g| g.from.split(':').next().unwrap_or_default().to_owned())
            .chain(identity.iter().map(|_| "taskbox".to_owned()));
        audit.append_all(
            leases
                .iter()
                .chain(identity.as_ref())
                .zip(sources)
                .map(|(l, source)| AuditEvent::CredentialGranted {
                    task: task.to_string(),
                    name: l.name.clone(),
                    source,
                    delivery: l.deliver.as_written(),
                    to: l.to.clone(),
                    ttl_s: l.ttl.map(|t| t.as_secs()),
                    fingerprint: l.secret.fingerprint(),
                })
                .collect(),
        )?;
    }
    // A git worktree keeps its repository outside the workspace: let the task
    // read it (git status, log, diff work), never write it.
    for dir in workspace::git_dirs_outside(&workspace) {
        if !spec
            .fs
            .read
            .iter()
            .chain(&spec.fs.write)
            .any(|r| dir.starts_with(r))
        {
            spec.fs.read.push(dir);
        }
    }
    let cwd = cwd.unwrap_or_else(|| workspace.clone());
    // A WASM tool runs in the helper, as the command of this native task.
    let mut exec_argv = argv.clone();
    let mut inherit = Vec::new();
    let mut wasm_events = Vec::new();
    let wasm_mode = match mode {
        RunMode::ServeWasm => Some(mode),
        RunMode::Command
            if prof.backend == Backend::Wasm
                || argv.first().is_some_and(|a| a.ends_with(".wasm")) =>
        {
            Some(mode)
        }
        RunMode::Command => None,
    };
    if let Some(mode) = wasm_mode {
        match ready_wasm(&stage_exe, &state, &cwd, &argv, mode, &mut spec) {
            Ok((v, files, tools)) => {
                exec_argv = v;
                inherit = files;
                wasm_events = tools
                    .into_iter()
                    .map(|(module, c)| AuditEvent::WasmTool {
                        task: task.to_string(),
                        module,
                        sha256: c.module_sha256,
                        wasm_kind: c.kind.as_str().to_owned(),
                        compiled: c.compiled,
                        compile_ms: c.compile_ms,
                    })
                    .collect();
            }
            Err((code, e)) => return refuse(code, e.to_string()),
        }
    }
    let host_tmp = state.task_tmp(&task);
    let mut hide = vec![state.root().to_path_buf()];
    hide.extend(catalog.user_dir().map(Path::to_path_buf));
    let runtime_dirs = caller_env
        .iter()
        .filter(|(k, _)| k == "XDG_RUNTIME_DIR")
        .map(|(_, v)| PathBuf::from(v))
        .collect();
    let inputs = PlanInputs {
        argv: exec_argv,
        cwd,
        host_tmp: host_tmp.clone(),
        hide,
        runtime_dirs,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        runner_pid: std::process::id() as i32,
        force_no_userns,
        overlay: None,
    };
    let mut plan = match native::plan(&spec, inputs).and_then(|p| {
        native::check_reach(&p)?;
        Ok(p)
    }) {
        Ok(p) => p,
        Err(e) => return refuse(e.exit_code(), e.to_string()),
    };
    plan.inherit = inherit;
    plan.secret_files = secret_files;
    if !wasm_events.is_empty() {
        audit.append_all(wasm_events)?;
    }
    let overlay = prof.workspace == WorkspaceMode::Overlay;
    // The task's directory and record are written once the stage has its
    // plan, while it builds the sandbox (the stage makes the overlay's
    // directories itself): none of it is on the launch's path.
    let dir = state.task_dir(&task);
    if overlay {
        state.ensure_tasks_dir()?;
        plan.overlay = Some(native::OverlayDirs {
            upper: dir.upper(),
            work: dir.work(),
        });
    }
    // Made (and its digests hashed) after the plan is sent: see `record` below.
    let make_record = || TaskRecord {
        id: task.clone(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        agent: agent.clone(),
        on_behalf_of: on_behalf_of.clone(),
        profile: prof.name.clone(),
        profile_ref: profile.clone(),
        profile_digest: prof.digest().to_owned(),
        argv: argv.clone(),
        workspace: workspace.clone(),
        overlay,
        denied: spec
            .fs
            .deny
            .iter()
            .filter_map(|d| d.strip_prefix(&workspace).ok())
            .map(|d| d.to_string_lossy().into_owned())
            .filter(|d| !d.is_empty())
            .collect(),
        lifecycle: Lifecycle::Running,
    };
    let saved = std::cell::RefCell::new(None);
    let prepared = prepare_us();
    let result = launch_and_wait(
        plan,
        stage,
        &|| {
            state.create_task(&task, false)?;
            let record = make_record();
            state.save(&record)?;
            *saved.borrow_mut() = Some(record);
            Ok(())
        },
        stdout,
        stderr,
        &task,
        &audit,
        &prof,
        &argv,
        &workspace,
        agent.clone(),
        on_behalf_of.clone(),
        proxy::Resolver::from_spec(
            caller_env
                .iter()
                .find(|(k, _)| k == "TASKBOX_TEST_RESOLVE")
                .map(|(_, v)| v.as_str()),
        ),
        (!broker.is_empty()).then(|| proxy::Inject {
            injector: std::sync::Arc::clone(&broker) as std::sync::Arc<dyn proxy::Injector>,
            interceptor: interceptor.clone(),
        }),
    );
    if result.is_err() {
        // The stage failed or refused: it removes nothing itself.
        let _ = std::fs::remove_dir_all(&host_tmp);
    }
    let mut record = saved.into_inner().unwrap_or_else(make_record);
    match result {
        Ok((mut outcome, conns)) => {
            for l in leases.iter().filter(|l| l.deliver == Delivery::Header) {
                outcome.enforcement.notes.push(format!(
                    "credential `{}` is injected by the proxy into requests to {}; HTTPS to those hosts is intercepted with a per-task CA the task trusts through SSL_CERT_FILE (and CURL_CA_BUNDLE, REQUESTS_CA_BUNDLE, GIT_SSL_CAINFO, NODE_EXTRA_CA_CERTS, PIP_CERT); one request per connection",
                    l.name,
                    l.to.join(", ")
                ));
            }
            let status = match outcome.limit_hit {
                Some(LimitHit::Wall) => EXIT_TIMEOUT,
                Some(LimitHit::Output | LimitHit::Disk) | None => outcome.exit.status(),
            };
            record.lifecycle = Lifecycle::Ran { status };
            state.save(&record)?;
            let read_at = std::time::Instant::now();
            let mut events: Vec<AuditEvent> = Vec::new();
            for (name, host) in broker.used() {
                events.push(AuditEvent::CredentialUsed {
                    task: task.to_string(),
                    name,
                    host,
                });
            }
            let ended_at = std::time::Instant::now();
            for l in &leases {
                let expired = outcome.leases_ended.contains(&l.name)
                    || l.ttl.is_some_and(|t| granted_at + t <= ended_at);
                events.push(AuditEvent::CredentialEnded {
                    task: task.to_string(),
                    name: l.name.clone(),
                    how: if expired { "expired" } else { "revoked" }.to_owned(),
                });
            }
            let lease_ended = (lease_stops && outcome.limit_hit == Some(LimitHit::Wall))
                .then(|| {
                    leases
                        .iter()
                        .filter(|l| l.ttl == lease_end)
                        .map(|l| l.name.clone())
                        .next()
                })
                .flatten();
            let denied: Vec<String> = conns
                .iter()
                .filter(|c| matches!(c.decision, proxy::Decision::Deny { .. }))
                .map(|c| format!("{}:{}", c.host, c.port))
                .collect();
            let changes = if overlay {
                let cs = workspace::changeset(&dir.upper(), &workspace)?;
                // What the workspace held at each changed path: promote refuses
                // if any of it changes before then.
                // (Nothing changed: no file; promote reads a missing one as empty.)
                if !cs.changes.is_empty() {
                    let base = serde_json::to_vec(&workspace::Base::of(&cs, &workspace))
                        .unwrap_or_default();
                    let base_path = dir.root().join("base.json");
                    std::fs::write(&base_path, base).map_err(|source| TaskError::Io {
                        path: base_path,
                        source,
                    })?;
                }
                // Files the task wrote a granted value into: named (never the
                // value) so diff withholds them and promote refuses them.
                if !redactor.is_empty() {
                    let upper = dir.upper();
                    let withheld: workspace::Withheld = cs
                        .changes
                        .iter()
                        .filter(|c| c.entry == workspace::EntryType::File)
                        .filter_map(|c| {
                            let bytes = std::fs::read(upper.join(&c.path)).ok()?;
                            let names = redactor.names_in(&bytes);
                            (!names.is_empty()).then(|| (c.path.clone(), names))
                        })
                        .collect();
                    if !withheld.is_empty() {
                        workspace::save_withheld(dir.root(), &withheld).map_err(|source| {
                            TaskError::Io {
                                path: dir.root().to_path_buf(),
                                source,
                            }
                        })?;
                    }
                }
                let (added, modified, deleted, renamed, mode_changed) = cs.counts();
                events.push(AuditEvent::Changeset {
                    task: task.to_string(),
                    added,
                    modified,
                    deleted,
                    renamed,
                    mode_changed,
                    paths: cs
                        .changes
                        .iter()
                        .take(MAX_AUDITED_PATHS)
                        .map(|c| workspace::display_path(&c.path))
                        .collect(),
                });
                Some(cs)
            } else {
                None
            };
            events.push(AuditEvent::TaskEnd {
                task: task.to_string(),
                status,
                exit: serde_json::to_value(outcome.exit).unwrap_or_default(),
                limit_hit: outcome.limit_hit.map(|l| format!("{l:?}").to_lowercase()),
                duration_ms: outcome.duration_ms,
                usage: serde_json::to_value(outcome.usage).unwrap_or_default(),
            });
            // One lock and one head update for the task's closing records.
            audit.append_all(events)?;
            Ok(RunReport {
                task: task.to_string(),
                profile: prof.name.clone(),
                profile_digest: prof.digest().to_owned(),
                status,
                outcome: Some(outcome),
                refused: None,
                runner_peak_rss_kib: peak_rss_kib(),
                prepare_us: prepared,
                changeset_us: u64::try_from(read_at.elapsed().as_micros()).unwrap_or(u64::MAX),
                changeset: changes,
                plan: None,
                denied_hosts: denied,
                lease_ended,
                redactor: (!redactor.is_empty()).then(|| redactor.clone()),
            })
        }
        Err(Launch::Refused(e)) => {
            record.lifecycle = Lifecycle::Refused {
                code: e.exit_code(),
            };
            state.create_task(&task, false)?;
            state.save(&record)?;
            state.drop_changes(&task)?;
            refuse(e.exit_code(), e.to_string())
        }
        Err(Launch::Audit(e)) => Err(ActionError::Audit(e)),
        Err(Launch::Task(e)) => Err(ActionError::Task(e)),
    }
}

enum Launch {
    Refused(NativeError),
    Audit(crate::audit::AuditError),
    Task(TaskError),
}

#[allow(
    clippy::too_many_arguments,
    reason = "private step of `run`; each argument is one piece of the task"
)]
fn launch_and_wait(
    plan: native::NativePlan,
    stage: native::Stage,
    record: &dyn Fn() -> Result<(), TaskError>,
    stdout: Sink,
    stderr: Sink,
    task: &TaskId,
    audit: &AuditSink,
    prof: &Profile,
    argv: &[String],
    workspace: &Path,
    agent: Option<String>,
    on_behalf_of: Option<String>,
    resolver: proxy::Resolver,
    injector: Option<proxy::Inject>,
) -> Result<(Outcome, Vec<proxy::ConnRecord>), Launch> {
    let mut running = stage
        .launch(plan, stdout, stderr, task.as_str())
        .map_err(Launch::Refused)?;
    if let Err(e) = record() {
        running.kill();
        let _ = running.wait();
        return Err(Launch::Task(e));
    }
    let enforcement: Enforcement = running.started().map_err(Launch::Refused)?;
    let start = AuditEvent::TaskStart {
        task: task.to_string(),
        agent,
        on_behalf_of,
        profile: prof.name.clone(),
        profile_digest: prof.digest().to_owned(),
        argv: argv.to_vec(),
        workspace: workspace.display().to_string(),
        enforcement: serde_json::to_value(&enforcement).unwrap_or_default(),
    };
    if let Err(e) = audit.append(start) {
        // Nothing runs unaudited.
        running.kill();
        let _ = running.wait();
        return Err(Launch::Audit(e));
    }
    // The proxy serves the listener the stage opened inside the task's
    // network namespace (connections wait in its backlog until then); if it
    // cannot start, the task has no way out at all.
    let egress = if prof.net.mode == NetMode::Proxy {
        let listener = match running.take_listener() {
            Ok(l) => l,
            Err(e) => {
                running.kill();
                let _ = running.wait();
                return Err(Launch::Refused(e));
            }
        };
        let policy = proxy::Policy::new(&prof.net.allow, &prof.net.deny);
        let started = crate::audit::Writer::spawn(audit.clone()).and_then(|writer| {
            let recorder = Box::new(ConnAudit {
                task: task.to_string(),
                tx: writer.sender(),
            });
            proxy::start(listener, policy, resolver, injector, recorder).map(|h| (h, writer))
        });
        match started {
            Ok(h) => Some(h),
            Err(source) => {
                running.kill();
                let _ = running.wait();
                return Err(Launch::Refused(NativeError::Setup {
                    what: "start the egress proxy".into(),
                    source,
                }));
            }
        }
    } else {
        None
    };
    let outcome = running.wait().map_err(Launch::Refused);
    let conns = match egress {
        Some((proxy, writer)) => {
            let conns = proxy.stop();
            // Every connection record lands before the task's end record.
            writer.finish().map_err(Launch::Audit)?;
            conns
        }
        None => Vec::new(),
    };
    outcome.map(|o| (o, conns))
}

/// Sends each proxied connection to the audit writer as it ends.
struct ConnAudit {
    task: String,
    tx: std::sync::mpsc::Sender<AuditEvent>,
}

impl proxy::Recorder for ConnAudit {
    fn record(&self, rec: &proxy::ConnRecord) {
        // The writer outlives the proxy (`finish` runs after `stop`), so a
        // send only fails if the writer thread died; its error is reported
        // by `finish` and fails the task's audit.
        let _ = self.tx.send(AuditEvent::Connection {
            task: self.task.clone(),
            connection: serde_json::to_value(rec).unwrap_or_default(),
        });
    }
}

/// Readies WASM tools: finds the helper beside the runner, compiles each
/// module into the cache (or finds it there), lets the task execute the
/// helper, and returns the helper's command line, the artifacts it inherits
/// and each module with its compile record. `Command` runs `argv[0]` once
/// with `argv[1..]`; `ServeWasm` serves every module in `argv`.
#[expect(
    clippy::type_complexity,
    reason = "a private triple, named at its one caller"
)]
fn ready_wasm(
    stage_exe: &Path,
    state: &StateDir,
    cwd: &Path,
    argv: &[String],
    mode: RunMode,
    spec: &mut crate::profile::SandboxSpec,
) -> Result<
    (
        Vec<String>,
        Vec<native::InheritFile>,
        Vec<(String, wasm::Compiled)>,
    ),
    (i32, wasm::WasmError),
> {
    let helper = wasm::helper_beside(stage_exe).map_err(|e| (EXIT_POLICY, e))?;
    let cache = state.root().join("wasm-cache");
    let modules: &[String] = match mode {
        RunMode::Command => argv.get(..1).unwrap_or_default(),
        RunMode::ServeWasm => argv,
    };
    let mut tools = Vec::new();
    for m in modules {
        let c =
            wasm::ensure_compiled(&cache, &cwd.join(m), &helper).map_err(|e| (EXIT_TASKBOX, e))?;
        tools.push((m.clone(), c));
    }
    if !spec.fs.read.contains(&helper) {
        spec.fs.read.push(helper.clone());
    }
    let (v, files) = match mode {
        RunMode::Command => {
            let c = &tools
                .first()
                .ok_or((EXIT_TASKBOX, wasm::WasmError::Usage("no module".into())))?
                .1;
            let file = native::InheritFile {
                path: c.artifact.clone(),
                env: wasm::ARTIFACT_FD_ENV.to_owned(),
            };
            (wasm::run_argv(&helper, c, spec, cwd, argv), vec![file])
        }
        RunMode::ServeWasm => {
            let named: Vec<(String, wasm::Compiled)> = tools
                .iter()
                .map(|(m, c)| {
                    let stem = Path::new(m)
                        .file_stem()
                        .map_or_else(|| m.clone(), |s| s.to_string_lossy().into_owned());
                    (stem, c.clone())
                })
                .collect();
            let files = named
                .iter()
                .enumerate()
                .map(|(i, (_, c))| native::InheritFile {
                    path: c.artifact.clone(),
                    env: wasm::artifact_var(i),
                })
                .collect();
            (wasm::serve_argv(&helper, &named, spec, cwd), files)
        }
    };
    Ok((v, files, tools))
}
