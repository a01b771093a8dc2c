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
