//! Egress by name: the per-task proxy is the only way out; every connection
//! is decided, audited, and checked from outside by a loopback server.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::{Mode, TestBox, run};

use crate::support::net::{Server, http_server};

/// Answers every request with `hello`.
fn server() -> Server {
    http_server(|_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n".to_vec()
    })
}

/// The task's connection records in the audit log.
fn connections(t: &TestBox, r: &crate::support::Run) -> Vec<serde_json::Value> {
    let id = r.json()["task"].as_str().unwrap().to_owned();
    let log = t.taskbox(&["audit", "query", "--task", &id]).stdout;
    log.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"]["kind"] == "connection")
        .map(|v| v["event"]["connection"].clone())
        .collect()
}

fn proxy_profile(t: &TestBox, allow: &str) -> String {
    t.profile("egress", &format!("extends = \"explore\"\n[network]\nmode = \"proxy\"\nallow = [{allow}]\ndeny = [\"evil.test\"]\n"))
}

#[test]
fn allowed_hosts_are_reached_over_http_and_connect_and_audited() {
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        let s = server();
        let p = proxy_profile(&t, &format!("\"127.0.0.1:{}\"", s.port));
        let url = format!("http://127.0.0.1:{}/", s.port);
        let r = t.sh(&p, &format!("curl -sS {url}; curl -sS -p {url}"));
        r.code(0);
        assert_eq!(r.stdout.matches("hello").count(), 2, "{r:?}");
        assert_eq!(s.hits.load(Ordering::SeqCst), 2, "{m:?}");
        let conns = connections(&t, &r);
        assert_eq!(conns.len(), 2, "{conns:?}");
        assert_eq!(conns[0]["protocol"], "http");
        assert_eq!(conns[1]["protocol"], "connect");
        for c in &conns {
            assert_eq!(c["decision"]["rule"], format!("127.0.0.1:{}", s.port));
            assert_eq!(c["addr"], format!("127.0.0.1:{}", s.port));
            assert!(
                c["bytes_down"].as_u64().unwrap() > 0 && c["bytes_up"].as_u64().unwrap() > 0,
                "{c}"
            );
        }
    }
}

#[test]
fn denied_hosts_get_a_policy_answer_and_a_summary() {
    let t = TestBox::new(Mode::Root);
    let s = server();
    let p = proxy_profile(&t, &format!("\"127.0.0.1:{}\"", s.port));
    let r = t.sh(&p, "curl -sS -i http://evil.test/x; curl -sS -i http://other.test/; curl -sS -p https://other.test/ 2>&1 | head -2");
    assert!(
        r.stdout.contains("403 Forbidden") && r.stdout.contains("X-Taskbox-Denied: deny evil.test"),
        "{r:?}"
    );
    assert!(
        r.stdout
            .contains("taskbox: egress to other.test:80 denied by policy (not in the allow list)"),
        "{r:?}"
    );
    let j = r.json();
    let denied = j["denied_hosts"].to_string();
    assert!(
        denied.contains("evil.test:80") && denied.contains("other.test:443"),
        "{j}"
    );
    assert!(
        r.stderr.contains("the egress proxy refused"),
        "{}",
        r.stderr
    );
    assert_eq!(s.hits.load(Ordering::SeqCst), 0);
}

