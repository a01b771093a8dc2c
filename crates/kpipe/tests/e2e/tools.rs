//! Generators, keyed produce with headers, group offsets, and failure messages.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::harness::BrokerProcess;

#[test]
fn gen_is_deterministic_keyed_and_creates_its_topics() {
    let broker = BrokerProcess::start();
    let print = [
        "gen",
        "music",
        "--count",
        "300",
        "--seed",
        "7",
        "--start-ms",
        "1700000000000",
        "--print",
    ];
    let first = broker.kpipe(&print, "").out();
    assert_eq!(
        first,
        broker.kpipe(&print, "").out(),
        "same seed, different events"
    );
    assert_ne!(
        first,
        broker
            .kpipe(
                &[
                    "gen",
                    "music",
                    "--count",
                    "300",
                    "--seed",
                    "8",
                    "--start-ms",
                    "1700000000000",
                    "--print"
                ],
                ""
            )
            .out()
    );
    broker
        .kpipe(&["gen", "payments", "--count", "1", "--start-ms", "0"], "")
        .fails_with("--start-ms must be at least 1");
    let (key, json) = first.lines().next().unwrap().split_once('\t').unwrap();
    let event: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(event["event_param"]["user_id"], key);
    assert_eq!(event["event_timestamp"]["ts_ms"], 1_700_000_000_000i64);

    let produced = broker.kpipe(&["gen", "music", "--count", "3000", "--seed", "7"], "");
    assert!(produced.ok, "{}", produced.stderr);
    assert!(
        produced.stderr.contains("3000 acknowledged"),
        "{}",
        produced.stderr
    );
    let messages = broker.messages("music_events", 1500);
    assert_eq!(messages.len(), 3000);
    let partitions: BTreeSet<i64> = messages
        .iter()
        .map(|m| m["partition"].as_i64().unwrap())
        .collect();
    assert_eq!(
        partitions,
        BTreeSet::from([0, 1, 2]),
        "gen creates 3 partitions and keys spread over them"
    );
    let mut by_key: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for m in &messages {
        by_key
            .entry(m["key"].as_str().unwrap().to_string())
            .or_default()
            .insert(m["partition"].as_i64().unwrap());
    }
    assert!(
        by_key.values().all(|p| p.len() == 1),
        "one user's events must stay in one partition"
    );

    broker
        .kpipe(&["gen", "retail", "--count", "2000"], "")
        .out();
    let sales = broker.messages("sales", 1500).len() as i64;
    let warehouse = broker.messages("warehouse", 1500).len() as i64;
    assert_eq!(sales + warehouse, 2000);
    assert!(
        (sales - 1400).abs() < 100,
        "retail split {sales}/{warehouse}, want about 70/30"
    );

    for kind in [
        "users",
        "covid-new",
        "covid-cumulative",
        "payments",
        "sales",
        "warehouse",
    ] {
        let run = broker.kpipe(
            &[
                "gen",
                kind,
                "--topic",
                &format!("t-{kind}"),
                "--count",
                "20",
            ],
            "",
        );
        assert!(run.ok, "gen {kind}: {}", run.stderr);
        assert_eq!(
            broker.messages(&format!("t-{kind}"), 1500).len(),
            20,
            "gen {kind}"
        );
    }
    let bad = broker.kpipe(&["gen", "clicks"], "");
    bad.fails_with("unknown generator kind");
}

#[test]
fn produce_keys_by_json_field_with_headers() {
    let broker = BrokerProcess::start();
    broker
        .kpipe(&["topic", "create", "keyed", "--partitions", "3"], "")
        .out();
    let input =
        "{\"user\":{\"id\":\"u1\"},\"n\":1}\n{\"user\":{\"id\":\"u2\"},\"n\":2}\nnot json\n";
    let run = broker.kpipe(
        &[
            "produce",
            "keyed",
            "--key-field",
            "user.id",
            "-H",
            "source=test",
            "-H",
            "batch=7",
        ],
        input,
    );
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains("3 delivered") && run.stderr.contains("1 without the key field"),
        "{}",
        run.stderr
    );
    let mut messages = broker.messages("keyed", 1500);
    messages.sort_by_key(|m| m["value"].as_str().unwrap().to_string());
    let keys: Vec<&serde_json::Value> = messages.iter().map(|m| &m["key"]).collect();
    assert_eq!(
        keys,
        vec![
            &serde_json::Value::Null,
            &serde_json::json!("u1"),
            &serde_json::json!("u2")
        ]
    );
    assert_eq!(
        messages[1]["headers"],
        serde_json::json!({"source": "test", "batch": "7"})
    );
    assert!(messages[1]["offset"].is_i64() && messages[1]["timestamp"].is_i64());
}

