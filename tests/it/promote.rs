//! Promote and revert: one commit with provenance, all-or-nothing across a
//! crash, refusals for conflicts, protected paths and escaping entries.

use std::path::Path;
use std::process::Command;

use crate::support::{Mode, Run, TestBox, run};

fn git(t: &TestBox, args: &[&str]) -> String {
    // The test (root) runs git on repositories owned by uid 65534 too.
    let cfg = t.root.join("gitconfig");
    std::fs::write(&cfg, "[safe]\n\tdirectory = *\n").unwrap();
    let out = Command::new("git")
        .arg("-C")
        .arg(&t.ws)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", &cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn repo(t: &TestBox) {
    std::fs::create_dir_all(t.ws.join("sub")).unwrap();
    std::fs::write(t.ws.join("sub/b.txt"), "b\n").unwrap();
    std::fs::write(t.ws.join("keep.txt"), "keep\n").unwrap();
    git(t, &["init", "-q", "-b", "main"]);
    git(t, &["add", "-A"]);
    git(
        t,
        &[
            "-c",
            "user.name=H",
            "-c",
            "user.email=h@x",
            "commit",
            "-qm",
            "init",
        ],
    );
    t.own(&t.ws);
}

/// `taskbox ARGS` as the human who promotes (a git identity for the commit).
fn human_cmd(t: &TestBox, args: &[&str]) -> Command {
    let mut c = t.cmd(args);
    c.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Alice")
        .env("GIT_AUTHOR_EMAIL", "alice@example.com")
        .env("GIT_COMMITTER_NAME", "Alice")
        .env("GIT_COMMITTER_EMAIL", "alice@example.com")
        .env("USER", "alice");
    c
}

/// [`human_cmd`], run to its end.
fn human(t: &TestBox, args: &[&str]) -> Run {
    run(human_cmd(t, args))
}

const SCRIPT: &str = "echo more >> hello.txt; rm sub/b.txt; mv keep.txt moved.txt; echo n > 'new file.txt'; mkdir d; echo z > d/z";

fn task(t: &TestBox) -> String {
    let r = t.taskbox(&[
        "run",
        "--agent",
        "claude",
        "--on-behalf-of",
        "alice@example.com",
        "--json",
        "--",
        "/bin/sh",
        "-c",
        SCRIPT,
    ]);
    r.code(0);
    r.json()["task"].as_str().unwrap().to_owned()
}

fn assert_promoted(ws: &Path) {
    assert_eq!(
        std::fs::read_to_string(ws.join("hello.txt")).unwrap(),
        "hello\nmore\n"
    );
    assert!(!ws.join("sub/b.txt").exists() && !ws.join("keep.txt").exists());
    assert_eq!(
        std::fs::read_to_string(ws.join("moved.txt")).unwrap(),
        "keep\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("new file.txt")).unwrap(),
        "n\n"
    );
    assert_eq!(std::fs::read_to_string(ws.join("d/z")).unwrap(), "z\n");
}

