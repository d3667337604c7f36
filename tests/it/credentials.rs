//! Credentials as leases: granted by a shared-change profile after approval,
//! delivered as its grant says, redacted from everything taskbox writes,
//! injected by the proxy only for the granted host, ended on time. Checked
//! from outside: the loopback server's view, the output, the audit log.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::support::{Mode, Run, TestBox, run};

const VALUE: &str = "tb-SECRET-0123456789abcdef";

/// Runs `script` under `profile` the way a human would: request, approve,
/// run the approved task; `env` is the runner's environment for both runs.
fn approved(t: &TestBox, profile: &str, script: &str, env: &[(&str, &str)]) -> Run {
    let args = [
        "run", "-p", profile, "--json", "--", "/bin/sh", "-c", script,
    ];
    let mut c = t.cmd(&args);
    c.envs(env.iter().copied());
    let r = run(c);
    r.code(126);
    let id = r.json()["task"].as_str().unwrap().to_owned();
    t.taskbox(&["approve", &id, "--by", "carol"]).code(0);
    let mut c = t.cmd(&["run", "--task", &id, "--json"]);
    c.envs(env.iter().copied());
    run(c)
}

fn grant_profile(t: &TestBox, grants: &str, extra: &str) -> String {
    t.profile(
        "creds",
        &format!("extends = \"shared-change\"\n{extra}\n[credentials]\ngrant = [{grants}]\n"),
    )
}

fn audit_text(t: &TestBox) -> String {
    std::fs::read_to_string(t.state.join("audit.log")).unwrap()
}

#[test]
fn env_grants_reach_the_task_and_are_redacted_everywhere() {
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        let p = grant_profile(
            &t,
            r#"{ name = "tok", from = "env:TB_TOKEN", as = "env:MY_TOKEN", ttl = "5m" }"#,
            "",
        );
        // The task uses the value, echoes it, base64s it, URL-encodes it and
        // writes it split across two writes.
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(VALUE.as_bytes()));
        let script = format!(
            r#"test "$(printf %s "$MY_TOKEN" | sha256sum | cut -d' ' -f1)" = {digest} && echo delivered
echo "plain $MY_TOKEN"
printf %s "$MY_TOKEN" | base64
printf 'split '; printf %s "$MY_TOKEN" | head -c 9; sleep 0.2; printf %s "$MY_TOKEN" | tail -c +10; echo
echo "to stderr $MY_TOKEN" >&2
exit 3"#
        );
        let r = approved(&t, &p, &script, &[("TB_TOKEN", VALUE)]);
        r.code(3);
        let b64 = base64::engine::general_purpose::STANDARD.encode(VALUE);
        assert!(r.stdout.contains("delivered"), "{m:?} {r:?}");
        for out in [&r.stdout, &r.stderr, &audit_text(&t)] {
            assert!(
                !out.contains(VALUE) && !out.contains(&b64),
                "{m:?}: value leaked: {out}"
            );
        }
        assert!(r.stdout.contains("plain [redacted:tok]"), "{r:?}");
        assert!(r.stdout.contains("split [redacted:tok]"), "{r:?}");
        assert_eq!(r.stdout.matches("[redacted:tok]").count(), 3, "{r:?}");
        assert!(r.stderr.contains("to stderr [redacted:tok]"), "{r:?}");
        let log = audit_text(&t);
        assert!(
            log.contains("\"kind\":\"credential-granted\"") && log.contains("\"fingerprint\""),
            "{log}"
        );
        assert!(log.contains("\"kind\":\"credential-ended\""), "{log}");
        t.taskbox(&["audit", "verify"]).code(0);
    }
}

#[test]
fn secrets_are_invisible_to_explore_tasks() {
    let t = TestBox::new(Mode::User);
    let mut c = t.cmd(&[
        "run",
        "--",
        "/bin/sh",
        "-c",
        "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c TB_TOKEN; env | grep -c tb-SECRET; true",
    ]);
    c.env("TB_TOKEN", VALUE);
    let r = run(c);
    r.code(0);
    assert!(!r.stdout.contains(VALUE), "{r:?}");
    assert_eq!(r.stdout.trim(), "0\n0", "{r:?}");
    // And an explore profile cannot grant one at all.
    let p = t.profile(
        "bad",
        "extends = \"explore\"\n[credentials]\ngrant = [{ name = \"x\", from = \"env:TB_TOKEN\", as = \"env:X\" }]\n",
    );
    let r = t.taskbox(&["profile", "check", &p]);
    r.code(125);
}

