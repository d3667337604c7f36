//! The WASM backend: tools run in `taskbox-wasm` as the command of a native
//! task, so every refusal here is checked from outside (files, listeners,
//! the changeset, the audit log), as root and as uid 65534.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Mode, Run, TestBox, wasm_tool};

/// `taskbox run -p PROFILE --json -- TOOL.wasm ARGS...`.
fn tool(t: &TestBox, profile: &str, name: &str, args: &[&str]) -> Run {
    let wasm = wasm_tool(name, &t.root);
    let wasm = wasm.to_str().unwrap();
    let mut v = vec!["run", "-p", profile, "--json", "--", wasm];
    v.extend_from_slice(args);
    t.taskbox(&v)
}

fn wasm_events(t: &TestBox, r: &Run) -> Vec<serde_json::Value> {
    let id = r.json()["task"].as_str().unwrap().to_owned();
    t.taskbox(&["audit", "query", "--task", &id])
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"]["kind"] == "wasm-tool")
        .map(|v| v["event"].clone())
        .collect()
}

#[test]
fn a_tool_is_held_to_the_disk_floor() {
    // A tool is the command of a native task: the stage's disk floor
    // holds for it too. A floor no disk here can meet refuses it before
    // it runs (the watch while it runs is the same supervisor's).
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        let p = t.profile(
            "floor",
            "extends = \"explore\"\n[limits]\ndisk_free = \"1000TiB\"\n",
        );
        let r = tool(&t, &p, "wsgrep", &["hello", "."]);
        r.code(126);
        assert!(
            r.stderr.contains("less than limits.disk_free"),
            "{m:?}: {r:?}"
        );
        assert!(
            !r.stdout.contains("hello.txt"),
            "{m:?}: the tool ran: {r:?}"
        );
    }
}

#[test]
fn wsgrep_searches_the_workspace() {
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        std::fs::create_dir_all(t.ws.join("src")).unwrap();
        std::fs::write(t.ws.join("src/lib.rs"), "fn a() {}\n// TODO: b\n").unwrap();
        t.own(&t.ws);
        let r = tool(&t, "explore", "wsgrep", &["TODO", "src"]);
        r.code(0);
        assert!(r.stdout.contains("src/lib.rs:2:// TODO: b"), "{m:?} {r:?}");
        let ev = wasm_events(&t, &r);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0]["wasm_kind"], "module");
        assert_eq!(ev[0]["sha256"].as_str().unwrap().len(), 64);
    }
}

#[test]
fn overlay_writes_land_in_the_changeset_and_readonly_refuses_them() {
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        std::fs::write(t.ws.join("cfg.json"), "{\"a\": 1, \"b\": {\"c\": 2}}\n").unwrap();
        t.own(&t.ws);
        let r = tool(
            &t,
            "explore",
            "wsedit",
            &["cfg.json", r#"{"b": {"c": null, "d": 3}}"#],
        );
        r.code(0);
        // The real workspace is untouched; the change is in the changeset.
        assert_eq!(
            std::fs::read_to_string(t.ws.join("cfg.json")).unwrap(),
            "{\"a\": 1, \"b\": {\"c\": 2}}\n"
        );
        assert_eq!(TestBox::changed(&r), vec!["cfg.json"], "{m:?} {r:?}");
        let id = r.json()["task"].as_str().unwrap().to_owned();
        let diff = t.taskbox(&["task", "diff", &id]);
        assert!(diff.stdout.contains("+    \"d\": 3"), "{}", diff.stdout);

        let r = tool(&t, "readonly", "wsprobe", &["write", "new.txt", "x"]);
        r.code(1);
        assert!(r.stdout.contains("refused"), "{r:?}");
        assert!(!t.ws.join("new.txt").exists());
    }
}