fn assert_original(ws: &Path) {
    assert_eq!(
        std::fs::read_to_string(ws.join("hello.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("sub/b.txt")).unwrap(),
        "b\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("keep.txt")).unwrap(),
        "keep\n"
    );
    assert!(
        !ws.join("moved.txt").exists()
            && !ws.join("new file.txt").exists()
            && !ws.join("d").exists()
    );
}

#[test]
fn promote_makes_one_commit_with_trailers_and_revert_undoes_it() {
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        repo(&t);
        let before = git(&t, &["rev-parse", "HEAD"]);
        let id = task(&t);
        assert_original(&t.ws);
        human(&t, &["task", "promote", &id]).code(0);
        assert_promoted(&t.ws);
        assert_eq!(
            git(&t, &["rev-parse", "HEAD~1"]),
            before,
            "{m:?}: not exactly one commit"
        );
        let msg = git(&t, &["log", "-1", "--format=%B%n--%cn <%ce>"]);
        for trailer in [
            "Taskbox-Task: ",
            "Taskbox-Agent: claude",
            "Taskbox-On-Behalf-Of: alice@example.com",
            "Taskbox-Profile: explore@",
        ] {
            assert!(msg.contains(trailer), "{trailer} missing: {msg}");
        }
        assert!(
            msg.contains(&id) && msg.contains("--Alice <alice@example.com>"),
            "{msg}"
        );
        assert_eq!(
            git(&t, &["status", "--porcelain"]),
            "",
            "{m:?}: work tree and index must match the commit"
        );
        let audit = t.taskbox(&["audit", "query", "--task", &id]);
        assert!(
            audit.stdout.contains("\"kind\":\"promoted\"")
                && audit.stdout.contains("\"by\":\"alice\""),
            "{}",
            audit.stdout
        );

        human(&t, &["task", "revert", &id]).code(0);
        assert_original(&t.ws);
        assert!(
            git(&t, &["log", "-1", "--format=%s"]).starts_with("Revert"),
            "revert is a commit"
        );
        assert!(
            t.taskbox(&["audit", "query", "--task", &id])
                .stdout
                .contains("\"kind\":\"reverted\"")
        );
    }
}

#[test]
fn promote_to_a_new_branch_leaves_the_work_tree() {
    let t = TestBox::new(Mode::Root);
    repo(&t);
    let id = task(&t);
    human(&t, &["task", "promote", &id, "--branch", "agent/work"]).code(0);
    assert_original(&t.ws);
    let files = git(&t, &["ls-tree", "-r", "--name-only", "agent/work"]);
    assert!(
        files.contains("moved.txt") && files.contains("d/z") && !files.contains("keep.txt"),
        "{files}"
    );
}

#[test]
fn promote_outside_git_and_revert() {
    let t = TestBox::new(Mode::User);
    std::fs::create_dir_all(t.ws.join("sub")).unwrap();
    std::fs::write(t.ws.join("sub/b.txt"), "b\n").unwrap();
    std::fs::write(t.ws.join("keep.txt"), "keep\n").unwrap();
    t.own(&t.ws);
    let id = task(&t);
    human(&t, &["task", "promote", &id]).code(0);
    assert_promoted(&t.ws);
    human(&t, &["task", "revert", &id]).code(0);
    assert_original(&t.ws);
}

#[test]
fn a_promote_killed_midway_is_finished_by_the_next_one_never_left_half() {
    for crash_at in ["1", "3"] {
        let t = TestBox::new(Mode::Root);
        repo(&t);
        let id = task(&t);
        let mut c = t.cmd(&["task", "promote", &id]);
        c.env("TASKBOX_TEST_CRASH_AFTER_STEPS", crash_at)
            .env("GIT_AUTHOR_NAME", "A")
            .env("GIT_AUTHOR_EMAIL", "a@x")
            .env("GIT_COMMITTER_NAME", "A")
            .env("GIT_COMMITTER_EMAIL", "a@x");
        let r = run(c);
        assert_ne!(r.code, 0, "the fault injection did not fire");
        // the branch has not moved: git still shows the original commit
        assert_eq!(git(&t, &["log", "-1", "--format=%s"]).trim(), "init");
        human(&t, &["task", "promote", &id]).code(0);
        assert_promoted(&t.ws);
        let subject = git(&t, &["log", "-1", "--format=%s"]);
        assert!(subject.starts_with("taskbox:"), "{subject}");
        assert_eq!(git(&t, &["status", "--porcelain"]), "");
    }
}

#[test]
fn promote_refuses_a_deny_path_the_task_made_in_the_overlay() {
    // A deny path not there at launch cannot be masked, and in the overlay
    // the task may make it (the layer is its own); it never reaches the
    // workspace: neither made, nor renamed there, nor renamed from a glob's
    // match.
    let t = TestBox::new(Mode::Root);
    repo(&t);
    let profile = t.profile(
        "ws-deny",
        "extends = \"explore\"\n[filesystem]\ndeny = [\"{workspace}/.env\", \"{workspace}/sub/*.key\"]\n",
    );
    for script in [
        "echo TOKEN=x > .env; echo ok > fine.txt",
        "mkdir -p .env/d && echo x > .env/d/f; echo ok > fine.txt",
        "echo k > sub/new.key; echo ok > fine.txt",
        "mv keep.txt .env; echo ok > fine.txt",
    ] {
        let r = t.sh(&profile, script);
        r.code(0);
        let id = r.json()["task"].as_str().unwrap().to_owned();
        let d = t.taskbox(&["task", "diff", &id]);
        assert!(d.stdout.contains("# DENIED: "), "{script}: {}", d.stdout);
        let p = human(&t, &["task", "promote", &id, "--allow-protected"]);
        p.code(125);
        assert!(
            p.stderr.contains("denies")
                && (p.stderr.contains(".env") || p.stderr.contains("sub/new.key")),
            "{script}: {}",
            p.stderr
        );
        assert!(
            !t.ws.join("fine.txt").exists()
                && !t.ws.join(".env").exists()
                && t.ws.join("keep.txt").exists(),
            "{script}: a refused promote changed the workspace"
        );
    }
    // What the deny paths do not name still promotes.
    let r = t.sh(&profile, "echo k > sub/new.pub; echo ok > fine.txt");
    let id = r.json()["task"].as_str().unwrap().to_owned();
    human(&t, &["task", "promote", &id]).code(0);
    assert!(t.ws.join("sub/new.pub").exists() && t.ws.join("fine.txt").exists());
}

#[test]
fn a_task_that_ran_git_commit_promotes_as_one_commit_and_no_git_state() {
    // Agents commit as they go. The task's objects, refs and index are its
    // own; a `.git/modules/*/config` it wrote (a submodule's fsmonitor runs
    // on the human's next `git status` there) must not land either.
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        repo(&t);
        std::fs::create_dir_all(t.ws.join(".git/modules/sub")).unwrap();
        std::fs::write(t.ws.join(".git/modules/sub/config"), "[core]\n").unwrap();
        t.own(&t.ws);
        let before = git(&t, &["rev-parse", "HEAD"]);
        let r = t.sh(
            "explore",
            "echo new > agent.txt && git add agent.txt && git -c user.name=A -c user.email=a@x -c safe.directory='*' commit -qm 'agent commit' && printf '\\tfsmonitor = touch /tmp/pwned\\n' >> .git/modules/sub/config && echo committed",
        );
        assert!(r.stdout.contains("committed"), "{m:?}: {r:?}");
        let id = r.json()["task"].as_str().unwrap().to_owned();
        let stat = t.taskbox(&["task", "diff", &id, "--stat"]);
        assert!(
            stat.stdout.contains("[GIT STATE, not promoted]"),
            "{}",
            stat.stdout
        );
        let p = human(&t, &["task", "promote", &id]);
        p.code(0);
        assert!(p.stderr.contains("under .git were not promoted"), "{p:?}");
        assert_eq!(
            git(&t, &["rev-parse", "HEAD~1"]),
            before,
            "{m:?}: not one commit"
        );
        assert!(
            git(&t, &["log", "-1", "--format=%B"]).contains("Taskbox-Task: "),
            "{m:?}: the commit is the human's promote, not the agent's"
        );
        assert_eq!(
            std::fs::read_to_string(t.ws.join("agent.txt")).unwrap(),
            "new\n"
        );
        assert_eq!(
            std::fs::read_to_string(t.ws.join(".git/modules/sub/config")).unwrap(),
            "[core]\n",
            "{m:?}: the task's git state was promoted"
        );
        assert_eq!(git(&t, &["status", "--porcelain"]), "", "{m:?}");
    }
}

