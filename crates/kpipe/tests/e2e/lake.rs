//! The lake: `kpipe sink lake` into a directory and into S3 (SeaweedFS), checked
//! by `kpipe lake check`, `kpipe query` and an independent reader (DuckDB);
//! exactly once through SIGKILLs, dead letters, two sinks sharing a group, and
//! `kpipe demo`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::harness::{eventually, python, python_script, BrokerProcess, SeaweedFs};

fn sink_args<'a>(topic: &'a str, lake: &'a str) -> Vec<&'a str> {
    vec![
        "sink",
        "lake",
        "--topic",
        topic,
        "--to",
        lake,
        "--time-field",
        "event_timestamp.ts_ms",
    ]
}

/// (rows, distinct (partition, offset)) as DuckDB sees the lake.
fn duckdb_counts(lake: &str, topic: &str) -> (u64, u64) {
    let output = Command::new(python())
        .arg(python_script("lake_reader.py"))
        .args([lake, topic])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "DuckDB reader failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut numbers = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

fn query(broker: &BrokerProcess, lake: &str, sql: &str) -> String {
    broker
        .kpipe(&["query", "--lake", lake, "--format", "csv", sql], "")
        .out()
}

#[test]
fn sink_to_a_directory_then_check_query_and_read_independently() {
    let broker = BrokerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake = lake.to_str().unwrap();
    broker
        .kpipe(&["gen", "music", "--count", "5000", "--seed", "3"], "")
        .out();
    let mut args = sink_args("music_events", lake);
    args.extend(["--until-end", "--flush-rows", "1500"]);
    let sunk = broker.kpipe(&args, "");
    assert!(sunk.ok, "{}", sunk.stderr);
    assert!(sunk.stderr.contains("wrote 5000 rows"), "{}", sunk.stderr);

    let checked = broker.kpipe(&["lake", "check", lake, "--topic", "music_events"], "");
    assert!(checked.ok, "{}\n{}", checked.stdout, checked.stderr);
    assert!(checked
        .stdout
        .contains("every offset is in the lake exactly once"));
    assert!(
        checked.stdout.contains("event_param.event_type_id Int64"),
        "schema shown: {}",
        checked.stdout
    );

    assert_eq!(
        query(&broker, lake, "SELECT count(*) AS n FROM music_events"),
        "n\n5000\n"
    );
    let by_type = query(&broker, lake, "SELECT \"event_param.event_type\" AS t, count(*) AS n FROM music_events GROUP BY 1 ORDER BY 1");
    let total: u64 = by_type
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!((by_type.lines().count() - 1, total), (8, 5000), "{by_type}");
    let playbacks = query(
        &broker,
        lake,
        "SELECT count(*) AS n FROM music_events WHERE \"event_param.event_type_id\" = 1",
    );
    let playbacks: u64 = playbacks.lines().nth(1).unwrap().parse().unwrap();
    assert!(
        playbacks > 1500 && playbacks < 2500,
        "about 40% are track_playback, got {playbacks}"
    );
    let described = broker
        .kpipe(&["query", "--lake", lake, "DESCRIBE music_events"], "")
        .out();
    assert!(
        described.contains("event_timestamp.ts_ms")
            && described.contains("_offset")
            && described.contains("dt")
    );
    let json = broker
        .kpipe(
            &[
                "query",
                "--lake",
                lake,
                "--format",
                "json",
                "SELECT _partition, _offset, dt FROM music_events LIMIT 2",
            ],
            "",
        )
        .out();
    let row: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert!(row["_offset"].is_i64() && row["dt"].as_str().unwrap().len() == 10);

    assert_eq!(duckdb_counts(lake, "music_events"), (5000, 5000));
    let bad_sql = broker.kpipe(&["query", "--lake", lake, "SELEC nonsense"], "");
    assert!(
        !bad_sql.ok && bad_sql.stderr.trim().lines().count() == 1,
        "{}",
        bad_sql.stderr
    );
}

#[test]
fn exactly_once_through_repeated_sigkills() {
    exactly_once_through_sigkills(&[]);
}

#[test]
fn exactly_once_through_repeated_sigkills_with_librdkafka_fetching() {
    exactly_once_through_sigkills(&["--librdkafka-fetch"]);
}

/// Kills the sink four times mid-drain, with `fetch` flags choosing the fetch path.
fn exactly_once_through_sigkills(fetch: &[&str]) {
    let broker = BrokerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake = lake.to_str().unwrap();
    broker
        .kpipe(&["gen", "music", "--count", "200000", "--seed", "11"], "")
        .out();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill schedule seed: {seed}");
    let mut random = move |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    let group = "kpipe-lake-music_events";
    for kill in 1..=4i64 {
        // A killed member holds its partitions for its session timeout: keep it short.
        let mut args = sink_args("music_events", lake);
        args.extend([
            "--flush-rows",
            "1000",
            "--flush-interval",
            "100ms",
            "-X",
            "session.timeout.ms=1500",
            "-X",
            "heartbeat.interval.ms=300",
        ]);
        args.extend(fetch);
        let mut sink = broker
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill it mid-drain: once another 15k rows are committed, after a random pause.
        let reached = eventually(Duration::from_secs(60), || {
            broker.committed(group) >= kill * 15_000
        });
        assert!(reached, "the sink made no progress before kill {kill}");
        std::thread::sleep(Duration::from_millis(random(150)));
        assert!(
            sink.try_wait().unwrap().is_none(),
            "the sink exited on its own before kill {kill}"
        );
        sink.kill().unwrap();
        sink.wait().unwrap();
        assert!(
            broker.committed(group) < 200_000,
            "kill {kill} came after the drain finished"
        );
    }
    let kills = 4;
    let mut args = sink_args("music_events", lake);
    args.push("--until-end");
    args.extend(fetch);
    let finished = broker.kpipe(&args, "");
    assert!(finished.ok, "{}", finished.stderr);

    let checked = broker.kpipe(&["lake", "check", lake, "--topic", "music_events"], "");
    assert!(
        checked.ok,
        "after {kills} SIGKILLs: {}\n{}",
        checked.stdout, checked.stderr
    );
    assert_eq!(
        duckdb_counts(lake, "music_events"),
        (200_000, 200_000),
        "rows and distinct offsets after {kills} SIGKILLs"
    );
}

#[test]
fn rewound_offsets_rewrite_the_lake_in_other_cuts_without_doubles() {
    rewound_offsets_rewrite_the_lake(&[]);
}

#[test]
fn rewound_offsets_rewrite_the_lake_with_librdkafka_fetching() {
    rewound_offsets_rewrite_the_lake(&["--librdkafka-fetch"]);
}

/// Files written past the committed offsets, the way flushes whose commits the
/// broker lost or refused leave them, then a drain that cuts its flushes elsewhere.
fn rewound_offsets_rewrite_the_lake(fetch: &[&str]) {
    let broker = BrokerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().to_str().unwrap();
    let drain = || {
        let mut args = sink_args("music_events", lake);
        args.push("--until-end");
        args.extend(fetch);
        let sunk = broker.kpipe(&args, "");
        assert!(sunk.ok, "{}", sunk.stderr);
    };
    let files = || {
        walk(dir.path())
            .into_iter()
            .filter(|f| f.ends_with(".parquet"))
            .count()
    };
    // Three rounds of 1000 events, each drained into files of its own.
    for seed in ["5", "6", "7"] {
        broker
            .kpipe(&["gen", "music", "--count", "1000", "--seed", seed], "")
            .out();
        drain();
    }
    let in_rounds = files();
    rewind_the_sink(&broker);
    drain();
    assert!(
        files() < in_rounds,
        "one drain of everything left the {in_rounds} files of three rounds in place"
    );
    let checked = broker.kpipe(&["lake", "check", lake, "--topic", "music_events"], "");
    assert!(checked.ok, "{}\n{}", checked.stdout, checked.stderr);
    assert_eq!(duckdb_counts(lake, "music_events"), (3000, 3000));
}

/// Moves the music sink's committed offsets back to the start, as a broker
/// that lost them would.
fn rewind_the_sink(broker: &BrokerProcess) {
    let group = "kpipe-lake-music_events";
    let args = ["group", "reset-offsets", group, "--topic", "music_events"];
    let mut args = args.to_vec();
    args.extend(["--to-earliest", "--execute"]);
    broker.kpipe(&args, "").out();
}

/// Every file under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|entry| {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path.to_string_lossy().into_owned()]
            }
        })
        .collect()
}