#[test]
fn guests_cannot_leave_their_preopens() {
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        let outside = t.outside.join("file");
        let key = t.home.join(".ssh/id_rsa");
        let p = t.profile(
            "wdeny",
            "extends = \"explore\"\n[filesystem]\ndeny = [\"{workspace}/secret\"]\n",
        );
        std::fs::create_dir_all(t.ws.join("secret")).unwrap();
        std::fs::write(t.ws.join("secret/key"), "WS-SECRET\n").unwrap();
        t.own(&t.ws);
        let attempts = [
            vec!["read", "../outside/file"],
            vec!["read", outside.to_str().unwrap()],
            vec!["write", outside.to_str().unwrap(), "pwned"],
            vec!["read", "secret/key"],
            vec!["read", key.to_str().unwrap()],
        ];
        for a in &attempts {
            let r = tool(&t, &p, "wsprobe", a);
            assert!(
                r.stdout.contains("refused") && !r.stdout.contains("SECRET"),
                "{m:?} {a:?}: {r:?}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(&outside).unwrap(),
            "outside-original\n"
        );
        // A symlink already in the workspace pointing outside is not followed.
        std::os::unix::fs::symlink(&outside, t.ws.join("out-link")).unwrap();
        let r = tool(&t, &p, "wsprobe", &["read", "out-link"]);
        assert!(
            r.stdout.contains("refused") && !r.stdout.contains("outside-original"),
            "{m:?}: {r:?}"
        );
        std::fs::remove_file(t.ws.join("out-link")).unwrap();
        // An outward symlink: refused when made, and should one ever be made,
        // promote refuses to put it in the real workspace.
        for target in ["../outside/file", outside.to_str().unwrap()] {
            let r = tool(&t, &p, "wsprobe", &["symlink", target, "link"]);
            let id = r.json()["task"].as_str().unwrap().to_owned();
            if r.code == 0 {
                let pr = t.taskbox(&["task", "promote", &id]);
                pr.code(125);
                assert!(pr.stderr.contains("points outside"), "{}", pr.stderr);
            } else {
                assert!(r.stdout.contains("refused"), "{r:?}");
                assert!(TestBox::changed(&r).is_empty(), "{r:?}");
            }
            assert!(!t.ws.join("link").is_symlink());
        }
    }
}

#[test]
fn only_granted_variables_reach_the_guest() {
    let t = TestBox::new(Mode::User);
    let r = tool(&t, "explore", "wsprobe", &["env", "RUNNER_SECRET"]);
    r.code(1);
    assert!(!r.stdout.contains("RUNNER-ENV-SECRET"), "{r:?}");
    let r = tool(&t, "explore", "wsprobe", &["env", "HOME"]);
    r.code(0);
    assert!(r.stdout.contains(t.home.to_str().unwrap()), "{r:?}");
    let r = tool(
        &t,
        "explore",
        "wsprobe",
        &["env", "TASKBOX_WASM_ARTIFACT_FD"],
    );
    r.code(1);
}

#[test]
fn memory_bombs_trap_loops_stop_on_time_floods_are_cut() {
    let t = TestBox::new(Mode::User);
    let p = t.profile(
        "wlim",
        "extends = \"explore\"\n[limits]\nmemory = \"64MiB\"\nwall = \"3s\"\noutput = \"1MiB\"\n",
    );
    let r = tool(&t, &p, "wsprobe", &["alloc", "512"]);
    r.code(134);
    assert!(
        r.stderr.contains("trapped") && r.stderr.contains("memory limit"),
        "{}",
        r.stderr
    );
    let started = Instant::now();
    let r = tool(&t, &p, "wsprobe", &["spin"]);
    r.code(124);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "an infinite loop ran {took:?}"
    );
    let r = tool(&t, &p, "wsprobe", &["flood", "100000000"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.len() <= 2 << 20,
        "{} bytes got past a 1 MiB cap",
        r.stdout.len()
    );
    assert_eq!(r.json()["outcome"]["limit_hit"], "output", "{}", r.stderr);
}