#[test]
fn nothing_goes_around_the_proxy() {
    let t = TestBox::new(Mode::Root);
    let s = server();
    // A host UDP listener on loopback: the task's datagrams must never arrive.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let p = proxy_profile(&t, &format!("\"127.0.0.1:{}\"", s.port));
    let py = format!(
        "import socket\n\
         try:\n s=socket.create_connection(('127.0.0.1',{port}),timeout=2); s.send(b'GET / HTTP/1.0\\r\\n\\r\\n'); print('RAW', s.recv(10))\nexcept Exception as e: print('raw refused', e)\n\
         try:\n u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b'x',('127.0.0.1',{udp_port})); print('udp sent (into an empty namespace)')\nexcept Exception as e: print('udp refused', e)\n\
         try:\n print('DNS', socket.gethostbyname('example.com'))\nexcept Exception as e: print('dns fails', e)\n",
        port = s.port
    );
    let r = t.sh(
        &p,
        &format!(
            "curl -sS --noproxy '*' -m 3 http://127.0.0.1:{}/ ; /usr/bin/python3 -c \"{}\"",
            s.port,
            py.replace('"', "\\\"")
        ),
    );
    assert!(
        !r.stdout.contains("hello") && !r.stdout.contains("RAW") && !r.stdout.contains("DNS"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("raw refused") && r.stdout.contains("dns fails"),
        "the probes did not run: {r:?}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        s.hits.load(Ordering::SeqCst),
        0,
        "the server saw a connection that bypassed the proxy"
    );
    let mut buf = [0u8; 16];
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "a datagram from the task reached the host"
    );
}

#[test]
fn names_resolving_to_private_addresses_need_a_literal_entry() {
    let t = TestBox::new(Mode::Root);
    let s = server();
    let resolve = "internal.test=127.0.0.1,meta.test=169.254.169.254";
    let p = proxy_profile(&t, &format!("\"internal.test:{}\", \"meta.test\"", s.port));
    let mut c = t.cmd(&[
        "run",
        "-p",
        &p,
        "--json",
        "--",
        "/bin/sh",
        "-c",
        &format!(
            "curl -sS -i http://internal.test:{}/; curl -sS -i http://meta.test/",
            s.port
        ),
    ]);
    c.env("TASKBOX_TEST_RESOLVE", resolve);
    let r = run(c);
    assert!(
        r.stdout.contains("private address: 127.0.0.1 is loopback"),
        "{r:?}"
    );
    assert!(r.stdout.contains("169.254.169.254 is link-local"), "{r:?}");
    assert_eq!(s.hits.load(Ordering::SeqCst), 0);

    let p = proxy_profile(
        &t,
        &format!("\"internal.test:{0}\", \"127.0.0.1:{0}\"", s.port),
    );
    let mut c = t.cmd(&[
        "run",
        "-p",
        &p,
        "--",
        "/bin/sh",
        "-c",
        &format!("curl -sS http://internal.test:{}/", s.port),
    ]);
    c.env("TASKBOX_TEST_RESOLVE", resolve);
    let r = run(c);
    assert!(
        r.stdout.contains("hello"),
        "a literal entry must open exactly its address: {r:?}"
    );
    assert_eq!(s.hits.load(Ordering::SeqCst), 1);
}

#[test]
fn proxy_mode_without_namespaces_is_refused() {
    let t = TestBox::new(Mode::RootNoNs);
    let p = t.profile(
        "px",
        "extends = \"readonly\"\n[network]\nmode = \"proxy\"\nallow = [\"crates.io\"]\n",
    );
    let r = t.taskbox(&["run", "-p", &p, "--", "/bin/true"]);
    r.code(126);
    assert!(
        r.stderr.contains("needs a network namespace"),
        "{}",
        r.stderr
    );
}

#[test]
fn malformed_and_slow_clients_are_refused_and_others_still_served() {
    let t = TestBox::new(Mode::Root);
    let s = server();
    let p = proxy_profile(&t, &format!("\"127.0.0.1:{}\"", s.port));
    let py = format!(
        "import os, socket, time\n\
         port = int([v for k, v in os.environ.items() if k == 'HTTP_PROXY'][0].rsplit(':', 1)[1])\n\
         bad = socket.create_connection(('127.0.0.1', port)); bad.send(b'NONSENSE\\r\\n\\r\\n'); print('bad:', bad.recv(100)[:24])\n\
         big = socket.create_connection(('127.0.0.1', port)); big.send(b'GET http://x/ HTTP/1.1\\r\\n' + b'X: ' + b'a' * 20000 + b'\\r\\n\\r\\n'); print('big:', big.recv(100)[:24])\n\
         slow = [socket.create_connection(('127.0.0.1', port)) for _ in range(50)]\n\
         for c in slow: c.send(b'GET ')\n\
         ok = socket.create_connection(('127.0.0.1', port)); ok.send(b'GET http://127.0.0.1:{}/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); print('ok:', ok.recv(100)[:15])\n",
        s.port
    );
    let r = t.taskbox(&["run", "-p", &p, "--", "/usr/bin/python3", "-c", &py]);
    r.code(0);
    assert!(r.stdout.contains("bad: b'HTTP/1.1 400"), "{r:?}");
    assert!(r.stdout.contains("big: b'HTTP/1.1 400"), "{r:?}");
    assert!(r.stdout.contains("ok: b'HTTP/1.1 200 OK"), "{r:?}");
}

