//! ClickHouse against a real server (Debian's clickhouse-server 18.16, started
//! by scripts/clickhouse.sh): seed 05's DDL with data flowing through the Kafka
//! engine from `kpipe broker`, the direct sink, and export back to Kafka.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{bounded, eventually, BrokerProcess, ClickHouseServer};

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/clickhouse")
        .join(name)
        .display()
        .to_string()
}

fn count(ch: &ClickHouseServer, table: &str) -> u64 {
    ch.query(&format!("SELECT count() FROM {table}"))
        .parse()
        .unwrap()
}

#[test]
fn seed_05_ddl_applies_twice_and_the_kafka_engine_loads_both_topics() {
    let broker = BrokerProcess::start();
    let ch = ClickHouseServer::start();
    broker.create_topic("sales", 3, &[]);
    broker.create_topic("warehouse", 3, &[]);
    broker
        .kpipe(&["gen", "retail", "--count", "3000", "--seed", "5"], "")
        .out();
    let topic_count = |topic: &str| -> u64 {
        broker
            .kpipe(
                &["consume", topic, "--from-beginning", "--timeout-ms", "3000"],
                "",
            )
            .out()
            .lines()
            .count() as u64
    };
    let (sales, movements) = (topic_count("sales"), topic_count("warehouse"));
    assert_eq!(sales + movements, 3000);
    assert!(sales > movements, "seed 05 sends 70% sales");

    for (config, table, expected) in [
        ("sales.json", "retail.sales", sales),
        ("warehouse.json", "retail.stock_movements", movements),
    ] {
        let first = broker
            .kpipe(
                &[
                    "ch",
                    "ddl",
                    &example(config),
                    "--apply",
                    "--url",
                    &ch.url,
                    "--check-timeout",
                    "60s",
                ],
                "",
            )
            .out();
        assert!(
            first.contains(&format!("created  MergeTree {table}")),
            "{first}"
        );
        assert!(first.contains("data flow:"), "{first}");
        assert!(
            eventually(Duration::from_secs(60), || count(&ch, table) >= expected),
            "{table} did not reach {expected} rows"
        );
        // Exactly the topic, once: every event id once, nothing more.
        assert_eq!(count(&ch, table), expected);
        let ids = ch.query(&format!("SELECT uniqExact(event_id) FROM {table}"));
        assert_eq!(ids, expected.to_string());
        // The view converted event_time into a DateTime the table is partitioned by.
        let partitions = ch.query(&format!(
            "SELECT count() FROM system.parts WHERE active AND database = 'retail' AND table = '{}' AND partition_id = toString(toYYYYMM(now()))",
            table.trim_start_matches("retail.")
        ));
        assert_ne!(
            partitions, "0",
            "{table} has no part in this month's partition"
        );

        let second = broker
            .kpipe(
                &["ch", "ddl", &example(config), "--apply", "--url", &ch.url],
                "",
            )
            .out();
        assert!(
            !second.contains("created "),
            "a second apply must change nothing:\n{second}"
        );
        assert_eq!(second.matches("exists ").count(), 5, "{second}");
    }
    // The ALTERs of seed 04's full config fail on 18.16 and are skipped, not fatal.
    broker.create_topic("covid_new_cases_1min", 3, &[]);
    let covid = broker
        .kpipe(
            &[
                "ch",
                "ddl",
                &example("covid_new_cases.json"),
                "--apply",
                "--url",
                &ch.url,
            ],
            "",
        )
        .out();
    assert_eq!(covid.matches("skipped  ").count(), 4, "{covid}");
    assert!(
        covid.contains("topic covid_new_cases_1min is empty"),
        "{covid}"
    );
}

#[test]
fn ddl_errors_are_one_sentence() {
    let broker = BrokerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"kafka_topic":"t","target_table_name":"x; DROP TABLE y","schema":{"a":"String"}}"#,
    )
    .unwrap();
    broker
        .kpipe(&["ch", "ddl", bad.to_str().unwrap()], "")
        .fails_with("target_table_name \"x; DROP TABLE y\" is not a valid name");
    broker
        .kpipe(
            &[
                "ch",
                "ddl",
                &example("sales.json"),
                "--apply",
                "--url",
                "http://127.0.0.1:9",
            ],
            "",
        )
        .fails_with("cannot reach ClickHouse at http://127.0.0.1:9/");
}

const MUSIC_TABLE: &str = "CREATE TABLE raw.music (
    `event_param.event_type_id` UInt8,
    `event_param.event_type` String,
    `event_param.user_id` String,
    `event_timestamp.ts` DateTime,
    event_param String,
    extra String DEFAULT 'none',
    kafka_partition Int32,
    kafka_offset Int64,
    batch_id String,
    consumer_group_id String,
    processing_time DateTime DEFAULT now()
) ENGINE = MergeTree() ORDER BY (kafka_partition, kafka_offset)";

/// A broker holding `events` music events and a ClickHouse with `raw.music`.
fn music_loaded(events: u64, seed: u64) -> (BrokerProcess, ClickHouseServer) {
    let broker = BrokerProcess::start();
    let ch = ClickHouseServer::start();
    ch.query("CREATE DATABASE raw");
    ch.query(MUSIC_TABLE);
    broker.create_topic("music_events", 3, &[]);
    broker
        .kpipe(
            &[
                "gen",
                "music",
                "--count",
                &events.to_string(),
                "--seed",
                &seed.to_string(),
            ],
            "",
        )
        .out();
    (broker, ch)
}

