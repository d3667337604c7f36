//! Exploration never touches the real workspace: overlay, changeset, diff, discard.

use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use crate::support::{Mode, NOBODY, TestBox};

/// Every file under `root` with its bytes and mode, for byte-for-byte comparison.
fn snapshot(root: &Path) -> Vec<(Vec<u8>, Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = std::os::unix::fs::PermissionsExt::mode(&m.permissions());
            let name = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            if m.is_dir() {
                stack.push(p);
                out.push((name, Vec::new(), mode));
            } else if m.file_type().is_symlink() {
                out.push((
                    name,
                    std::fs::read_link(&p)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                    mode,
                ));
            } else {
                out.push((name, std::fs::read(&p).unwrap(), mode));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_deny_path_not_there_in_the_overlay_leaves_the_workspace_writable() {
    // Outside throwaway trees a deny path not there at launch is carved
    // out (the directories on the way take no new entries); the overlay
    // workspace and the private /tmp are the task's alone, so a build
    // still makes `target/` at the top of the workspace.
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        std::fs::write(t.ws.join("present.txt"), "x\n").unwrap();
        t.own(&t.ws);
        let profile = t.profile(
            "ws-deny",
            "extends = \"explore\"\n[filesystem]\ndeny = [\"{workspace}/.env\", \"/tmp/absent-secret\"]\n",
        );
        let r = t.sh(&profile, "mkdir target && echo o > target/out && echo t > top.txt && echo s > /tmp/scratch && echo done");
        r.code(0);
        assert!(r.stdout.contains("done"), "{m:?}: {r:?}");
        let j = r.json();
        let changes = j["changeset"]["changes"].as_array().unwrap();
        for p in ["target", "target/out", "top.txt"] {
            assert!(
                changes.iter().any(|c| c["path"] == p),
                "{m:?}: {p} missing from {j}"
            );
        }
        assert!(
            !t.ws.join("top.txt").exists(),
            "{m:?}: the real workspace changed"
        );
    }
}

#[test]
fn an_explore_task_leaves_the_workspace_byte_for_byte_untouched() {
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        std::fs::create_dir_all(t.ws.join("sub")).unwrap();
        std::fs::write(t.ws.join("sub/gone.txt"), "bye\n").unwrap();
        std::fs::write(t.ws.join("keep.txt"), "same content\n").unwrap();
        std::fs::write(t.ws.join("mode.sh"), "#!/bin/sh\n").unwrap();
        t.own(&t.ws);
        let before = snapshot(&t.ws);
        let weird = "new\\nline \\377.txt";
        let r = t.sh(
            "explore",
            &format!(
                "echo more >> hello.txt; rm sub/gone.txt; mv keep.txt moved.txt; chmod 755 mode.sh; \
                 echo s > 'with space.txt'; printf x > \"$(printf '{weird}')\"; ln -s hello.txt link; mkdir d; echo z > d/z"
            ),
        );
        r.code(0);
        assert_eq!(before, snapshot(&t.ws), "{m:?}: the real workspace changed");
        let j = r.json();
        let changes = j["changeset"]["changes"].as_array().unwrap();
        let kind = |p: &str| {
            changes
                .iter()
                .find(|c| c["path"] == p)
                .map(|c| c["kind"]["type"].as_str().unwrap().to_owned())
                .unwrap_or_else(|| panic!("{p} missing from {j}"))
        };
        assert_eq!(kind("hello.txt"), "modified");
        assert_eq!(kind("sub/gone.txt"), "deleted");
        assert_eq!(kind("moved.txt"), "renamed");
        assert_eq!(kind("mode.sh"), "mode-changed");
        assert_eq!(kind("with space.txt"), "added");
        assert_eq!(kind("new\\nline \\xff.txt"), "added");
        assert_eq!(kind("link"), "added");
        assert_eq!(kind("d"), "added");
        assert_eq!(kind("d/z"), "added");
        assert_eq!(changes.len(), 9, "{j}");

        let id = j["task"].as_str().unwrap().to_owned();
        let d = t.taskbox(&["task", "diff", &id]);
        d.code(0);
        assert!(
            d.stdout.contains("--- a/hello.txt\n+++ b/hello.txt") && d.stdout.contains("+more"),
            "{}",
            d.stdout
        );
        assert!(
            d.stdout.contains("rename keep.txt -> moved.txt"),
            "{}",
            d.stdout
        );
        let st = t.taskbox(&["task", "diff", "--stat", &id]);
        assert!(st.stdout.contains(" 9 changes"), "{}", st.stdout);
        let audit = t.taskbox(&["audit", "query", "--task", &id]);
        assert!(
            audit.stdout.contains("\"kind\":\"changeset\"")
                && audit.stdout.contains("\"deleted\":1"),
            "{}",
            audit.stdout
        );

        t.taskbox(&["task", "discard", &id]).code(0);
        assert!(
            t.taskbox(&["task", "diff", &id]).code != 0,
            "diff after discard"
        );
        let list = t.taskbox(&["task", "list"]);
        assert!(
            list.stdout.contains(&id) && list.stdout.contains("discarded"),
            "{}",
            list.stdout
        );
        assert_eq!(before, snapshot(&t.ws));
    }
}