/// A static file server over `dir` (query ignored, 404 otherwise).
fn file_server(dir: std::path::PathBuf) -> Server {
    http_server(move |path| {
        let path = path
            .split('?')
            .next()
            .unwrap_or("/")
            .trim_start_matches('/');
        let file = dir.join(path);
        match std::fs::read(&file) {
            Ok(body) if !path.contains("..") && file.is_file() => {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend(body);
                r
            }
            _ => {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            }
        }
    })
}

#[test]
fn git_clone_over_http_through_an_allowed_entry() {
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        // A bare repository served over git's "dumb" HTTP protocol.
        let srv = t.root.join("srv");
        std::fs::create_dir_all(&srv).unwrap();
        let git = |args: &[&str], dir: &std::path::Path| {
            let st = std::process::Command::new("git")
                .args(args)
                .current_dir(dir)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@t")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@t")
                .output()
                .unwrap();
            assert!(st.status.success(), "git {args:?}: {st:?}");
        };
        let src = t.root.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("README"), "cloned through the proxy\n").unwrap();
        git(&["init", "-q", "-b", "main"], &src);
        git(&["add", "README"], &src);
        git(&["commit", "-q", "-m", "one"], &src);
        git(
            &["clone", "-q", "--bare", src.to_str().unwrap(), "repo.git"],
            &srv,
        );
        git(&["update-server-info"], &srv.join("repo.git"));
        let s = file_server(srv);
        // By name, as a user would write it; the test resolver maps the name.
        let p = proxy_profile(&t, &format!("\"git.test:{0}\", \"127.0.0.1:{0}\"", s.port));
        let mut c = t.cmd(&[
            "run",
            "-p",
            &p,
            "--",
            "/bin/sh",
            "-c",
            &format!(
                "git clone -q http://git.test:{}/repo.git clone && cat clone/README",
                s.port
            ),
        ]);
        c.env("TASKBOX_TEST_RESOLVE", "git.test=127.0.0.1");
        let r = run(c);
        r.code(0);
        assert!(r.stdout.contains("cloned through the proxy"), "{m:?} {r:?}");
        assert!(s.hits.load(Ordering::SeqCst) >= 3, "{m:?}");
        // The clone landed in the task's overlay, not in the real workspace.
        assert!(!t.ws.join("clone").exists());
    }
}

#[test]
fn socks5_reaches_allowed_hosts_only() {
    let t = TestBox::new(Mode::User);
    let s = server();
    let p = proxy_profile(&t, &format!("\"127.0.0.1:{}\"", s.port));
    // ALL_PROXY is socks5h://: curl uses it for what no other variable covers;
    // here it is asked for explicitly.
    let r = t.sh(
        &p,
        &format!(
            "curl -sS -x \"$ALL_PROXY\" http://127.0.0.1:{0}/ ; \
             curl -sS -m 5 -x \"socks5h://$TASKBOX_PROXY\" http://evil.test:{0}/ 2>&1; \
             curl -sS -m 5 -x \"socks5://$TASKBOX_PROXY\" http://127.0.0.2:{0}/ 2>&1; echo",
            s.port
        ),
    );
    assert_eq!(r.stdout.matches("hello").count(), 1, "{r:?}");
    assert_eq!(s.hits.load(Ordering::SeqCst), 1);
    let socks: Vec<serde_json::Value> = connections(&t, &r)
        .into_iter()
        .filter(|c| c["protocol"] == "socks5")
        .collect();
    assert_eq!(socks.len(), 3, "{socks:?}");
    assert_eq!(socks[0]["decision"]["decision"], "allow");
    assert_eq!(socks[1]["host"], "evil.test");
    assert_eq!(socks[1]["decision"]["reason"]["reason"], "deny-listed");
    assert_eq!(socks[2]["decision"]["reason"]["reason"], "not-allowed");
}