#[test]
fn missing_sources_stop_the_task_before_it_runs() {
    let t = TestBox::new(Mode::Root);
    let p = grant_profile(
        &t,
        r#"{ name = "tok", from = "env:TB_ABSENT", as = "env:MY_TOKEN" }"#,
        "",
    );
    let r = approved(&t, &p, "echo ran >> hello.txt", &[]);
    r.code(125);
    assert!(
        r.stderr.contains("credential `tok`") && r.stderr.contains("missing or empty"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(t.ws.join("hello.txt")).unwrap(),
        "hello\n"
    );
    // A command source runs outside the sandbox and feeds the grant.
    let p = grant_profile(
        &t,
        r#"{ name = "c", from = "cmd:printf cmd-value-42", as = "env:FROM_CMD" }"#,
        "",
    );
    let r = approved(&t, &p, "test \"$FROM_CMD\" = cmd-value-42 && echo got", &[]);
    r.code(0);
    assert!(r.stdout.contains("got"), "{r:?}");
}

/// A loopback HTTP server answering `ok`; keeps every request head.
fn recording_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let s = crate::support::net::http_server(|_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n".to_vec()
    });
    (s.port, s.heads)
}

#[test]
fn header_grants_are_injected_for_their_host_only() {
    let t = TestBox::new(Mode::Root);
    let (port, seen) = recording_server();
    let p = grant_profile(
        &t,
        &format!(
            r#"{{ name = "api", from = "env:TB_API", to = "api.test:{port}", as = "header", ttl = "5m" }}"#
        ),
        &format!(
            "[network]\nmode = \"proxy\"\nallow = [\"api.test:{port}\", \"other.test:{port}\", \"127.0.0.1:{port}\"]\n"
        ),
    );
    let script = format!(
        r#"case "$TB_API" in taskbox-placeholder-api-*) echo placeholder ;; esac
curl -sS -H "Authorization: Bearer $TB_API" http://api.test:{port}/a
curl -sS -i -H "Authorization: Bearer $TB_API" http://other.test:{port}/b
echo "the task printed $TB_API""#
    );
    let mut c_env = vec![
        ("TB_API", VALUE),
        (
            "TASKBOX_TEST_RESOLVE",
            "api.test=127.0.0.1,other.test=127.0.0.1",
        ),
    ];
    c_env.sort();
    let r = approved(&t, &p, &script, &c_env);
    r.code(0);
    assert!(
        r.stdout.contains("placeholder"),
        "the task saw the value: {r:?}"
    );
    assert!(!r.stdout.contains(VALUE), "{r:?}");
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].starts_with("GET /a "), "{heads:?}");
    assert!(
        heads[0].contains(&format!("Authorization: Bearer {VALUE}")),
        "{heads:?}"
    );
    assert!(
        r.stdout.contains("403 Forbidden")
            && r.stdout
                .contains("not a host credential `api` may be sent to"),
        "{r:?}"
    );
    let log = audit_text(&t);
    assert!(!log.contains(VALUE), "{log}");
    assert!(
        log.contains("\"kind\":\"credential-used\"") && log.contains("\"host\":\"api.test\""),
        "{log}"
    );
    assert!(
        log.contains("\"credential\""),
        "the refusal is in the connection record: {log}"
    );
}

