//! `TestBox`: a workspace, a fake home with secrets, a state dir and an
//! "outside" directory, plus helpers to run `taskbox` as root or as an
//! unprivileged uid, with or without namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

pub mod net;

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The unprivileged uid/gid tests drop to.
pub const NOBODY: u32 = 65534;

/// Who runs taskbox, and whether namespaces are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As the test's own uid (root on our machines), namespaces on.
    Root,
    /// As uid 65534, namespaces on.
    User,
    /// As the test's uid, namespaces switched off (Landlock + seccomp only).
    RootNoNs,
    /// As uid 65534, namespaces switched off.
    UserNoNs,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 4] = [Mode::Root, Mode::User, Mode::RootNoNs, Mode::UserNoNs];

    pub fn unprivileged(self) -> bool {
        matches!(self, Mode::User | Mode::UserNoNs) && nix::unistd::getuid().is_root()
    }

    fn no_ns(self) -> bool {
        matches!(self, Mode::RootNoNs | Mode::UserNoNs)
    }
}

fn base() -> PathBuf {
    // Not under /tmp (private inside the sandbox) nor under $HOME (may be 0700).
    let b = PathBuf::from("/var/tmp/taskbox-it");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).unwrap();
    b
}

/// The taskbox binary, copied where an unprivileged uid can execute it.
pub fn taskbox_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_BIN_EXE_taskbox"));
        // Copies left by earlier test runs whose process is gone.
        for e in std::fs::read_dir(base()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("bin-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = base().join(format!("bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dst = dir.join("taskbox");
        std::fs::copy(&src, &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The launch stage and the WASM backend's helper live beside the runner.
        for (name, src) in [
            ("taskbox-stage", env!("CARGO_BIN_EXE_taskbox-stage")),
            ("taskbox-wasm", env!("CARGO_BIN_EXE_taskbox-wasm")),
        ] {
            let path = dir.join(name);
            std::fs::copy(src, &path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dst
    })
}

/// An example WASM tool built by `scripts/build-examples`, copied into
/// `dir` (readable by every test uid); returns the copy's path.
pub fn wasm_tool(name: &str, dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/tools")
        .join(format!("{name}.wasm"));
    assert!(
        src.is_file(),
        "{} is missing: run scripts/build-examples (scripts/test does) before the tests",
        src.display()
    );
    let dst = dir.join(format!("{name}.wasm"));
    std::fs::copy(&src, &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).unwrap();
    dst
}

/// One test's world.
pub struct TestBox {
    _dir: tempfile::TempDir,
    /// Root of this test's files.
    pub root: PathBuf,
    /// The workspace.
    pub ws: PathBuf,
    /// A directory outside the workspace the task must not touch.
    pub outside: PathBuf,
    /// A fake home with credential files.
    pub home: PathBuf,
    /// taskbox's state dir.
    pub state: PathBuf,
    /// Config home (user profiles).
    pub config: PathBuf,
    /// Mode.
    pub mode: Mode,
}

/// A finished run.
#[derive(Debug)]
pub struct Run {
    /// Exit status.
    pub code: i32,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

impl Run {
    /// Asserts the exit code, printing output on failure.
    #[track_caller]
    pub fn code(&self, want: i32) -> &Self {
        assert_eq!(
            self.code, want,
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Parses the `--json` summary (last stdout line).
    pub fn json(&self) -> serde_json::Value {
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "no JSON summary ({e}); stdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl TestBox {
    /// A fresh world for `mode`.
    pub fn new(mode: Mode) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("t")
            .tempdir_in(base())
            .unwrap();
        let root = dir.path().to_path_buf();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let t = Self {
            ws: root.join("ws"),
            outside: root.join("outside"),
            home: root.join("home"),
            state: root.join("state"),
            config: root.join("config"),
            root,
            _dir: dir,
            mode,
        };
        for d in [&t.ws, &t.outside, &t.home, &t.state, &t.config] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir_all(t.home.join(".ssh")).unwrap();
        std::fs::write(t.home.join(".ssh/id_rsa"), "SECRET-SSH-KEY\n").unwrap();
        std::fs::write(t.home.join(".netrc"), "machine x password SECRET-NETRC\n").unwrap();
        std::fs::write(t.outside.join("file"), "outside-original\n").unwrap();
        std::fs::write(t.ws.join("hello.txt"), "hello\n").unwrap();
        if mode.unprivileged() {
            for entry in walk(&t.root) {
                std::os::unix::fs::lchown(&entry, Some(NOBODY), Some(NOBODY)).unwrap();
            }
        }
        t
    }

    /// A `taskbox` command in this world (env scrubbed to a known set).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(taskbox_bin());
        c.args(args)
            .current_dir(&self.ws)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.home)
            .env("TASKBOX_STATE_DIR", &self.state)
            .env("XDG_CONFIG_HOME", &self.config)
            .env("RUNNER_SECRET", "RUNNER-ENV-SECRET")
            .stdin(Stdio::null());
        if self.mode.no_ns() {
            c.env("TASKBOX_NO_USERNS", "1");
        }
        if self.mode.unprivileged() {
            // std drops supplementary groups when it sets the uid as root.
            c.uid(NOBODY).gid(NOBODY);
        }
        c
    }

    /// Runs `taskbox ARGS` and collects the result. Without namespaces the
    /// overlay workspace is refused, so a `run` with no `-p` uses [`Self::explore`].
    pub fn taskbox(&self, args: &[&str]) -> Run {
        let explore = self.explore();
        let mut v: Vec<&str> = args.to_vec();
        if v.first() == Some(&"run") && !v.contains(&"-p") {
            v.splice(1..1, ["-p", explore.as_str()]);
        }
        run(self.cmd(&v))
    }

    /// The profile tests use for ordinary work: `explore` with namespaces; a
    /// read-only-workspace child of `readonly` without them (the overlay needs
    /// a mount namespace and is refused otherwise).
    pub fn explore(&self) -> String {
        if self.mode.no_ns() {
            self.profile("fallback", "extends = \"readonly\"\n")
        } else {
            "explore".to_owned()
        }
    }

    /// Whether this mode has namespaces (and so an overlay workspace).
    pub fn has_ns(&self) -> bool {
        !self.mode.no_ns()
    }

    /// The base profile for test profiles: `explore`, or `readonly` without namespaces.
    pub fn base(&self) -> &'static str {
        if self.mode.no_ns() {
            "readonly"
        } else {
            "explore"
        }
    }

    /// `taskbox run -p PROFILE --json -- sh -c SCRIPT` (`explore` means [`Self::explore`]).
    pub fn sh(&self, profile: &str, script: &str) -> Run {
        let p = if profile == "explore" {
            self.explore()
        } else {
            profile.to_owned()
        };
        self.taskbox(&["run", "-p", &p, "--json", "--", "/bin/sh", "-c", script])
    }

    /// `taskbox run -p PROFILE --json -- python3 -c CODE`.
    pub fn py(&self, profile: &str, code: &str) -> Run {
        self.taskbox(&[
            "run",
            "-p",
            profile,
            "--json",
            "--",
            "/usr/bin/python3",
            "-c",
            code,
        ])
    }

    /// Paths in the `--json` summary's changeset.
    pub fn changed(r: &Run) -> Vec<String> {
        r.json()["changeset"]["changes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["path"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes a user profile and returns its path.
    pub fn profile(&self, name: &str, text: &str) -> String {
        let p = self.root.join(format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        if self.mode.unprivileged() {
            nix::unistd::chown(&p, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
        }
        p.to_string_lossy().into_owned()
    }

    /// Chowns a path created by the test to the run's uid.
    pub fn own(&self, p: &Path) {
        if self.mode.unprivileged() {
            for e in walk(p) {
                let _ = std::os::unix::fs::lchown(&e, Some(NOBODY), Some(NOBODY));
            }
        }
    }
}

/// Runs a command with a generous safety timeout, collecting output.
pub fn run(mut c: Command) -> Run {
    let out: Output = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("spawn taskbox");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir()
        && !p.is_symlink()
        && let Ok(rd) = std::fs::read_dir(p)
    {
        for e in rd.flatten() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

/// Whether a process named `comm` exists, a zombie included (its
/// `/proc/PID` stays until it is reaped; its cmdline empties before that).
pub fn comm_exists(comm: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == comm))
}

/// Whether a process with `marker` in its command line is alive on the host.
pub fn process_alive(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .contains(marker)
        })
    })
}