#[test]
fn a_denied_name_the_task_chose_reaches_the_terminal_escaped() {
    // A SOCKS5 name is any bytes: the refused-hosts summary on the human's
    // stderr must not carry the task's terminal escapes.
    let t = TestBox::new(Mode::User);
    let s = server();
    let p = proxy_profile(&t, &format!("\"127.0.0.1:{}\"", s.port));
    let py = "import os, socket\nh, p = os.environ['TASKBOX_PROXY'].rsplit(':', 1)\nc = socket.create_connection((h, int(p)))\nc.sendall(b'\\x05\\x01\\x00'); c.recv(2)\nname = b'evil\\x1b[2J.test'\nc.sendall(b'\\x05\\x01\\x00\\x03' + bytes([len(name)]) + name + b'\\x00\\x50')\nprint('reply', c.recv(10)[:2])\n";
    let r = t.taskbox(&["run", "-p", &p, "--", "/usr/bin/python3", "-c", py]);
    assert!(r.stdout.contains("reply"), "{r:?}");
    assert_eq!(s.hits.load(Ordering::SeqCst), 0);
    assert!(r.stderr.contains("the egress proxy refused"), "{r:?}");
    assert!(!r.stderr.contains('\u{1b}'), "{:?}", r.stderr);
    assert!(r.stderr.contains("evil\\x1b[2j.test"), "{}", r.stderr);
}

#[test]
fn ipv6_loopback_literal_entries_work_and_others_do_not() {
    let Ok(l) = TcpListener::bind("[::1]:0") else {
        eprintln!("SKIP ipv6_loopback_literal_entries_work_and_others_do_not: no ::1 on this host");
        return;
    };
    let port = l.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok((mut s, _)) = l.accept() {
                h.fetch_add(1, Ordering::SeqCst);
                s.set_nonblocking(false).unwrap();
                let mut b = [0u8; 512];
                let _ = s.read(&mut b);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nv6\n",
                );
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let t = TestBox::new(Mode::Root);
    let p = proxy_profile(&t, &format!("\"[::1]:{port}\""));
    let r = t.sh(
        &p,
        &format!(
            "curl -sS -p http://[::1]:{port}/; curl -sS -i -p http://[::ffff:7f00:1]:{port}/ 2>&1; \
             curl -sS -i http://[::1]:{}/ 2>&1",
            port + 1
        ),
    );
    assert!(r.stdout.contains("v6"), "{r:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "{r:?}");
    assert!(r.stdout.contains("denied by policy"), "{r:?}");
}

#[test]
fn network_mode_host_shares_the_host_network() {
    for m in [Mode::Root, Mode::User] {
        let t = TestBox::new(m);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let p = t.profile(
            "hostnet",
            "extends = \"explore\"\n[network]\nmode = \"host\"\n",
        );
        let py = format!(
            "import socket\ns=socket.create_connection(('127.0.0.1',{port}),timeout=5); s.sendall(b'from-task'); s.close(); print('SENT')\n"
        );
        let waiter = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut got = String::new();
            c.read_to_string(&mut got).unwrap();
            got
        });
        let r = t.py(&p, &py);
        r.code(0);
        assert!(r.stdout.contains("SENT"), "{r:?}");
        // Seen from outside: the host's listener got the bytes.
        assert_eq!(waiter.join().unwrap(), "from-task", "{m:?}");
        let ns: Vec<String> = r.json()["outcome"]["enforcement"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect();
        assert!(!ns.contains(&"net".to_owned()), "{ns:?}");
        assert!(ns.contains(&"mount".to_owned()), "{ns:?}");
    }
}