#[test]
fn leases_end_on_time() {
    let t = TestBox::new(Mode::User);
    // The file lease ends after 1 s: its file disappears while the task runs.
    // The task outlives its longest lease (3 s) and is stopped: 124.
    let p = grant_profile(
        &t,
        r#"{ name = "f", from = "env:TB_TOKEN", as = "file", ttl = "1s" }, { name = "e", from = "env:TB_TOKEN", as = "env:E", ttl = "3s" }"#,
        "",
    );
    let script = r#"cat "$TASKBOX_CREDENTIAL_FILE_F" | head -c 5; echo; ls -l "$TASKBOX_CREDENTIAL_FILE_F" | cut -c1-10
sleep 2; test -e "$TASKBOX_CREDENTIAL_FILE_F" && echo still || echo gone
sleep 30; echo never"#;
    let started = Instant::now();
    let r = approved(&t, &p, script, &[("TB_TOKEN", VALUE)]);
    r.code(124);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        r.stdout.contains("tb-SE") && r.stdout.contains("-r--------"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("gone") && !r.stdout.contains("never"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("the lease of credential `e` ended"),
        "{}",
        r.stderr
    );
    assert_eq!(r.json()["lease_ended"], "e");
    let log = audit_text(&t);
    assert!(log.contains("\"name\":\"f\",\"how\":\"expired\""), "{log}");
    // Nothing of the file is left on the host.
    assert!(!log.contains(VALUE));
}

#[test]
fn identity_tokens_verify_and_fail_once_tampered_or_rotated_out() {
    let t = TestBox::new(Mode::User);
    let p = t.profile(
        "ident",
        "extends = \"shared-change\"\n[credentials]\nidentity = true\n",
    );
    let r = approved(
        &t,
        &p,
        "printf %s \"$TASKBOX_IDENTITY_TOKEN\" > token.txt; echo \"$TASKBOX_IDENTITY_TOKEN\"",
        &[],
    );
    r.code(0);
    assert!(r.stdout.contains("[redacted:identity]"), "{r:?}");
    let token = std::fs::read_to_string(t.ws.join("token.txt")).unwrap();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
    let v = t.taskbox(&["token", "verify", &token]);
    v.code(0);
    let claims: serde_json::Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(claims["sub"], r.json()["task"]);
    assert!(claims["profile"].as_str().unwrap().starts_with("ident@"));
    // One changed character in the signature: refused.
    let mut bad = token.clone().into_bytes();
    let last = bad.len() - 2;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    t.taskbox(&["token", "verify", std::str::from_utf8(&bad).unwrap()])
        .code(1);
    // Rotated with a grace period it still verifies; once that ends, it fails.
    t.taskbox(&["token", "rotate", "--grace", "1s"]).code(0);
    t.taskbox(&["token", "verify", &token]).code(0);
    std::thread::sleep(Duration::from_millis(2100));
    let v = t.taskbox(&["token", "verify", &token]);
    v.code(1);
    assert!(v.stderr.contains("rotated out"), "{}", v.stderr);
    // And an explore profile cannot ask for one.
    let bad = t.profile(
        "bad-ident",
        "extends = \"explore\"\n[credentials]\nidentity = true\n",
    );
    t.taskbox(&["profile", "check", &bad]).code(125);
}

#[test]
fn the_inventory_lists_every_grant_by_profile() {
    let t = TestBox::new(Mode::Root);
    std::fs::create_dir_all(t.config.join("taskbox/profiles")).unwrap();
    std::fs::write(
        t.config.join("taskbox/profiles/deploy.toml"),
        "extends = \"shared-change\"\n[network]\nmode = \"proxy\"\nallow = [\"api.test\"]\n[credentials]\nidentity = true\ngrant = [{ name = \"gh\", from = \"env:GH_TOKEN\", to = \"api.test\", as = \"header\", ttl = \"15m\" }]\n",
    )
    .unwrap();
    let r = t.taskbox(&["creds", "inventory", "--json"]);
    r.code(0);
    let rows: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["grant"], "gh");
    assert_eq!(rows[0]["delivery"], "header");
    assert_eq!(rows[0]["to"][0], "api.test");
    assert_eq!(rows[0]["ttl"], "15m");
    assert_eq!(rows[0]["approval"], "required");
    assert_eq!(rows[1]["grant"], "identity");
    let table = t.taskbox(&["creds", "inventory"]);
    assert!(
        table.stdout.contains("deploy@") && table.stdout.contains("gh"),
        "{}",
        table.stdout
    );
}

