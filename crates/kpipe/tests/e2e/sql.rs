//! `kpipe sql` live against `kpipe broker`: seed 03's ksqlDB session with
//! `kpipe gen payments`, each result checked against a computation of its own
//! over the records read back from the topic.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::harness::{block_on, bounded, BrokerProcess};

const PAYMENTS: &str = "CREATE STREAM payments (name VARCHAR, amount INTEGER) \
    WITH (KAFKA_TOPIC='payments', VALUE_FORMAT='json', PARTITIONS=3);";
const WINDOW_MS: i64 = 10_000;

/// One message read back: partition, offset, timestamp, key, value.
type Read = (i32, i64, i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// Every message of `topic` as it is now.
pub(crate) fn read_topic(bootstrap: &str, topic: &str) -> Vec<Read> {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    bounded(Duration::from_secs(60), "reading a topic", move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "sql-test-reader")
            .set("enable.partition.eof", "true")
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions = metadata.topics()[0].partitions().len();
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            assignment
                .add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut at_end = vec![false; partitions];
        let mut read = Vec::new();
        while !at_end.iter().all(|e| *e) {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    at_end[m.partition() as usize] = false;
                    read.push((
                        m.partition(),
                        m.offset(),
                        m.timestamp().to_millis().unwrap_or(0),
                        m.key().map(<[u8]>::to_vec),
                        m.payload().map(<[u8]>::to_vec),
                    ));
                }
                Some(Err(KafkaError::PartitionEOF(p))) => at_end[p as usize] = true,
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        read
    })
}

fn partition_count(broker: &BrokerProcess, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .expect("client");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0].partitions().len()
}

/// Payments as (timestamp, name, amount), from the topic itself.
pub(crate) fn payments(broker: &BrokerProcess) -> Vec<(i64, String, i64)> {
    read_topic(&broker.bootstrap, "payments")
        .into_iter()
        .filter_map(|(_, _, ts, _, value)| {
            let v: Value = serde_json::from_slice(&value?).ok()?;
            Some((ts, v["name"].as_str()?.to_string(), v["amount"].as_i64()?))
        })
        .collect()
}