#[test]
fn binary_files_are_summarised_and_protected_paths_flagged_in_diff() {
    let t = TestBox::new(Mode::Root);
    std::fs::create_dir_all(t.ws.join(".vscode")).unwrap();
    let r = t.sh(
        "explore",
        "printf 'a\\000b' > blob.bin; echo '{}' > .mcp.json",
    );
    r.code(0);
    let id = r.json()["task"].as_str().unwrap().to_owned();
    let d = t.taskbox(&["task", "diff", &id]);
    assert!(
        d.stdout.contains("Binary file blob.bin added"),
        "{}",
        d.stdout
    );
    assert!(d.stdout.contains("# PROTECTED: .mcp.json"), "{}", d.stdout);
}

#[test]
fn diff_shows_terminal_escapes_and_bidi_controls_instead_of_obeying_them() {
    // A reviewer reads `task diff` in a terminal: content that clears the
    // screen or reorders a line would show them something else than what
    // promote applies.
    let t = TestBox::new(Mode::Root);
    let r = t.sh(
        "explore",
        "printf 'ok\\n\\033[2J\\033[Hrm -rf ~\\n' > run.sh; printf 'x = 1 \\342\\200\\256 # admin\\n' > bidi.py",
    );
    r.code(0);
    let id = r.json()["task"].as_str().unwrap().to_owned();
    let d = t.taskbox(&["task", "diff", &id]);
    d.code(0);
    assert!(
        !d.stdout.contains('\u{1b}') && !d.stdout.contains('\u{202e}'),
        "{:?}",
        d.stdout
    );
    assert!(
        d.stdout.contains("+\\x1b[2J\\x1b[Hrm -rf ~"),
        "{}",
        d.stdout
    );
    assert!(d.stdout.contains("\\u{202e}"), "{}", d.stdout);
    assert!(
        d.stdout.contains("# ESCAPED: run.sh") && d.stdout.contains("# ESCAPED: bidi.py"),
        "{}",
        d.stdout
    );
    // Promote applies the real bytes.
    t.taskbox(&["task", "promote", &id]).code(0);
    assert_eq!(
        std::fs::read(t.ws.join("run.sh")).unwrap(),
        b"ok\n\x1b[2J\x1b[Hrm -rf ~\n"
    );
}

#[test]
fn overlay_without_namespaces_is_refused_not_written_in_place() {
    let t = TestBox::new(Mode::RootNoNs);
    let r = t.taskbox(&[
        "run",
        "-p",
        "explore",
        "--",
        "/bin/sh",
        "-c",
        "echo x > leaked.txt",
    ]);
    r.code(126);
    assert!(
        r.stderr
            .contains("overlay workspace needs a mount namespace"),
        "{}",
        r.stderr
    );
    assert!(!t.ws.join("leaked.txt").exists());
}

#[test]
fn root_makes_a_fresh_state_dir_under_another_users_directory() {
    // As root the stage makes the overlay's directories from inside its
    // user namespace, where it cannot create the state dir itself in a
    // directory of another user's: the runner must have made it first
    // (they raced; the stage won about 1 launch in 4).
    if !nix::unistd::getuid().is_root() {
        eprintln!(
            "SKIPPED root_makes_a_fresh_state_dir...: the case is root's; this run is not root"
        );
        return;
    }
    let base = tempfile::tempdir_in("/var/tmp").unwrap();
    let ws = base.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    for p in [base.path(), ws.as_path()] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    for i in 0..20 {
        let state = base.path().join(format!("state{i}"));
        let out = std::process::Command::new(crate::support::taskbox_bin())
            .args(["run", "-p", "explore", "--", "/bin/true"])
            .current_dir(&ws)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", base.path())
            .env("TASKBOX_STATE_DIR", &state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "launch {i}, fresh state dir: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
