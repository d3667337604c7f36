//! The profile commands, end to end.

use crate::support::{Mode, TestBox};

#[test]
fn profile_commands_work() {
    let t = TestBox::new(Mode::Root);
    let r = t.taskbox(&["profile", "list"]);
    r.code(0);
    for p in [
        "readonly",
        "explore",
        "build",
        "ci-untrusted",
        "shared-change",
    ] {
        assert!(r.stdout.contains(p), "{p}: {}", r.stdout);
    }
    t.taskbox(&["profile", "show", "explore"]).code(0);
    let e = t.taskbox(&["profile", "explain", "build"]);
    e.code(0);
    assert!(
        e.stdout.contains("through the proxy, to crates.io"),
        "{}",
        e.stdout
    );
    assert!(
        e.stdout.contains("[WIDENS] network.mode: none -> proxy"),
        "{}",
        e.stdout
    );
    let d = t.taskbox(&["profile", "diff", "explore", "build"]);
    assert!(
        d.stdout
            .contains("build grants, explore does not: host crates.io"),
        "{}",
        d.stdout
    );
    let s = t.taskbox(&["profile", "schema"]);
    let v: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    assert!(v["properties"]["limits"].is_object(), "{v}");
}

#[test]
fn check_reports_file_line_field_and_exits_125() {
    let t = TestBox::new(Mode::Root);
    let good = t.profile("good", "extends = \"explore\"\n[limits]\nwall = \"5m\"\n");
    t.taskbox(&["profile", "check", &good]).code(0);
    let bad = t.profile("bad", "extends = \"explore\"\n[limits]\nwall = \"soon\"\n");
    let r = t.taskbox(&["profile", "check", &bad]);
    r.code(125);
    assert!(
        r.stderr
            .contains(&format!("{bad}:3:8: field `limits.wall`")),
        "{}",
        r.stderr
    );
    let r = t.taskbox(&["run", "-p", &bad, "--", "true"]);
    r.code(125);
    assert!(r.stderr.contains("field `limits.wall`"), "{}", r.stderr);
}

#[test]
fn user_profiles_load_from_the_config_dir() {
    let t = TestBox::new(Mode::Root);
    std::fs::create_dir_all(t.config.join("taskbox/profiles")).unwrap();
    std::fs::write(
        t.config.join("taskbox/profiles/mine.toml"),
        "description = \"mine\"\nextends = \"readonly\"\n",
    )
    .unwrap();
    let r = t.taskbox(&["profile", "list"]);
    assert!(r.stdout.contains("mine"), "{}", r.stdout);
    t.taskbox(&["run", "-p", "mine", "--", "true"]).code(0);
}

#[test]
fn a_profile_inside_the_workspace_cannot_widen() {
    let t = TestBox::new(Mode::Root);
    std::fs::write(
        t.ws.join("agent.toml"),
        "extends = \"explore\"\n[network]\nmode = \"host\"\n",
    )
    .unwrap();
    let r = t.taskbox(&["run", "-p", "./agent.toml", "--", "true"]);
    r.code(125);
    assert!(r.stderr.contains("may only narrow"), "{}", r.stderr);
}

#[test]
fn readonly_profile_refuses_workspace_writes() {
    for m in Mode::ALL {
        let t = TestBox::new(m);
        let r = t.sh("readonly", "echo x > new.txt; cat hello.txt");
        assert!(r.stdout.contains("hello"), "{r:?}");
        assert!(
            !t.ws.join("new.txt").exists(),
            "{m:?}: readonly workspace written"
        );
    }
}

#[test]
fn enforcement_floor_refuses_with_126() {
    for m in [Mode::Root, Mode::RootNoNs] {
        let t = TestBox::new(m);
        let p = t.profile(
            "abi",
            &format!("extends = \"{}\"\n[require]\nlandlock_abi = 10\n", t.base()),
        );
        let r = t.taskbox(&["run", "-p", &p, "--", "/bin/true"]);
        r.code(126);
        assert!(
            r.stderr.contains("Landlock ABI 10 is required"),
            "{}",
            r.stderr
        );
    }
    let t = TestBox::new(Mode::RootNoNs);
    let r = t.taskbox(&["run", "-p", "ci-untrusted", "--", "/bin/true"]);
    r.code(126);
    assert!(r.stderr.contains("requires them"), "{}", r.stderr);
    let t = TestBox::new(Mode::RootNoNs);
    let r = t.sh("explore", "true");
    r.code(0);
    assert!(
        r.json()["outcome"]["enforcement"]["notes"]
            .to_string()
            .contains("Landlock + seccomp only"),
        "{r:?}"
    );
}

#[test]
fn a_header_grant_without_the_proxy_is_refused_not_dropped() {
    let t = TestBox::new(Mode::Root);
    let p = t.profile(
        "grants",
        "extends = \"shared-change\"\n[credentials]\ngrant = [{ name = \"gh\", from = \"env:GH_TOKEN\", to = \"api.github.com\", as = \"header\", ttl = \"5m\" }]\n",
    );
    let r = t.taskbox(&["run", "-p", &p, "--json", "--", "/bin/true"]);
    r.code(126);
    let id = r.json()["task"].as_str().unwrap().to_owned();
    t.taskbox(&["approve", &id]).code(0);
    let mut c = t.cmd(&["run", "--task", &id]);
    c.env("GH_TOKEN", "ghp_test_value");
    let r = crate::support::run(c);
    r.code(125);
    assert!(
        r.stderr.contains("needs `[network] mode = \"proxy\"`"),
        "{}",
        r.stderr
    );
}

#[test]
fn doctor_reports_kernel_features() {
    let t = TestBox::new(Mode::Root);
    let r = t.taskbox(&["doctor", "--json"]);
    r.code(0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let abi = v["kernel"]["landlock_abi"].as_u64().unwrap();
    if abi == 0 {
        eprintln!("SKIP-NOTE: this kernel has no Landlock; doctor must say so");
    }
    assert!(r.stdout.contains("ci-untrusted"), "{}", r.stdout);
}