/// A JSON-lines run of `kpipe sql` that must succeed.
fn sql_rows(broker: &BrokerProcess, extra: &[&str], statements: &str) -> Vec<Value> {
    let mut args = vec!["sql", "--output", "json"];
    args.extend_from_slice(extra);
    args.extend(["-e", statements]);
    broker
        .kpipe(&args, "")
        .out()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// (window start, name) → (count, sum) for every window closed by the
/// highest timestamp, with no grace: what EMIT FINAL must produce.
fn closed_windows(payments: &[(i64, String, i64)]) -> BTreeMap<(i64, String), (i64, i64)> {
    let stream_time = payments.iter().map(|p| p.0).max().unwrap();
    let mut windows = BTreeMap::new();
    for (ts, name, amount) in payments {
        let start = ts - ts.rem_euclid(WINDOW_MS);
        if start + WINDOW_MS <= stream_time {
            let entry = windows.entry((start, name.clone())).or_insert((0, 0));
            entry.0 += 1;
            entry.1 += amount;
        }
    }
    windows
}

#[test]
fn seed_03_session_runs_against_kpipe_broker() {
    let broker = BrokerProcess::start();
    let created = broker.kpipe(&["sql", "-e", PAYMENTS], "").out();
    assert_eq!(created.trim(), "Stream created");
    let partitions: std::collections::BTreeSet<i32> = read_topic(&broker.bootstrap, "payments")
        .iter()
        .map(|m| m.0)
        .collect();
    assert!(partitions.is_empty(), "a new, empty topic");
    assert_eq!(partition_count(&broker, "payments"), 3);
    // Event time an hour ago (inside retention), on a window boundary, 1 ms apart.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let start = (now - 3_600_000) / WINDOW_MS * WINDOW_MS;
    broker
        .kpipe(
            &[
                "gen",
                "payments",
                "--count",
                "25000",
                "--start-ms",
                &start.to_string(),
            ],
            "",
        )
        .out();
    let payments = payments(&broker);
    assert_eq!(payments.len(), 25_000);

    // Pull queries read the stream as it is and stop.
    let peggy = sql_rows(
        &broker,
        &[],
        &format!("{PAYMENTS} SELECT * FROM payments WHERE name='Peggy';"),
    );
    let expected = payments.iter().filter(|p| p.1 == "Peggy").count();
    assert_eq!(peggy.len(), expected);
    assert!(peggy
        .iter()
        .all(|r| r["NAME"] == "Peggy" && r["AMOUNT"].is_i64()));
    let big = sql_rows(
        &broker,
        &[],
        &format!("{PAYMENTS} SELECT * FROM payments WHERE amount > 900;"),
    );
    assert_eq!(big.len(), payments.iter().filter(|p| p.2 > 900).count());

    // ... but do not group.
    let grouped = broker.kpipe(
        &[
            "sql",
            "-e",
            &format!("{PAYMENTS} SELECT name, SUM(amount) AS total FROM payments GROUP BY name;"),
        ],
        "",
    );
    grouped.fails_with(
        "Pull queries don't support GROUP BY clauses. See https://cnfl.io/queries for more info.",
    );

    // A push query with the pseudo columns, filtered to partition 1, in offset order.
    let pushed = sql_rows(
        &broker,
        &[],
        &format!("{PAYMENTS} SET 'auto.offset.reset'='earliest'; \
            SELECT ROWPARTITION, ROWOFFSET, * FROM payments WHERE ROWPARTITION=1 EMIT CHANGES LIMIT 5;"),
    );
    let offsets: Vec<i64> = pushed
        .iter()
        .map(|r| r["ROWOFFSET"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4]);
    assert!(pushed
        .iter()
        .all(|r| r["ROWPARTITION"] == 1 && r["NAME"].is_string()));

    // The tumbling 10-second window with EMIT FINAL and HAVING: one row per closed window.
    let windows = closed_windows(&payments);
    let carol = sql_rows(
        &broker,
        &["--until-end"],
        &format!("{PAYMENTS} SET 'auto.offset.reset'='earliest'; \
            SELECT FROM_UNIXTIME(WINDOWSTART) AS ws, FROM_UNIXTIME(WINDOWEND) AS we, name, COUNT(*) AS cnt, SUM(amount) AS sum \
            FROM payments WINDOW TUMBLING(SIZE 10 SECONDS) GROUP BY name HAVING name='Carol' EMIT FINAL;"),
    );
    let expected: Vec<(i64, i64, i64)> = windows
        .iter()
        .filter(|((_, name), _)| name == "Carol")
        .map(|((ws, _), (cnt, sum))| (*ws, *cnt, *sum))
        .collect();
    assert_eq!(expected.len(), 2, "two of the three windows are closed");
    let got: Vec<(i64, i64, i64)> = carol
        .iter()
        .map(|r| {
            assert_eq!(
                r["WE"].as_i64().unwrap() - r["WS"].as_i64().unwrap(),
                WINDOW_MS
            );
            assert_eq!(r["NAME"], "Carol");
            (
                r["WS"].as_i64().unwrap(),
                r["CNT"].as_i64().unwrap(),
                r["SUM"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);

    // CREATE TABLE ... AS writes the final windows to PAYMENTS_AGGR, keyed as
    // ksqlDB keys them (KAFKA: the name, then the window start); a record that
    // is not JSON goes to the dead-letter topic and is counted.
    broker.create_topic("payments_dlq", 1, &[]);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    block_on(
        producer.send(
            FutureRecord::to("payments")
                .key("x")
                .payload("not json")
                .partition(0)
                .timestamp(start),
            Duration::from_secs(10),
        ),
    )
    .unwrap();
    let run = broker.kpipe(
        &["sql", "--until-end", "--dlq-topic", "payments_dlq", "-e",
          &format!("{PAYMENTS} SET 'auto.offset.reset'='earliest'; \
            CREATE TABLE payments_aggr WITH(VALUE_FORMAT='json', KEY_FORMAT='kafka') AS \
            SELECT name, COUNT(*) AS cnt, SUM(amount) AS sum FROM payments WINDOW TUMBLING(SIZE 10 SECONDS) GROUP BY name EMIT FINAL;")],
        "",
    );
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("Created query with ID CTAS_PAYMENTS_AGGR_"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("read 25001 records, wrote 38, skipped 1"),
        "{}",
        run.stderr
    );
    let mut written = BTreeMap::new();
    for (_, _, ts, key, value) in read_topic(&broker.bootstrap, "PAYMENTS_AGGR") {
        let key = key.expect("a windowed key");
        let (name, window) = key.split_at(key.len() - 8);
        let window_start = i64::from_be_bytes(window.try_into().unwrap());
        let value: Value = serde_json::from_slice(&value.expect("a row")).unwrap();
        assert!(
            ts >= window_start && ts < window_start + WINDOW_MS,
            "stamped with its last input"
        );
        written.insert(
            (window_start, String::from_utf8(name.to_vec()).unwrap()),
            (
                value["CNT"].as_i64().unwrap(),
                value["SUM"].as_i64().unwrap(),
            ),
        );
    }
    assert_eq!(written, windows);
    // A plain CREATE TABLE is not materialized, so ksqlDB refuses to pull it;
    // a SOURCE table is, and lists a row per window, with its bounds.
    broker
        .kpipe(
            &["sql", "-e", "CREATE TABLE plain (name STRING PRIMARY KEY, cnt BIGINT) WITH (KAFKA_TOPIC='PAYMENTS_AGGR', \
                VALUE_FORMAT='json', KEY_FORMAT='kafka', WINDOW_TYPE='TUMBLING', WINDOW_SIZE='10 SECONDS'); \
                SELECT * FROM plain;"],
            "",
        )
        .fails_with("The `PLAIN` table isn't queryable.");
    let pulled = sql_rows(
        &broker,
        &[],
        "CREATE SOURCE TABLE aggr (name STRING PRIMARY KEY, cnt BIGINT, sum INT) WITH (KAFKA_TOPIC='PAYMENTS_AGGR', \
            VALUE_FORMAT='json', KEY_FORMAT='kafka', WINDOW_TYPE='TUMBLING', WINDOW_SIZE='10 SECONDS'); \
         SELECT * FROM aggr WHERE name='Carol';",
    );
    let pulled: Vec<(i64, i64, i64)> = pulled
        .iter()
        .map(|r| {
            let start = r["WINDOWSTART"].as_i64().unwrap();
            assert_eq!(r["WINDOWEND"].as_i64().unwrap(), start + WINDOW_MS);
            (
                start,
                r["CNT"].as_i64().unwrap(),
                r["SUM"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(pulled, expected);
    let dead = read_topic(&broker.bootstrap, "payments_dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].4.as_deref(), Some(&b"not json"[..]));
}

#[test]
fn a_push_query_streams_until_ctrl_c() {
    let broker = BrokerProcess::start();
    broker.kpipe(&["sql", "-e", PAYMENTS], "").out();
    let mut push = broker
        .command(&[
            "sql",
            "--output",
            "json",
            "-e",
            &format!(
                "{PAYMENTS} SELECT name, amount FROM payments WHERE amount >= 500 EMIT CHANGES;"
            ),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(push.stdout.take().unwrap());
    // Produce while the query waits at the end of the topic (it starts at latest).
    {
        let mut gen = broker
            .command(&["gen", "payments", "--rate", "2000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut rows = 0;
        let mut line = String::new();
        while rows < 20 && Instant::now() < deadline {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                break;
            }
            let row: Value = serde_json::from_str(&line).unwrap();
            assert!(row["AMOUNT"].as_i64().unwrap() >= 500, "{row}");
            rows += 1;
        }
        assert_eq!(rows, 20, "the push query streamed rows as they came");
        let _ = gen.kill();
        let _ = gen.wait();
    }
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &push.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = bounded(
        Duration::from_secs(20),
        "the push query stopping",
        move || push.wait().unwrap(),
    );
    assert!(
        status.success(),
        "Ctrl-C ends a push query cleanly, got {status}"
    );
}

#[test]
fn the_shell_runs_a_session_through_a_terminal() {
    let broker = BrokerProcess::start();
    broker.kpipe(&["sql", "-e", PAYMENTS], "").out();
    let mut generator = broker
        .command(&["gen", "payments", "--rate", "500"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let steps = [
        // A statement over two lines, then one the shell reports and survives.
        "CREATE STREAM payments (name VARCHAR, amount INTEGER)\n  WITH (KAFKA_TOPIC='payments', VALUE_FORMAT='json');",
        "SELECT nope FROM payments;",
        "CREATE TABLE counts AS SELECT name, COUNT(*) AS n FROM payments GROUP BY name;",
        "SHOW QUERIES;",
        // A push query streams until Ctrl-C, which stops it and not the shell.
        "SELECT name, amount, 'seen' AS tag FROM payments EMIT CHANGES;\n!interrupt-after |seen",
        // The table's own changes, so the query has written before it ends
        // (it joins its group after the push query has seen rows).
        "SELECT name, n, 'counted' AS tag FROM counts EMIT CHANGES;\n!interrupt-after |counted",
        "TERMINATE CTAS_COUNTS_0;",
        "SHOW QUERIES;",
    ];
    // No --server: the shell runs a server of its own over the broker.
    let shown = shell_session(&broker, &[], &steps);
    let _ = generator.kill();
    let _ = generator.wait();
    assert_shows(
        &shown,
        &[
            "Stream created",
            "error: SELECT column 'NOPE' cannot be resolved.",
            "Created query with ID CTAS_COUNTS_0",
            "CTAS_COUNTS_0 ┆ RUNNING",
            "|seen",
            "|counted",
            "Query terminated.",
            "(0 rows)",
            "exit=0",
        ],
    );
    assert!(
        !read_topic(&broker.bootstrap, "COUNTS").is_empty(),
        "the persistent query wrote through the broker"
    );
}

/// Drives `kpipe sql ARGS` through a pseudo-terminal with
/// tests/python/sql_shell.py's `steps`; what the terminal showed.
fn shell_session(broker: &BrokerProcess, args: &[&str], steps: &[&str]) -> String {
    let home = tempfile::tempdir().unwrap();
    let mut shell = std::process::Command::new(crate::harness::python());
    shell
        .arg(crate::harness::python_script("sql_shell.py"))
        .arg(env!("CARGO_BIN_EXE_kpipe"))
        .arg("sql")
        .args(args)
        .env("KPIPE_BOOTSTRAP", &broker.bootstrap)
        .env("HOME", home.path());
    let shown = broker.run(shell, &steps.join("\n---\n")).out();
    assert!(
        home.path().join(".kpipe_sql_history").exists(),
        "the shell keeps its history"
    );
    shown
}

#[test]
fn the_shell_on_a_kpipe_server_runs_a_session_through_a_terminal() {
    let broker = BrokerProcess::start();
    broker
        .kpipe(&["gen", "payments", "--count", "300", "--seed", "7"], "")
        .out();
    let state = tempfile::tempdir().unwrap();
    let server = crate::server::Server::start(&broker, state.path());
    // The busiest name's count and total, from the records themselves.
    let mut totals: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (_, name, amount) in payments(&broker) {
        let entry = totals.entry(name).or_default();
        entry.0 += 1;
        entry.1 += amount;
    }
    let (name, (count, total)) = totals
        .iter()
        .max_by_key(|(_, (count, _))| *count)
        .expect("payments were produced");
    let pull = format!(
        "SELECT cnt, total FROM totals WHERE name='{name}';\n!repeat-until │ *{count} *┆ *{total} *│"
    );
    let steps = [
        "SET 'auto.offset.reset' = 'earliest';",
        "CREATE STREAM payments (name VARCHAR, amount INTEGER)\n  WITH (KAFKA_TOPIC='payments', VALUE_FORMAT='json');",
        "CREATE TABLE totals AS\n  SELECT name, COUNT(*) AS cnt, SUM(amount) AS total\n  FROM payments GROUP BY name;",
        "SHOW QUERIES;",
        // The pull query is asked again until the table has caught up.
        &pull,
        "SELECT name, amount, 'limited' AS tag FROM payments EMIT CHANGES LIMIT 3;",
        // Ctrl-C stops this query, not the shell: the next statement runs.
        "SELECT name, amount, 'endless' AS tag FROM payments EMIT CHANGES;\n!interrupt-after |endless",
        "SHOW QUERIES;",
        "DROP STREAM nosuch;",
        "SELECT nope FROM payments;",
        "TERMINATE CTAS_TOTALS_0;",
        "SHOW QUERIES;",
    ];
    let shown = shell_session(&broker, &["--server", &server.url], &steps);
    assert_shows(
        &shown,
        &[
            &format!("kpipe sql on {}", server.url),
            "Successfully changed local property 'auto.offset.reset' to 'earliest'.",
            "Stream created",
            "Created query with ID CTAS_TOTALS_0",
            "error: SELECT column 'NOPE' cannot be resolved.\r\n",
            "Query terminated.",
            "(0 rows)",
            "exit=0",
        ],
    );
    assert_eq!(
        shown.matches("CTAS_TOTALS_0 ┆ RUNNING").count(),
        2,
        "SHOW QUERIES lists the query before and after the interrupted push query:\n{shown}"
    );
    assert_eq!(
        shown.matches("|limited").count(),
        3,
        "LIMIT 3 ends the push query after 3 rows:\n{shown}"
    );
    let errors: Vec<&str> = shown.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 2, "an error is one line each:\n{shown}");
    assert!(errors[0].contains("NOSUCH"), "{errors:?}");
    // -e with --server runs its statements there.
    let streams = broker
        .kpipe(&["sql", "--server", &server.url, "-e", "SHOW STREAMS;"], "")
        .out();
    assert!(
        streams
            .lines()
            .any(|l| l.contains("PAYMENTS") && l.contains("payments")),
        "{streams}"
    );
}

/// Fails unless the shell's output shows every one of `expected`.
fn assert_shows(shown: &str, expected: &[&str]) {
    for expected in expected {
        assert!(
            shown.contains(expected),
            "missing {expected:?} in:\n{shown}"
        );
    }
}