#[test]
fn compressed_batches_of_every_codec_reach_the_lake() {
    let broker = BrokerProcess::start();
    broker
        .kpipe(&["topic", "create", "events", "--partitions", "2"], "")
        .out();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    for (c, codec) in codecs.iter().enumerate() {
        let input: String = (0..200)
            .map(|i| {
                format!(
                    r#"{{"id":{},"codec":"{codec}","event_timestamp":{{"ts_ms":{now}}}}}"#,
                    c * 200 + i
                ) + "\n"
            })
            .collect();
        let compression = format!("compression.type={codec}");
        broker
            .kpipe(&["produce", "events", "-X", &compression], &input)
            .out();
    }
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().to_str().unwrap();
    let mut args = sink_args("events", lake);
    args.push("--until-end");
    let sunk = broker.kpipe(&args, "");
    assert!(sunk.ok, "{}", sunk.stderr);
    let checked = broker.kpipe(&["lake", "check", lake, "--topic", "events"], "");
    assert!(checked.ok, "{}\n{}", checked.stdout, checked.stderr);
    assert_eq!(duckdb_counts(lake, "events"), (1000, 1000));
    let per_codec = query(
        &broker,
        lake,
        "SELECT codec, count(DISTINCT id) AS n FROM events GROUP BY codec ORDER BY codec",
    );
    for codec in codecs {
        assert!(
            per_codec
                .lines()
                .any(|l| l.contains(codec) && l.contains("200")),
            "{codec}: {per_codec}"
        );
    }
}