/// `kpipe sink clickhouse` from music_events into raw.music, until the end, plus `extra`.
fn music_sink_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "sink",
        "clickhouse",
        "--topic",
        "music_events",
        "--table",
        "raw.music",
        "--url",
        url,
        "--until-end",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn direct_sink_loads_music_events_exactly_once_and_dead_letters_bad_rows() {
    let (broker, ch) = music_loaded(100_000, 9);
    broker.create_topic("music_dlq", 1, &[]);
    // Two bad messages: not JSON, and a time the server cannot read.
    broker
        .kpipe(
            &["produce", "music_events"],
            "not json\n{\"event_param\":{\"event_type_id\":1},\"event_timestamp\":{\"ts\":\"yesterday-ish\"}}\n",
        )
        .out();
    let sink = |group: &str| {
        let extra = [
            "--group",
            group,
            "--dlq-topic",
            "music_dlq",
            "--batch-rows",
            "20000",
        ];
        broker.kpipe(&music_sink_args(&ch.url, &extra), "")
    };
    let report = sink("loader");
    assert!(report.ok, "{}", report.stderr);
    assert!(
        report.stderr.contains("inserted 100000 rows"),
        "{}",
        report.stderr
    );
    assert!(
        report.stderr.contains("2 messages dead-lettered"),
        "{}",
        report.stderr
    );
    assert_eq!(count(&ch, "raw.music"), 100_000);
    assert_eq!(
        ch.query("SELECT uniqExact(kafka_partition, kafka_offset) FROM raw.music"),
        "100000"
    );
    assert_eq!(
        ch.query("SELECT countIf(consumer_group_id = 'loader') FROM raw.music"),
        "100000"
    );
    // Nested fields found by their dotted names; objects kept as JSON text; defaults filled.
    assert_eq!(
        ch.query("SELECT countIf(`event_param.user_id` = '') FROM raw.music"),
        "0"
    );
    assert_eq!(
        ch.query("SELECT countIf(event_param LIKE '{%}') FROM raw.music"),
        "100000"
    );
    // ClickHouse 18 fills an omitted field with its type's default (later versions
    // evaluate DEFAULT, which the sink asks for there).
    assert_eq!(
        ch.query("SELECT countIf(extra = '') FROM raw.music"),
        "100000"
    );
    assert_eq!(
        ch.query("SELECT min(toYear(`event_timestamp.ts`)) > 2000 FROM raw.music"),
        "1"
    );
    let dead = broker.consume_with_meta("music_dlq", 3000);
    assert_eq!(dead.lines().count(), 2, "{dead}");
    assert!(dead.contains("not json"));

    // Another group (or a crash between insert and commit) finds the rows
    // already there: the table's offsets, not the group's, decide.
    let again = sink("second-loader");
    assert!(again.ok, "{}", again.stderr);
    assert!(again.stderr.contains("inserted 0 rows"), "{}", again.stderr);
    assert_eq!(count(&ch, "raw.music"), 100_000);
}

#[test]
fn direct_sink_rides_out_a_clickhouse_crash_without_duplicates() {
    let (broker, mut ch) = music_loaded(200_000, 4);
    let sink = broker
        .command(&music_sink_args(&ch.url, &["--batch-rows", "5000"]))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = eventually(Duration::from_secs(60), || {
        count(&ch, "raw.music") >= 20_000
    });
    assert!(started, "the sink did not start loading");
    // Inserts in flight fail or lose their answers; the sink retries, asking the
    // table first whether a lost insert landed.
    ch.crash_and_restart();
    let output = bounded(Duration::from_secs(180), "the sink", move || {
        sink.wait_with_output().unwrap()
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("inserted"), "{stderr}");
    assert_eq!(
        ch.query("SELECT count(), uniqExact(kafka_partition, kafka_offset) FROM raw.music"),
        "200000\t200000"
    );
}

#[test]
fn export_round_trips_through_kafka() {
    let broker = BrokerProcess::start();
    let ch = ClickHouseServer::start();
    broker.create_topic("alerts", 3, &[]);
    let exported = broker.kpipe(
        &[
            "ch", "export", "--url", &ch.url, "--topic", "alerts", "--key", "location_key",
            "--query", "SELECT concat('L', toString(number % 7)) AS location_key, number AS cases, 'HIGH_CASES' AS alert_type FROM system.numbers LIMIT 1000",
        ],
        "",
    );
    assert!(exported.ok, "{}", exported.stderr);
    assert!(
        exported
            .stderr
            .contains("exported 1000 rows to alerts, 1000 acknowledged"),
        "{}",
        exported.stderr
    );
    let read = broker.consume_with_meta("alerts", 3000);
    assert_eq!(read.lines().count(), 1000);
    // Values as ClickHouse wrote them (64-bit integers as numbers), keyed by location.
    assert!(
        read.contains(r#"\"location_key\":\"L5\",\"cases\":999,"#),
        "{read}"
    );
    assert!(read.contains(r#""key":"L5""#));
    // And back into ClickHouse with the direct sink: the same rows arrive.
    ch.query("CREATE TABLE alerts (location_key String, cases UInt64, alert_type String) ENGINE = MergeTree() ORDER BY cases");
    let back = broker.kpipe(
        &[
            "sink",
            "clickhouse",
            "--topic",
            "alerts",
            "--table",
            "alerts",
            "--url",
            &ch.url,
            "--until-end",
        ],
        "",
    );
    assert!(back.ok, "{}", back.stderr);
    assert_eq!(
        ch.query("SELECT count(), sum(cases), uniqExact(location_key) FROM alerts"),
        "1000\t499500\t7"
    );
}
