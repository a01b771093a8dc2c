//! Python clients against the broker: confluent-kafka's AdminClient (librdkafka)
//! and kafka-python, an independent implementation of the protocol.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::BrokerProcess;

fn run_script(script: &str) {
    let python = std::env::var("KPIPE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
        });
    assert!(
        python.exists(),
        "{} not found: run scripts/test.sh, which installs confluent-kafka and kafka-python into .venv",
        python.display()
    );
    let broker = BrokerProcess::start();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let output = Command::new(&python)
        .arg(&path)
        .args(["--bootstrap", &broker.bootstrap])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("ok"),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn confluent_kafka_admin_client() {
    run_script("admin_confluent.py");
}

#[test]
fn kafka_python_client() {
    run_script("kafka_python_client.py");
}