#[test]
fn the_sink_rides_out_a_broker_crash_without_losing_or_repeating_rows() {
    let mut broker = BrokerProcess::start();
    broker
        .kpipe(&["gen", "music", "--count", "60000", "--seed", "3"], "")
        .out();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().to_str().unwrap();
    let mut args = sink_args("music_events", lake);
    args.extend(["--flush-rows", "2000", "--flush-interval", "100ms"]);
    let sink = broker
        .command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let group = "kpipe-lake-music_events";
    assert!(
        eventually(Duration::from_secs(60), || broker.committed(group)
            >= 10_000),
        "the sink made no progress"
    );
    broker.kill9();
    broker.restart();
    let drained = eventually(Duration::from_secs(90), || {
        broker.committed(group) == 60_000
    });
    Command::new("kill")
        .args(["-TERM", &sink.id().to_string()])
        .status()
        .unwrap();
    let output = sink.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        drained,
        "the sink did not finish after the broker came back: {stderr}"
    );
    assert!(output.status.success(), "{stderr}");
    let checked = broker.kpipe(&["lake", "check", lake], "");
    assert!(checked.ok, "{}\n{}", checked.stdout, checked.stderr);
    assert_eq!(duckdb_counts(lake, "music_events"), (60_000, 60_000));
}

#[test]
fn bad_messages_go_to_the_dead_letter_topic_and_the_sink_goes_on() {
    dead_letters(&[]);
}

#[test]
fn dead_letters_keep_their_headers_with_librdkafka_fetching() {
    dead_letters(&["--librdkafka-fetch"]);
}

/// Four bad messages among forty good ones, with `fetch` flags choosing the fetch path.
fn dead_letters(fetch: &[&str]) {
    let broker = BrokerProcess::start();
    broker
        .kpipe(&["topic", "create", "events", "--partitions", "2"], "")
        .out();
    broker.kpipe(&["topic", "create", "events_dlq"], "").out();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let good = |i: u32| format!(r#"{{"id":{i},"event_timestamp":{{"ts_ms":{now}}}}}"#);
    let mut input = String::new();
    for i in 0..30 {
        input.push_str(&good(i));
        input.push('\n');
    }
    input.push_str("this is not json\n[1,2,3]\n{\"id\":99}\n{\"id\":100,\"event_timestamp\":{\"ts_ms\":\"soon\"}}\n");
    for i in 30..40 {
        input.push_str(&good(i));
        input.push('\n');
    }
    broker
        .kpipe(&["produce", "events", "-H", "origin=test"], &input)
        .out();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().to_str().unwrap();
    let mut args = sink_args("events", lake);
    args.extend(["--until-end", "--dlq-topic", "events_dlq"]);
    args.extend(fetch);
    let sunk = broker.kpipe(&args, "");
    assert!(sunk.ok, "{}", sunk.stderr);
    assert!(
        sunk.stderr.contains("wrote 40 rows") && sunk.stderr.contains("4 messages dead-lettered"),
        "{}",
        sunk.stderr
    );

    let letters = broker.messages("events_dlq", 1500);
    assert_eq!(letters.len(), 4);
    let errors: Vec<&str> = letters
        .iter()
        .map(|l| l["headers"]["kpipe.error"].as_str().unwrap())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("message is not valid JSON")),
        "{errors:?}"
    );
    assert!(errors.contains(&"message is not a JSON object"));
    assert_eq!(
        errors
            .iter()
            .filter(|e| e.contains("time field event_timestamp.ts_ms"))
            .count(),
        2
    );
    assert!(letters
        .iter()
        .all(|l| l["headers"]["origin"] == "test" && l["headers"]["kpipe.topic"] == "events"));

    // The gaps the letters left are explained by the DLQ; without it they are errors.
    let with_dlq = broker.kpipe(
        &[
            "lake",
            "check",
            lake,
            "--topic",
            "events",
            "--dlq-topic",
            "events_dlq",
        ],
        "",
    );
    assert!(with_dlq.ok, "{}\n{}", with_dlq.stdout, with_dlq.stderr);
    assert!(with_dlq.stdout.contains("dead-lettered"));
    let without = broker.kpipe(&["lake", "check", lake, "--topic", "events"], "");
    without.fails_with("offsets are missing");
}

