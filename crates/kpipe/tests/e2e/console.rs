//! Seed 01's console scenarios with `kpipe produce` and `kpipe consume`: all
//! messages without a group, only new ones, a group that resumes from its
//! committed offsets, and Ctrl-C committing exactly what was printed.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use crate::harness::BrokerProcess;

fn lines(prefix: &str, n: usize) -> String {
    (0..n).map(|i| format!("{prefix}-{i}\n")).collect()
}

#[test]
fn seed_01_console_consumer_modes() {
    let broker = BrokerProcess::start();
    broker
        .kpipe(&["topic", "create", "my_topic", "--partitions", "3"], "")
        .out();
    let produced = broker.kpipe(&["produce", "my_topic"], &lines("old", 20));
    assert!(produced.ok, "{}", produced.stderr);
    assert!(
        produced.stderr.contains("20 delivered, 0 failed"),
        "summary: {}",
        produced.stderr
    );

    // Without a group, from the beginning: everything.
    let all = broker.kpipe(
        &[
            "consume",
            "my_topic",
            "--from-beginning",
            "--timeout-ms",
            "1500",
        ],
        "",
    );
    let mut got = all.lines();
    got.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("old-{i}")).collect();
    want.sort();
    assert_eq!(got, want);

    // Only new messages: keep producing until the reader sees one; it never sees the old ones.
    let mut reader = broker
        .command(&["consume", "my_topic", "--max", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = reader.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let first = BufReader::new(stdout).lines().next().and_then(Result::ok);
        let _ = tx.send(first);
    });
    let mut first = None;
    for i in 0..100 {
        broker
            .kpipe(&["produce", "my_topic"], &format!("new-{i}\n"))
            .out();
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(300)) {
            first = line;
            break;
        }
    }
    assert!(reader.wait().unwrap().success());
    let first = first.expect("the new-messages reader printed nothing");
    assert!(
        first.starts_with("new-"),
        "only-new mode printed an old message: {first}"
    );

    // A group resumes where it left off.
    let group = [
        "consume",
        "my_topic",
        "--group",
        "mygroupcli",
        "--from-beginning",
        "--timeout-ms",
        "1500",
    ];
    let everything = broker.kpipe(&group, "").lines().len();
    assert!(everything > 20);
    assert!(
        broker.kpipe(&group, "").lines().is_empty(),
        "the group re-read committed messages"
    );
    broker
        .kpipe(&["produce", "my_topic"], &lines("late", 3))
        .out();
    let mut late = broker.kpipe(&group, "").lines();
    late.sort();
    assert_eq!(late, vec!["late-0", "late-1", "late-2"]);
    assert_eq!(broker.committed("mygroupcli"), everything as i64 + 3);
}

#[test]
fn ctrl_c_commits_exactly_what_was_printed() {
    let broker = BrokerProcess::start();
    broker
        .kpipe(&["topic", "create", "my_topic", "--partitions", "3"], "")
        .out();
    broker
        .kpipe(&["produce", "my_topic"], &lines("m", 200_000))
        .out();
    let mut reader = broker
        .command(&[
            "consume",
            "my_topic",
            "--group",
            "interrupted",
            "--from-beginning",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(reader.stdout.take().unwrap());
    let mut printed = 0;
    let mut line = String::new();
    while printed < 100 && stdout.read_line(&mut line).unwrap() > 0 {
        printed += 1;
    }
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &reader.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    // Whatever it printed before stopping counts too.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    printed += rest.lines().count();
    let status = reader.wait().unwrap();
    assert!(
        status.success(),
        "Ctrl-C should be a clean exit, got {status}"
    );
    assert_eq!(broker.committed("interrupted"), printed as i64);
}

/// `kpipe topic describe wide | head -1`: the reader leaves and closes the
/// pipe while kpipe still prints (a table bigger than the pipe's buffer);
/// kpipe ends as `cat` would, with SIGPIPE's status and no panic on stderr.
#[test]
fn a_reader_that_leaves_early_ends_kpipe_quietly() {
    let broker = BrokerProcess::start();
    broker
        .kpipe(&["topic", "create", "wide", "--partitions", "2000"], "")
        .out();
    let mut reader = broker
        .command(&["topic", "describe", "wide"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(reader.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "topic wide (2000 partitions)");
    drop(stdout);
    let ended = reader.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert_eq!(ended.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
