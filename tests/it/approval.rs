//! The approval gate: shared-change never runs unapproved; approvals are bound
//! to the profile and command digests, single-use, and out of a task's reach.

use crate::support::{Mode, TestBox, taskbox_bin};

fn pending(t: &TestBox, profile: &str) -> String {
    let r = t.taskbox(&[
        "run",
        "-p",
        profile,
        "--json",
        "--",
        "/bin/sh",
        "-c",
        "echo deployed >> hello.txt",
    ]);
    r.code(126);
    assert!(
        r.stderr.contains("needs approval")
            && r.stderr
                .contains("command: /bin/sh -c 'echo deployed >> hello.txt'"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(t.ws.join("hello.txt")).unwrap(),
        "hello\n",
        "ran without approval"
    );
    r.json()["task"].as_str().unwrap().to_owned()
}

#[test]
fn shared_change_runs_only_once_approved_and_only_once() {
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        let id = pending(&t, "shared-change");
        t.taskbox(&["run", "--task", &id]).code(126);
        t.taskbox(&["approve", &id, "--by", "carol", "--reason", "reviewed"])
            .code(0);
        t.taskbox(&["run", "--task", &id]).code(0);
        assert_eq!(
            std::fs::read_to_string(t.ws.join("hello.txt")).unwrap(),
            "hello\ndeployed\n",
            "{m:?}"
        );
        t.taskbox(&["run", "--task", &id]).code(126);
        assert_eq!(
            std::fs::read_to_string(t.ws.join("hello.txt")).unwrap(),
            "hello\ndeployed\n",
            "approval reused"
        );
        let log = t.taskbox(&["audit", "query", "--task", &id]).stdout;
        for kind in [
            "approval-requested",
            "\"kind\":\"approved\"",
            "\"by\":\"carol\"",
            "approval-used",
            "task-end",
        ] {
            assert!(log.contains(kind), "{kind}: {log}");
        }
    }
}

#[test]
fn an_approval_does_not_survive_a_changed_profile() {
    let t = TestBox::new(Mode::Root);
    let p = t.profile(
        "deploy",
        "extends = \"shared-change\"\n[limits]\nwall = \"5m\"\n",
    );
    let id = pending(&t, &p);
    t.taskbox(&["approve", &id]).code(0);
    std::fs::write(
        &p,
        "extends = \"shared-change\"\n[limits]\nwall = \"5m\"\n[env]\npass = [\"AWS_SECRET\"]\n",
    )
    .unwrap();
    let r = t.taskbox(&["run", "--task", &id]);
    r.code(126);
    assert!(r.stderr.contains("no longer applies"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(t.ws.join("hello.txt")).unwrap(),
        "hello\n"
    );
}

#[test]
fn the_command_to_approve_is_shown_as_it_is_not_as_it_would_look() {
    // An agent picks the command line a human approves: terminal escapes
    // (erase the line, return) or a bidi override could make it look like
    // another, and an argument with spaces like several.
    let t = TestBox::new(Mode::Root);
    let disguised = "harmless\u{1b}[2K\rrm -rf ~\u{202e}";
    let r = t.taskbox(&[
        "run",
        "-p",
        "shared-change",
        "--",
        "/bin/echo",
        disguised,
        "a b",
    ]);
    r.code(126);
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("command: "))
        .unwrap_or_default();
    assert_eq!(
        line, "command: /bin/echo 'harmless\\x1b[2K\\x0drm -rf ~\\u{202e}' 'a b'",
        "{}",
        r.stderr
    );
    let list = t.taskbox(&["task", "list"]);
    assert!(
        !list.stdout.contains('\u{1b}') && !list.stdout.contains('\u{202e}'),
        "{:?}",
        list.stdout
    );
    // And in the JSON a human reads before approving (same JSON, escaped).
    let id = r
        .stderr
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_owned();
    for args in [
        vec!["task", "show", id.as_str()],
        vec!["audit", "query", "--task", id.as_str()],
    ] {
        let o = t.taskbox(&args);
        o.code(0);
        assert!(!o.stdout.contains('\u{202e}'), "{args:?}: {:?}", o.stdout);
        assert!(o.stdout.contains("\\u202e"), "{args:?}: {}", o.stdout);
    }
}

#[test]
fn denied_tasks_never_run() {
    let t = TestBox::new(Mode::Root);
    let id = pending(&t, "shared-change");
    t.taskbox(&["deny", &id, "--reason", "no"]).code(0);
    t.taskbox(&["run", "--task", &id]).code(126);
    t.taskbox(&["approve", &id]).code(125);
    assert_eq!(
        std::fs::read_to_string(t.ws.join("hello.txt")).unwrap(),
        "hello\n"
    );
}

#[test]
fn a_task_cannot_approve_anything() {
    let t = TestBox::new(Mode::Root);
    let id = pending(&t, "shared-change");
    let bin = taskbox_bin().display().to_string();
    let s = t.state.display();
    let r = t.sh(
        "explore",
        &format!("TASKBOX_STATE_DIR={s} {bin} approve {id}; {bin} approve {id}; echo end"),
    );
    assert!(r.stdout.contains("end"), "{r:?}");
    let list = t.taskbox(&["task", "list"]).stdout;
    assert!(
        list.lines()
            .any(|l| l.starts_with(&id) && l.contains("pending")),
        "{list}"
    );
    t.taskbox(&["run", "--task", &id]).code(126);
}

/// Shared-change writes the workspace in place, with `.git/hooks` and
/// `.git/config` kept read-only. Links planted there before the task must
/// not carry the write grant to them: without namespaces the protection
/// is a Landlock carve, and a carve rule for `hooklink -> .git/hooks`
/// would grant the directory itself (the build before this test wrote
/// both hooks below, the direct one too). Every mode.
#[test]
fn links_in_a_shared_change_workspace_do_not_reach_protected_paths() {
    for m in Mode::ALL {
        let t = TestBox::new(m);
        std::fs::create_dir_all(t.ws.join(".git/hooks")).unwrap();
        std::fs::write(t.ws.join(".git/config"), "[core]\n").unwrap();
        std::os::unix::fs::symlink(".git/hooks", t.ws.join("hooklink")).unwrap();
        std::os::unix::fs::symlink(".git", t.ws.join("gitlink")).unwrap();
        t.own(&t.ws);
        let script = "echo evil > .git/hooks/pre-commit; echo evil > hooklink/post-commit; \
                      echo evil > gitlink/hooks/pre-push; echo '[x]' >> gitlink/config; \
                      echo deployed >> hello.txt; echo end";
        let r = t.taskbox(&[
            "run",
            "-p",
            "shared-change",
            "--json",
            "--",
            "/bin/sh",
            "-c",
            script,
        ]);
        r.code(126);
        let id = r.json()["task"].as_str().unwrap().to_owned();
        t.taskbox(&["approve", &id, "--by", "carol", "--reason", "reviewed"])
            .code(0);
        let r = t.taskbox(&["run", "--task", &id]);
        assert!(r.stdout.contains("end"), "{m:?}: {r:?}");
        for hook in ["pre-commit", "post-commit", "pre-push"] {
            assert!(
                !t.ws.join(".git/hooks").join(hook).exists(),
                "{m:?}: hook {hook} written: {r:?}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(t.ws.join(".git/config")).unwrap(),
            "[core]\n",
            "{m:?}"
        );
        assert_eq!(
            std::fs::read_to_string(t.ws.join("hello.txt")).unwrap(),
            "hello\ndeployed\n",
            "{m:?}: the ordinary write must still land: {r:?}"
        );
    }
}
