//! The audit log from the CLI: records per task, verify, tamper detection.

use crate::support::{Mode, TestBox};

#[test]
fn a_task_leaves_start_and_end_records_that_verify() {
    let t = TestBox::new(Mode::User);
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
        "exit 3",
    ]);
    r.code(3);
    let id = r.json()["task"].as_str().unwrap().to_owned();
    let q = t.taskbox(&["audit", "query", "--task", &id]);
    let recs: Vec<serde_json::Value> = q
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 3, "{}", q.stdout);
    assert_eq!(recs[0]["event"]["kind"], "task-start");
    assert_eq!(recs[0]["event"]["agent"], "claude");
    assert_eq!(recs[0]["event"]["on_behalf_of"], "alice@example.com");
    assert_eq!(recs[0]["event"]["profile"], "explore");
    assert_eq!(recs[0]["event"]["enforcement"]["landlock"], "full");
    assert_eq!(recs[1]["event"]["kind"], "changeset");
    assert_eq!(recs[2]["event"]["kind"], "task-end");
    assert_eq!(recs[2]["event"]["status"], 3);
    t.taskbox(&["audit", "verify"]).code(0);
    let tail = t.taskbox(&["audit", "tail", "-n", "1"]);
    assert!(tail.stdout.contains("task-end"), "{}", tail.stdout);
}

#[test]
fn verify_names_the_first_tampered_record() {
    let t = TestBox::new(Mode::Root);
    for _ in 0..3 {
        t.taskbox(&["run", "--", "/bin/true"]).code(0);
    }
    let log = t.state.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("\"/bin/true\"", "\"/bin/false\"", 1)).unwrap();
    let r = t.taskbox(&["audit", "verify"]);
    r.code(1);
    assert!(
        r.stdout.contains("BROKEN at record 1") && r.stdout.contains("edited"),
        "{}",
        r.stdout
    );
}