#[test]
fn group_describe_and_reset_offsets() {
    let broker = BrokerProcess::start();
    broker
        .kpipe(&["topic", "create", "events", "--partitions", "2"], "")
        .out();
    let input: String = (0..10).map(|i| format!("e{i}\n")).collect();
    broker.kpipe(&["produce", "events"], &input).out();
    let before = Instant::now();
    std::thread::sleep(Duration::from_millis(20));
    broker.kpipe(&["produce", "events"], "late1\nlate2\n").out();
    let read = [
        "consume",
        "events",
        "--group",
        "readers",
        "--from-beginning",
        "--timeout-ms",
        "1500",
    ];
    assert_eq!(broker.kpipe(&read, "").lines().len(), 12);

    let described = broker.kpipe(&["group", "describe", "readers"], "").out();
    assert!(
        described.contains("state Empty") && described.contains("events"),
        "{described}"
    );
    let listed = broker.kpipe(&["group", "list"], "").out();
    assert!(listed.contains("readers"));

    let reset = |target: &[&str]| {
        let mut args = vec!["group", "reset-offsets", "readers", "--topic", "events"];
        args.extend_from_slice(target);
        broker.kpipe(&args, "").out()
    };
    let plan = reset(&["--to-earliest"]);
    assert!(plan.contains("dry run"));
    assert!(
        broker.kpipe(&read, "").lines().is_empty(),
        "a dry run must not move offsets"
    );
    reset(&["--to-earliest", "--execute"]);
    assert_eq!(broker.kpipe(&read, "").lines().len(), 12);

    let since = (
        before.elapsed().as_millis() as i64,
        std::time::SystemTime::now(),
    );
    let ms = since
        .1
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - since.0;
    reset(&["--to-datetime", &ms.to_string(), "--execute"]);
    let mut late = broker.kpipe(&read, "").lines();
    late.sort();
    assert_eq!(late, vec!["late1", "late2"]);
    reset(&["--to-latest", "--execute"]);
    assert!(broker.kpipe(&read, "").lines().is_empty());

    let missing = broker.kpipe(&["group", "describe", "nobody"], "");
    assert!(
        !missing.ok
            && missing
                .stderr
                .contains("consumer group nobody does not exist"),
        "{}",
        missing.stderr
    );
}

#[test]
fn failures_are_one_sentence_and_quick() {
    let broker = BrokerProcess::start();
    for args in [
        vec!["consume", "ghost", "--timeout-ms", "100"],
        vec!["produce", "ghost"],
        vec!["topic", "describe", "ghost"],
    ] {
        let run = broker.kpipe(&args, "x\n");
        assert!(!run.ok, "{args:?} should fail");
        assert!(
            run.stderr.contains("topic ghost does not exist"),
            "{args:?}: {}",
            run.stderr
        );
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{args:?}: {}",
            run.stderr
        );
    }
    let started = Instant::now();
    let mut unreachable = broker.command(&["topic", "list"]);
    let output = unreachable
        .env("KPIPE_BOOTSTRAP", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "an unreachable broker must fail within 15 s"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.starts_with("error: cannot reach Kafka at 127.0.0.1:1"),
        "{stderr}"
    );
    let bad_setting = broker.kpipe(&["topic", "list", "-X", "no.such.setting=1"], "");
    bad_setting.fails_with("invalid Kafka client settings");
    let secret = broker.kpipe(
        &[
            "topic",
            "list",
            "-X",
            "sasl.password=hunter2",
            "-X",
            "bogus.key=1",
        ],
        "",
    );
    assert!(
        !secret.stderr.contains("hunter2"),
        "a secret was printed: {}",
        secret.stderr
    );
}
