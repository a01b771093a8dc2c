//! Debian's kcat (librdkafka 2.0.2, older than the bundled client) against the
//! broker: metadata, produce, consume, and a `-G` consumer group that resumes.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::harness::BrokerProcess;

fn kcat(bootstrap: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new("kcat")
        .args(["-b", bootstrap])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat must be installed (scripts/test.sh installs Debian's kcat)");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("write stdin");
    drop(input);
    let pid = child.id();
    // kcat has no overall timeout of its own; never let it hang the suite.
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let output = child.wait_with_output().expect("kcat output");
    drop(watchdog);
    assert!(
        output.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn lines(output: &Output) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn kcat_metadata_produce_consume_and_group() {
    let broker = BrokerProcess::start();
    broker.create_topic("kc", 3, &[]);
    let b = broker.bootstrap.as_str();

    let metadata = kcat(b, &["-L", "-J"], None);
    let json: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).expect("kcat -J prints JSON");
    let topic = json["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "kc")
        .expect("topic listed");
    assert_eq!(topic["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(json["brokers"][0]["name"].as_str().unwrap(), b);

    let input: String = (0..30)
        .map(|i| format!("key{}:value{i}\n", i % 5))
        .collect();
    kcat(
        b,
        &["-P", "-t", "kc", "-K", ":", "-X", "acks=all"],
        Some(&input),
    );

    let read_all = |format: &str| {
        kcat(
            b,
            &[
                "-C",
                "-t",
                "kc",
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                format,
            ],
            None,
        )
    };
    let all = read_all("%k=%s\n");
    let mut expected: Vec<String> = (0..30).map(|i| format!("key{}=value{i}", i % 5)).collect();
    expected.sort();
    assert_eq!(lines(&all), expected);

    // Same key, same partition: each key's values come back in produce order.
    let by_partition = read_all("%p %k %s\n");
    let text = String::from_utf8_lossy(&by_partition.stdout).to_string();
    for key in 0..5 {
        let values: Vec<&str> = text
            .lines()
            .filter(|l| l.split(' ').nth(1) == Some(&format!("key{key}")))
            .map(|l| l.split(' ').nth(2).unwrap())
            .collect();
        let partitions: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| l.split(' ').nth(1) == Some(&format!("key{key}")))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert_eq!(partitions.len(), 1, "key{key} spread over partitions");
        let numbers: Vec<u32> = values
            .iter()
            .map(|v| v.trim_start_matches("value").parse().unwrap())
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "key{key} out of order: {numbers:?}"
        );
    }

    let group = [
        "-G",
        "kc-group",
        "-X",
        "auto.offset.reset=earliest",
        "-e",
        "-q",
        "-f",
        "%s\n",
        "kc",
    ];
    assert_eq!(
        lines(&kcat(b, &group, None)).len(),
        30,
        "first group run reads everything"
    );
    assert!(
        lines(&kcat(b, &group, None)).is_empty(),
        "second group run resumes after the committed offsets"
    );
    kcat(
        b,
        &["-P", "-t", "kc", "-X", "acks=all"],
        Some("late1\nlate2\n"),
    );
    assert_eq!(lines(&kcat(b, &group, None)), vec!["late1", "late2"]);
}

#[test]
fn a_member_killed_with_sigkill_is_expired_after_its_session_timeout() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let broker = BrokerProcess::start();
    broker.create_topic("lease", 2, &[]);
    let mut member = Command::new("kcat")
        .args(["-b", &broker.bootstrap, "-G", "lease-group", "-q"])
        .args([
            "-X",
            "session.timeout.ms=2000",
            "-X",
            "heartbeat.interval.ms=200",
            "lease",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kcat");
    let survivor: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "lease-group")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    survivor.subscribe(&["lease"]).unwrap();
    let owned = |c: &BaseConsumer| c.assignment().map(|a| a.count()).unwrap_or(0);
    let shared = crate::harness::eventually(Duration::from_secs(30), || {
        survivor.poll(Duration::from_millis(50));
        owned(&survivor) == 1
    });
    assert!(
        shared,
        "kcat and the rdkafka consumer never split the two partitions"
    );
    member.kill().expect("SIGKILL kcat");
    let _ = member.wait();
    let took_over = crate::harness::eventually(Duration::from_secs(30), || {
        survivor.poll(Duration::from_millis(50));
        owned(&survivor) == 2
    });
    assert!(took_over, "the dead member was never expired");
    crate::harness::bounded(Duration::from_secs(20), "closing a consumer", move || {
        drop(survivor)
    });
}