#[test]
fn components_reach_only_the_proxy_and_the_proxy_decides() {
    let t = TestBox::new(Mode::Root);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let served = std::thread::spawn(move || {
        let mut hits = 0;
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end && hits < 1 {
            if let Ok((mut s, _)) = l.accept() {
                hits += 1;
                s.set_nonblocking(false).unwrap();
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b);
                let _ = std::io::Write::write_all(
                    &mut s,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nfetched!\n",
                );
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        hits
    });
    let p = t.profile(
        "wnet",
        &format!(
            "extends = \"explore\"\n[network]\nmode = \"proxy\"\nallow = [\"127.0.0.1:{port}\"]\ndeny = [\"evil.test\"]\n"
        ),
    );
    let addr = format!("127.0.0.1:{port}");
    let r = tool(&t, &p, "wsfetch", &["--direct", &addr]);
    r.code(1);
    assert!(r.stderr.contains("refused"), "{r:?}");
    let r = tool(&t, &p, "wsfetch", &["http://evil.test/"]);
    r.code(1);
    assert!(r.stdout.contains("denied by policy"), "{r:?}");
    assert_eq!(r.json()["denied_hosts"][0], "evil.test:80");
    let r = tool(&t, &p, "wsfetch", &[&format!("http://{addr}/")]);
    r.code(0);
    assert!(r.stdout.contains("fetched!"), "{r:?}");
    // The listener saw only the proxied request, never the direct attempt.
    assert_eq!(served.join().unwrap(), 1);
    // With no network at all, the component has no sockets.
    let r = tool(&t, "explore", "wsfetch", &["--direct", &addr]);
    r.code(1);
}

#[test]
fn compiled_modules_are_cached_and_a_corrupt_entry_is_recompiled() {
    let t = TestBox::new(Mode::Root);
    let r = tool(&t, "explore", "wsgrep", &["hello"]);
    r.code(0);
    assert_eq!(wasm_events(&t, &r)[0]["compiled"], true);
    let r = tool(&t, "explore", "wsgrep", &["hello"]);
    r.code(0);
    assert_eq!(wasm_events(&t, &r)[0]["compiled"], false);
    let cache = t.state.join("wasm-cache");
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    // Truncate the artifact: the next run notices and compiles again.
    let bytes = std::fs::read(&entries[0]).unwrap();
    std::fs::write(&entries[0], &bytes[..bytes.len() / 2]).unwrap();
    let r = tool(&t, "explore", "wsgrep", &["hello"]);
    r.code(0);
    assert!(r.stdout.contains("hello.txt:1:hello"), "{r:?}");
    assert_eq!(wasm_events(&t, &r)[0]["compiled"], true);
    assert_eq!(std::fs::read(&entries[0]).unwrap(), bytes);
}

#[test]
fn not_wasm_is_a_clear_error() {
    let t = TestBox::new(Mode::Root);
    std::fs::write(t.root.join("fake.wasm"), "#!/bin/sh\necho hi\n").unwrap();
    let fake = t.root.join("fake.wasm");
    let r = t.taskbox(&["run", "--", fake.to_str().unwrap()]);
    r.code(125);
    assert!(
        r.stderr.contains("not a WebAssembly module"),
        "{}",
        r.stderr
    );
    assert!(!Path::new(&t.ws.join("hi")).exists());
}

#[test]
fn serve_keeps_tools_warm_and_answers_each_line() {
    use std::io::Write as _;
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        std::fs::write(t.ws.join("c.json"), "{\"a\": 1}\n").unwrap();
        t.own(&t.ws);
        let grep = wasm_tool("wsgrep", &t.root);
        let edit = wasm_tool("wsedit", &t.root);
        let probe = wasm_tool("wsprobe", &t.root);
        let mut c = t.cmd(&[
            "run",
            "--serve",
            "--json",
            "--",
            grep.to_str().unwrap(),
            edit.to_str().unwrap(),
            probe.to_str().unwrap(),
        ]);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let outside = t.outside.join("file");
        let requests = [
            r#"{"id":1,"tool":"wsedit","args":["c.json","{\"b\":2}"]}"#.to_owned(),
            r#"{"id":2,"tool":"wsgrep","args":["\"b\"","c.json"]}"#.to_owned(),
            format!(
                r#"{{"id":3,"tool":"wsprobe","args":["read","{}"]}}"#,
                outside.display()
            ),
            r#"{"id":4,"tool":"wsprobe","args":["flood","5000000"]}"#.to_owned(),
            r#"{"id":5,"tool":"nope"}"#.to_owned(),
        ];
        for r in &requests {
            writeln!(stdin, "{r}").unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{m:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), requests.len() + 1, "{} lines", lines.len());
        assert_eq!(lines[0]["exit"], 0, "{}", lines[0]);
        assert!(
            lines[1]["stdout"].as_str().unwrap().contains("\"b\": 2"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2]["stdout"].as_str().unwrap().starts_with("refused"),
            "{}",
            lines[2]
        );
        assert_eq!(lines[3]["stdout_truncated"], true, "flood not truncated");
        assert!(lines[3]["stdout"].as_str().unwrap().len() <= 1 << 20);
        assert!(
            lines[4]["error"]
                .as_str()
                .unwrap()
                .contains("no tool named nope")
        );
        // The whole session is one task; its writes are in the changeset.
        let summary = &lines[5];
        assert_eq!(summary["changeset"]["changes"][0]["path"], "c.json");
        assert_eq!(
            std::fs::read_to_string(t.ws.join("c.json")).unwrap(),
            "{\"a\": 1}\n"
        );
        let id = summary["task"].as_str().unwrap();
        let log = t.taskbox(&["audit", "query", "--task", id]).stdout;
        assert_eq!(log.matches("\"wasm-tool\"").count(), 3, "{log}");
    }
}