fn tls_server(name: &str) -> (u16, String, Arc<Mutex<Vec<String>>>) {
    let (s, ca) = crate::support::net::https_server(name);
    (s.port, ca, s.heads)
}

#[test]
fn header_grants_reach_https_hosts_through_the_task_ca_and_others_pass_through() {
    let t = TestBox::new(Mode::Root);
    let (port, ca, seen) = tls_server("api.test");
    let (oport, _, oseen) = tls_server("other.test");
    let ca_file = t.root.join("upstream-ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let p = grant_profile(
        &t,
        &format!(
            r#"{{ name = "api", from = "env:TB_API", to = "api.test:{port}", as = "header", ttl = "5m" }}"#
        ),
        &format!(
            "[network]\nmode = \"proxy\"\nallow = [\"api.test:{port}\", \"127.0.0.1:{port}\", \"other.test:{oport}\", \"127.0.0.1:{oport}\"]\n"
        ),
    );
    let script = format!(
        r#"curl -sS -H "Authorization: Bearer $TB_API" https://api.test:{port}/secure
curl -sS -o /dev/null https://other.test:{oport}/ 2>&1 | head -c 60; echo
curl -sS -k -H "Authorization: Bearer $TB_API" https://other.test:{oport}/k"#
    );
    let env = [
        ("TB_API", VALUE),
        (
            "TASKBOX_TEST_RESOLVE",
            "api.test=127.0.0.1,other.test=127.0.0.1",
        ),
        ("TASKBOX_UPSTREAM_CA_FILE", ca_file.to_str().unwrap()),
    ];
    let r = approved(&t, &p, &script, &env);
    assert!(r.stdout.contains("secure"), "{r:?}");
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].starts_with("GET /secure "), "{heads:?}");
    assert!(
        heads[0].contains(&format!("Authorization: Bearer {VALUE}")),
        "injected over TLS: {heads:?}"
    );
    // other.test is not intercepted: the task sees the real certificate
    // (which it does not trust) and, with -k, the server gets the placeholder.
    assert!(
        r.stdout.contains("curl:"),
        "other.test was intercepted: {r:?}"
    );
    let oheads = oseen.lock().unwrap().clone();
    assert_eq!(oheads.len(), 1, "{oheads:?}");
    assert!(
        oheads[0].contains("Bearer taskbox-placeholder-api-") && !oheads[0].contains(VALUE),
        "{oheads:?}"
    );
    assert!(!r.stdout.contains(VALUE) && !audit_text(&t).contains(VALUE));
}

#[test]
fn a_value_written_into_the_workspace_is_withheld_from_diff_and_promote() {
    let t = TestBox::new(Mode::Root);
    let p = grant_profile(
        &t,
        r#"{ name = "tok", from = "env:TB_TOKEN", as = "env:MY_TOKEN" }"#,
        "[workspace]\nmode = \"overlay\"\n",
    );
    let r = approved(
        &t,
        &p,
        "echo \"key=$MY_TOKEN\" > leak.txt; echo fine > fine.txt",
        &[("TB_TOKEN", VALUE)],
    );
    r.code(0);
    let id = r.json()["task"].as_str().unwrap().to_owned();
    let d = t.taskbox(&["task", "diff", &id]);
    d.code(0);
    assert!(!d.stdout.contains(VALUE), "{}", d.stdout);
    assert!(
        d.stdout
            .contains("# CREDENTIAL: leak.txt contains the value of credential tok"),
        "{}",
        d.stdout
    );
    assert!(d.stdout.contains("+fine"), "{}", d.stdout);
    let pr = t.taskbox(&["task", "promote", &id]);
    pr.code(125);
    assert!(pr.stderr.contains("leak.txt (tok)"), "{}", pr.stderr);
    assert!(!t.ws.join("fine.txt").exists() && !t.ws.join("leak.txt").exists());
    t.taskbox(&["task", "promote", &id, "--allow-credentials"])
        .code(0);
    assert!(t.ws.join("leak.txt").exists());
}