#[test]
fn fifos_and_sockets_the_task_made_neither_block_nor_land() {
    // Opening a fifo blocks until a writer comes: promote once hung for
    // ever on one the task made, and the task's end on a host fifo it removed.
    let t = TestBox::new(Mode::Root);
    repo(&t);
    nix::unistd::mkfifo(
        &t.ws.join("hostpipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let r = t.sh(
        "explore",
        "mkfifo pipe && rm hostpipe && python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"sock\")' && echo x > a.txt",
    );
    r.code(0);
    let id = r.json()["task"].as_str().unwrap().to_owned();
    let mut child = human_cmd(&t, &["task", "promote", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("promote hung on a fifo");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("3 fifos, sockets or devices"), "{stderr}");
    assert_eq!(std::fs::read_to_string(t.ws.join("a.txt")).unwrap(), "x\n");
    assert!(!t.ws.join("pipe").exists() && !t.ws.join("sock").exists());
    assert!(
        t.ws.join("hostpipe").exists(),
        "the host's fifo was removed"
    );
}

#[test]
fn promote_refuses_conflicts_protected_paths_and_symlinked_parents() {
    let t = TestBox::new(Mode::Root);
    repo(&t);
    let id = task(&t);
    std::fs::write(t.ws.join("hello.txt"), "changed by a human\n").unwrap();
    let r = human(&t, &["task", "promote", &id]);
    r.code(125);
    assert!(
        r.stderr.contains("workspace changed") && r.stderr.contains("hello.txt"),
        "{}",
        r.stderr
    );
    assert!(
        t.ws.join("keep.txt").exists(),
        "a refused promote changed the workspace"
    );

    let t = TestBox::new(Mode::Root);
    repo(&t);
    let r = t.sh("explore", "echo '{}' > .mcp.json; echo ok > fine.txt");
    let id = r.json()["task"].as_str().unwrap().to_owned();
    let r = human(&t, &["task", "promote", &id]);
    r.code(125);
    assert!(
        r.stderr.contains("protected") && r.stderr.contains(".mcp.json"),
        "{}",
        r.stderr
    );
    assert!(!t.ws.join("fine.txt").exists());
    human(&t, &["task", "promote", &id, "--allow-protected"]).code(0);
    assert!(t.ws.join(".mcp.json").exists() && t.ws.join("fine.txt").exists());

    let t = TestBox::new(Mode::Root);
    repo(&t);
    let r = t.sh("explore", "echo x > sub/new.txt");
    let id = r.json()["task"].as_str().unwrap().to_owned();
    std::fs::remove_dir_all(t.ws.join("sub")).unwrap();
    std::os::unix::fs::symlink(&t.outside, t.ws.join("sub")).unwrap();
    let r = human(&t, &["task", "promote", &id]);
    r.code(125);
    assert!(r.stderr.contains("outside the workspace"), "{}", r.stderr);
    assert!(
        !t.outside.join("new.txt").exists(),
        "promote wrote through a symlinked parent"
    );

    // Symlinks the task made that point outside (absolute, or `..` past the
    // root) are refused: once promoted, host tools would follow them.
    for link in [
        format!("ln -s {}/file out", t.outside.display()),
        "mkdir -p d && ln -s ../../outside/file d/out".to_owned(),
    ] {
        let t = TestBox::new(Mode::Root);
        repo(&t);
        let r = t.sh("explore", &format!("{link}; echo ok > fine.txt"));
        let id = r.json()["task"].as_str().unwrap().to_owned();
        let r = human(&t, &["task", "promote", &id]);
        r.code(125);
        assert!(
            r.stderr.contains("points outside the workspace"),
            "{}",
            r.stderr
        );
        assert!(!t.ws.join("fine.txt").exists(), "a refused promote wrote");
    }
    let t = TestBox::new(Mode::Root);
    repo(&t);
    let r = t.sh("explore", "mkdir -p d && ln -s ../hello.txt d/in");
    let id = r.json()["task"].as_str().unwrap().to_owned();
    human(&t, &["task", "promote", &id]).code(0);
    assert!(t.ws.join("d/in").is_symlink());
}

#[test]
fn git_worktrees_work_inside_and_promote() {
    let t = TestBox::new(Mode::Root);
    repo(&t);
    let wt = t.root.join("wt");
    git(
        &t,
        &["worktree", "add", "-q", "-b", "wt", wt.to_str().unwrap()],
    );
    let mut c = t.cmd(&[
        "run",
        "-w",
        wt.to_str().unwrap(),
        "--json",
        "--",
        "/bin/sh",
        "-c",
        "git status --short && echo x > new.txt && git status --short",
    ]);
    c.current_dir(&wt)
        .env("GIT_CONFIG_GLOBAL", t.root.join("gitconfig"));
    let r = run(c);
    r.code(0);
    assert!(
        r.stdout.contains("?? new.txt"),
        "git does not work in a worktree inside: {r:?}"
    );
    let id = r.json()["task"].as_str().unwrap().to_owned();
    let mut c = t.cmd(&["task", "promote", &id]);
    c.env("GIT_CONFIG_GLOBAL", t.root.join("gitconfig"))
        .env("GIT_AUTHOR_NAME", "A")
        .env("GIT_AUTHOR_EMAIL", "a@x")
        .env("GIT_COMMITTER_NAME", "A")
        .env("GIT_COMMITTER_EMAIL", "a@x");
    run(c).code(0);
    assert!(wt.join("new.txt").exists());
    let files = git(&t, &["ls-tree", "-r", "--name-only", "wt"]);
    assert!(files.contains("new.txt"), "{files}");
    assert!(!t.ws.join("new.txt").exists(), "the main work tree changed");
}
