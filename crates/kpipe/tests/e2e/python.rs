//! Python clients against the broker: confluent-kafka's AdminClient (librdkafka)
//! and kafka-python, an independent implementation of the protocol.

use std::process::Command;

use crate::harness::{python, python_script, BrokerProcess};

fn run_script(script: &str) {
    let broker = BrokerProcess::start();
    let path = python_script(script);
    let output = Command::new(python())
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