#[test]
fn build_wasm_profile_runs_every_command_as_a_wasm_tool() {
    let t = TestBox::new(Mode::User);
    let r = tool(&t, "build-wasm", "wsgrep", &["hello", "hello.txt"]);
    r.code(0);
    assert!(r.stdout.contains("hello.txt:1:hello"), "{r:?}");
    assert_eq!(r.json()["outcome"]["enforcement"]["network"], "proxy");
    // A native program under a wasm profile is not run as a process.
    let r = t.taskbox(&["run", "-p", "build-wasm", "--", "/bin/true"]);
    r.code(125);
    assert!(
        r.stderr.contains("not a WebAssembly module"),
        "{}",
        r.stderr
    );
    let e = t.taskbox(&["profile", "explain", "build-wasm"]);
    assert!(e.stdout.contains("backend: wasm"), "{}", e.stdout);
}

#[test]
fn wasi_http_requests_go_through_the_proxy_and_its_decision() {
    let t = TestBox::new(Mode::User);
    let s = crate::support::net::http_server(|_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nvia-http".to_vec()
    });
    let p = t.profile(
        "whttp",
        &format!(
            "extends = \"explore\"\n[network]\nmode = \"proxy\"\nallow = [\"127.0.0.1:{}\"]\ndeny = [\"evil.test\"]\n",
            s.port
        ),
    );
    let r = tool(
        &t,
        &p,
        "wshttp",
        &[&format!("http://127.0.0.1:{}/x", s.port)],
    );
    r.code(0);
    assert!(r.stdout.contains("via-http"), "{r:?}");
    assert_eq!(s.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Refused by the proxy's policy: an error to the guest, and a record.
    // (A preview-2 command exits 0 or 1: wasi:cli/exit carries no other code.)
    let r = tool(&t, &p, "wshttp", &["http://evil.test/"]);
    r.code(1);
    assert!(r.stderr.contains("HttpRequestDenied"), "{}", r.stderr);
    assert_eq!(r.json()["denied_hosts"][0], "evil.test:80");
    // No proxy (network none): every request is denied, nothing is reached.
    let r = tool(
        &t,
        "explore",
        "wshttp",
        &[&format!("http://127.0.0.1:{}/x", s.port)],
    );
    r.code(1);
    assert!(r.stderr.contains("HttpRequestDenied"), "{}", r.stderr);
    assert_eq!(s.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}