#[test]
fn two_sinks_in_one_group_share_partitions_without_duplicates() {
    // The first rebalance waits for both members, so they split the partitions from the start.
    let broker = BrokerProcess::start_with(&["--group-initial-rebalance-delay-ms", "3000"]);
    broker
        .kpipe(
            &["topic", "create", "music_events", "--partitions", "4"],
            "",
        )
        .out();
    broker
        .kpipe(&["gen", "music", "--count", "40000", "--seed", "5"], "")
        .out();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().to_str().unwrap();
    let spawn = || {
        let mut args = sink_args("music_events", lake);
        args.extend([
            "--group",
            "shared",
            "--flush-rows",
            "2000",
            "--flush-interval",
            "300ms",
        ]);
        broker
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let done = eventually(Duration::from_secs(60), || {
        let checked = broker.kpipe(&["lake", "check", lake, "--offline"], "");
        checked
            .stdout
            .lines()
            .any(|l| l.contains("music_events") && l.contains("40000"))
    });
    let mut reports = Vec::new();
    for child in [first, second] {
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "a sink failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        reports.push(String::from_utf8_lossy(&output.stderr).to_string());
    }
    assert!(done, "the two sinks did not drain 40000 events in 60 s");
    let rows: Vec<u64> = reports
        .iter()
        .map(|r| {
            r.split("wrote ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        rows.iter().all(|&r| r > 0),
        "both instances should have written rows: {rows:?}"
    );
    let checked = broker.kpipe(&["lake", "check", lake], "");
    assert!(checked.ok, "{}\n{}", checked.stdout, checked.stderr);
    assert_eq!(duckdb_counts(lake, "music_events"), (40_000, 40_000));
}

#[test]
fn s3_lake_on_seaweedfs() {
    let broker = BrokerProcess::start();
    let s3 = SeaweedFs::start();
    let lake = "s3://lake-bucket/prod-python";
    let drain = || {
        let mut args = sink_args("music_events", lake);
        args.extend(["--until-end", "--create-bucket", "--compression", "snappy"]);
        let mut sink = broker.command(&args);
        s3.env(&mut sink);
        let sunk = broker.run(sink, "");
        assert!(sunk.ok, "{}", sunk.stderr);
        sunk.stderr
    };
    // Files of three drains, then all of them rewritten in one, with other cuts.
    for seed in ["9", "10", "11"] {
        broker
            .kpipe(&["gen", "music", "--count", "1000", "--seed", seed], "")
            .out();
        let said = drain();
        assert!(said.contains("wrote 1000 rows"), "{said}");
    }
    rewind_the_sink(&broker);
    let said = drain();
    assert!(said.contains("wrote 3000 rows"), "{said}");

    let mut check = broker.command(&["lake", "check", lake, "--topic", "music_events"]);
    s3.env(&mut check);
    let checked = broker.run(check, "");
    assert!(checked.ok, "{}\n{}", checked.stdout, checked.stderr);
    let mut count = broker.command(&[
        "query",
        "--lake",
        lake,
        "--format",
        "csv",
        "SELECT count(*) AS n, count(DISTINCT dt) AS days FROM music_events",
    ]);
    s3.env(&mut count);
    assert_eq!(broker.run(count, "").out(), "n,days\n3000,1\n");

    let mut wrong_key = broker.command(&["lake", "check", lake, "--offline"]);
    s3.env(&mut wrong_key);
    wrong_key.env("AWS_SECRET_ACCESS_KEY", "wrong");
    let refused = broker.run(wrong_key, "");
    assert!(!refused.ok, "SigV4 with a wrong secret must be refused");
    assert!(
        !refused.stderr.contains("wrong"),
        "the secret leaked: {}",
        refused.stderr
    );
}

#[test]
fn demo_runs_the_whole_pipeline_and_verifies_it() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_kpipe"))
        .args([
            "demo",
            "--events",
            "20000",
            "--lake",
            lake.to_str().unwrap(),
        ])
        .env("KPIPE_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("track_playback") && stdout.contains("DESCRIBE music_events"));
    let last = stdout.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("verified: produced 20000 = 20000 rows in the lake, no duplicate offsets"),
        "{last}"
    );
    assert!(started.elapsed() < Duration::from_secs(120));
}
