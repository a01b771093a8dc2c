//! Mistakes on the command line: one clear sentence on stderr, a non-zero exit, no panic.

use std::process::Command;

use crate::harness::BrokerProcess;

fn kpipe(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kpipe"))
        .args(args)
        .output()
        .expect("run kpipe");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn assert_clean_failure(args: &[&str], expected: &str) {
    let (ok, stderr) = kpipe(args);
    assert!(!ok, "kpipe {args:?} should fail");
    assert!(
        stderr.contains(expected),
        "kpipe {args:?}: {stderr:?} should say {expected:?}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "kpipe {args:?} panicked: {stderr}"
    );
}

#[test]
fn broker_refuses_bad_flags_and_a_busy_data_directory() {
    assert_clean_failure(
        &["broker", "--fsync", "sometimes"],
        "fsync policy must be always, never or an interval",
    );
    assert_clean_failure(&["broker", "--listen", "nowhere"], "invalid socket address");
    let running = BrokerProcess::start();
    let data = running.data_dir().to_str().unwrap().to_string();
    assert_clean_failure(
        &["broker", "--listen", "127.0.0.1:0", "--data", &data],
        "is in use by another kpipe broker",
    );
    let busy_port = running.bootstrap.clone();
    let other = tempfile::tempdir().unwrap();
    assert_clean_failure(
        &[
            "broker",
            "--listen",
            &busy_port,
            "--data",
            other.path().to_str().unwrap(),
        ],
        &format!("cannot listen on {busy_port}"),
    );
    let (ok, help) = {
        let output = Command::new(env!("CARGO_BIN_EXE_kpipe"))
            .args(["broker", "--help"])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
        )
    };
    assert!(ok && help.contains("--fsync") && help.contains("Examples:"));
}

#[test]
fn sql_test_runs_qtt_files_and_reports_the_first_difference() {
    let broker = crate::harness::BrokerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("where.json");
    std::fs::write(
        &file,
        r#"{"tests": [
          // a comment, as ksqlDB's files have
          {"name": "filter", "format": ["JSON", "DELIMITED"],
           "statements": ["CREATE STREAM I (ID INT KEY, V INT) WITH (kafka_topic='t', value_format='{FORMAT}');",
                          "CREATE STREAM O AS SELECT ID, V * 10 AS TEN FROM I WHERE V > 1;"],
           "inputs": [{"topic": "t", "key": 1, "value": {"V": 1}}, {"topic": "t", "key": 2, "value": {"V": 2}}],
           "outputs": [{"topic": "O", "key": 2, "value": {"TEN": 20}}]},
          {"name": "unknown source",
           "statements": ["CREATE STREAM O AS SELECT * FROM NOPE;"],
           "expectedException": {"type": "x", "message": "NOPE does not exist"}}
        ]}"#,
    )
    .unwrap();
    let run = broker.kpipe(&["sql", "test", file.to_str().unwrap()], "");
    assert!(
        !run.ok,
        "the DELIMITED run gets string values and must fail"
    );
    let lines = run.lines();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("2 passed, 1 failed"),
        "{}",
        run.stdout
    );
    assert!(
        lines[0].starts_with("FAIL where.json: filter - DELIMITED: O: expected 1 records, got 0"),
        "{}",
        run.stdout
    );
}
