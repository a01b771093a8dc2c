//! `kpipe server` against `kpipe broker`: ksqlDB's REST endpoints, a push query
//! streamed over HTTP, and a persistent query that survives kill -9 with the
//! same final values as a computation over its input.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{block_on, eventually, BrokerProcess};
use crate::sql::{payments, read_topic};

pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
}

impl Server {
    pub(crate) fn start(broker: &BrokerProcess, state: &Path) -> Server {
        Server::start_with(broker, state, &[])
    }

    fn start_with(broker: &BrokerProcess, state: &Path, extra: &[&str]) -> Server {
        let mut args = vec![
            "server",
            "--listen",
            "127.0.0.1:0",
            "--state",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut child = broker
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kpipe server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("the server's first line");
        let url = line
            .trim()
            .strip_prefix("kpipe server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        Server { child, url }
    }

    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, and the exit it leads to.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let status = self.child.wait().expect("the server exits");
        assert!(status.success(), "the server stopped with {status}");
    }

    fn post(&self, path: &str, body: Value) -> (u16, String) {
        block_on(async {
            let response = reqwest::Client::new()
                .post(format!("{}{path}", self.url))
                .header("content-type", "application/json")
                .body(body.to_string())
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .expect("request");
            let status = response.status().as_u16();
            (status, response.text().await.expect("body"))
        })
    }

    fn get(&self, path: &str) -> Value {
        block_on(async {
            let response = reqwest::get(format!("{}{path}", self.url))
                .await
                .expect("request");
            serde_json::from_str(&response.text().await.expect("body")).expect("JSON")
        })
    }

    fn ksql(&self, statements: &str) -> Vec<Value> {
        let (status, body) = self.post(
            "/ksql",
            json!({"ksql": statements, "streamsProperties": {"auto.offset.reset": "earliest"}}),
        );
        assert_eq!(status, 200, "{statements}: {body}");
        serde_json::from_str(&body).expect("entities")
    }

    /// A pull query's rows (the v1 array without its header).
    fn pull(&self, sql: &str) -> Vec<Vec<Value>> {
        let (status, body) = self.post("/query", json!({"ksql": sql}));
        assert_eq!(status, 200, "{sql}: {body}");
        let answer: Vec<Value> = serde_json::from_str(&body).expect("a JSON array");
        assert!(answer[0]["header"]["schema"].is_string(), "{body}");
        answer[1..]
            .iter()
            .filter_map(|e| e["row"]["columns"].as_array().cloned())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PAYMENTS: &str = "CREATE STREAM payments (name VARCHAR, amount INTEGER) \
    WITH (KAFKA_TOPIC='payments', VALUE_FORMAT='JSON', PARTITIONS=3);";
const TOTALS: &str = "CREATE TABLE totals AS SELECT name, COUNT(*) AS cnt, SUM(amount) AS total \
    FROM payments GROUP BY name EMIT CHANGES;";

/// name → (count, sum) over every payment in the topic.
fn batch_totals(broker: &BrokerProcess) -> BTreeMap<String, (i64, i64)> {
    let mut totals = BTreeMap::new();
    for (_, name, amount) in payments(broker) {
        let entry = totals.entry(name).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += amount;
    }
    totals
}

fn pulled_totals(server: &Server) -> BTreeMap<String, (i64, i64)> {
    server
        .pull("SELECT name, cnt, total FROM totals;")
        .into_iter()
        .map(|row| {
            let name = row[0].as_str().unwrap_or_default().to_string();
            (
                name,
                (row[1].as_i64().unwrap_or(-1), row[2].as_i64().unwrap_or(-1)),
            )
        })
        .collect()
}

fn gen_payments(broker: &BrokerProcess, count: &str, seed: &str) {
    broker
        .kpipe(&["gen", "payments", "--count", count, "--seed", seed], "")
        .out();
}

#[test]
fn rest_api_answers_statements_and_queries_and_a_query_survives_kill_9() {
    let broker = BrokerProcess::start();
    let state = tempfile::tempdir().unwrap();
    let server = Server::start(&broker, state.path());
    assert_eq!(
        server.get("/info")["KsqlServerInfo"]["serverStatus"],
        "RUNNING"
    );
    assert_eq!(server.get("/healthcheck")["isHealthy"], true);

    let created = server.ksql(&format!("{PAYMENTS}\n{TOTALS}"));
    assert_eq!(created.len(), 2);
    assert_eq!(created[0]["@type"], "currentStatus");
    assert_eq!(created[0]["commandStatus"]["status"], "SUCCESS");
    let query_id = created[1]["commandStatus"]["queryId"]
        .as_str()
        .expect("the CTAS's query id")
        .to_string();
    let (status, error) = server.post("/ksql", json!({"ksql": "CREATE STREAM nope (x INT) WITH (KAFKA_TOPIC='missing', VALUE_FORMAT='JSON');"}));
    assert_eq!(status, 400);
    let error: Value = serde_json::from_str(&error).unwrap();
    assert_eq!(error["@type"], "statement_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{error}"
    );

    gen_payments(&broker, "3000", "1");
    assert!(
        eventually(Duration::from_secs(60), || pulled_totals(&server)
            == batch_totals(&broker)),
        "the table's pulled totals match the input: {:?} vs {:?}",
        pulled_totals(&server),
        batch_totals(&broker)
    );

    // A push query over /query-stream: metadata, then a row per line, ended by its LIMIT.
    let (status, body) = server.post(
        "/query-stream",
        json!({"sql": "SELECT name, amount FROM payments EMIT CHANGES LIMIT 3;",
               "properties": {"auto.offset.reset": "earliest"}}),
    );
    assert_eq!(status, 200, "{body}");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["columnNames"], json!(["NAME", "AMOUNT"]), "{body}");
    assert_eq!(lines.len(), 4, "{body}");
    assert!(
        lines[1..]
            .iter()
            .all(|row| row[0].is_string() && row[1].is_i64()),
        "{body}"
    );

    // The query checkpoints once caught up: its group has committed every
    // input offset, and its state is in a changelog topic.
    let group = format!("_confluent-ksql-default_query_{query_id}");
    assert!(
        eventually(Duration::from_secs(30), || broker
            .committed_to(&group, "payments")
            == 3000),
        "the query's group committed {} of 3000 offsets",
        broker.committed_to(&group, "payments")
    );
    let changelog = format!("{group}-Aggregate-Aggregate-Materialize-changelog");
    assert!(
        !broker.messages(&changelog, 3000).is_empty(),
        "{changelog} holds the table's state"
    );

    // kill -9 while more input arrives; the restarted server restores the
    // query's state from its changelog and resumes after its checkpoint.
    gen_payments(&broker, "3000", "2");
    server.kill9();
    gen_payments(&broker, "3000", "3");
    let server = Server::start(&broker, state.path());
    let queries = server.ksql("SHOW QUERIES;");
    assert!(queries[0].to_string().contains(&query_id), "{queries:?}");
    let expected = batch_totals(&broker);
    assert_eq!(expected.values().map(|t| t.0).sum::<i64>(), 9000);
    assert!(
        eventually(Duration::from_secs(60), || pulled_totals(&server)
            == expected),
        "after kill -9 the totals equal a batch computation: {:?} vs {expected:?}",
        pulled_totals(&server)
    );
    assert!(
        eventually(Duration::from_secs(30), || broker
            .committed_to(&group, "payments")
            == 9000),
        "after the restart the group committed {} of 9000 offsets",
        broker.committed_to(&group, "payments")
    );
    // One update per input, plus at most the 3000 processed again after the
    // kill: a restart that recomputed from the start would write 6000 more.
    let written = broker.messages("TOTALS", 3000).len();
    assert!(
        (9000..=12_000).contains(&written),
        "TOTALS holds {written} updates for 9000 inputs"
    );
}

/// The members `kpipe group describe` counts in `group`.
fn members(broker: &BrokerProcess, group: &str) -> usize {
    let described = broker.kpipe(&["group", "describe", group], "").stdout;
    described
        .split(" member(s)")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Two servers of one service share a query through its consumer group: a
/// statement sent to one runs on both, each runs tasks for part of the
/// partitions (a GROUP BY on a value column, so both stages and the
/// repartition topic are shared), either answers pulls on every key, and
/// when one is killed the other takes its tasks over from their checkpoints.
#[test]
fn two_servers_share_a_query_and_one_takes_over_when_the_other_is_killed() {
    let broker = BrokerProcess::start();
    let (first_state, second_state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = Server::start(&broker, first_state.path());
    let second = Server::start(&broker, second_state.path());
    let created = first.ksql(&format!("{PAYMENTS}\n{TOTALS}"));
    let query_id = created[1]["commandStatus"]["queryId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        eventually(Duration::from_secs(30), || second.ksql("SHOW QUERIES;")[0]
            .to_string()
            .contains(&query_id)),
        "the second server runs the query the first accepted"
    );
    let group = format!("_confluent-ksql-default_query_{query_id}");
    // Each server has a member per stage, and both stages' partitions are
    // assigned.
    let repartition = format!("{group}-Aggregate-GroupBy-repartition[");
    let describe = || broker.kpipe(&["group", "describe", &group], "").stdout;
    assert!(
        eventually(Duration::from_secs(30), || {
            let described = describe();
            members(&broker, &group) == 4
                && described.contains("state Stable")
                && described.contains(&repartition)
                && described.contains("payments[")
        }),
        "both servers' stages share the partitions: {}",
        describe()
    );

    gen_payments(&broker, "3000", "1");
    let expected = batch_totals(&broker);
    for server in [&first, &second] {
        assert!(
            eventually(Duration::from_secs(60), || pulled_totals(server)
                == expected),
            "{} pulls the totals of every key: {:?} vs {expected:?}",
            server.url,
            pulled_totals(server)
        );
    }

    first.kill9();
    gen_payments(&broker, "3000", "2");
    let expected = batch_totals(&broker);
    assert_eq!(expected.values().map(|t| t.0).sum::<i64>(), 6000);
    assert!(
        eventually(Duration::from_secs(60), || pulled_totals(&second)
            == expected),
        "the survivor took every task over: {:?} vs {expected:?}",
        pulled_totals(&second)
    );
    assert!(
        eventually(Duration::from_secs(30), || broker.caught_up(&group)
            && members(&broker, &group) == 2),
        "the survivor's members hold every partition and committed them"
    );
}

/// (name, window start) → (count, sum) over every payment, in 10 s windows.
fn batch_windows(broker: &BrokerProcess) -> BTreeMap<(String, i64), (i64, i64)> {
    let mut windows = BTreeMap::new();
    for (ts, name, amount) in payments(broker) {
        let entry = windows.entry((name, ts - ts % 10_000)).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += amount;
    }
    windows
}

/// The same, as the query's output topic holds it: each window's last update.
fn written_windows(broker: &BrokerProcess, topic: &str) -> BTreeMap<(String, i64), (i64, i64)> {
    let mut windows = BTreeMap::new();
    for (_, _, _, _, value) in read_topic(&broker.bootstrap, topic) {
        let Some(value) = value else { continue };
        let v: Value = serde_json::from_slice(&value).expect("JSON values");
        let window = (
            v["WHO"].as_str().unwrap().to_string(),
            v["WS"].as_i64().unwrap(),
        );
        windows.insert(
            window,
            (v["CNT"].as_i64().unwrap(), v["TOTAL"].as_i64().unwrap()),
        );
    }
    windows
}

/// Issue 7's acceptance: a windowed CTAS over a million events, its server
/// killed with SIGKILL twice and stopped once while it works through them;
/// the output topic's final values equal a batch computation over the input.
#[test]
fn a_windowed_query_killed_twice_and_restarted_during_a_million_events_loses_and_doubles_nothing() {
    let events: i64 = std::env::var("KPIPE_TEST_WINDOWED_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let broker = BrokerProcess::start();
    let state = tempfile::tempdir().unwrap();
    let fast_checkpoints = ["--commit-interval", "200"];
    let mut server = Server::start_with(&broker, state.path(), &fast_checkpoints);
    let created = server.ksql(&format!(
        "{PAYMENTS}\nCREATE TABLE windowed AS SELECT name, AS_VALUE(name) AS who, WINDOWSTART AS ws, \
         COUNT(*) AS cnt, SUM(amount) AS total FROM payments WINDOW TUMBLING (SIZE 10 SECONDS) \
         GROUP BY name EMIT CHANGES;"
    ));
    let query_id = created[1]["commandStatus"]["queryId"]
        .as_str()
        .unwrap()
        .to_string();
    let group = format!("_confluent-ksql-default_query_{query_id}");
    gen_payments(&broker, &events.to_string(), "7");

    for (quarter, how) in [(1, "kill -9"), (2, "kill -9"), (3, "stop")] {
        // Interrupt once the query is that many quarters through.
        let at = events * quarter / 4;
        assert!(
            eventually(Duration::from_secs(300), || broker
                .committed_to(&group, "payments")
                >= at),
            "the query reached {} of {events} before the {how}",
            broker.committed_to(&group, "payments")
        );
        match how {
            "kill -9" => server.kill9(),
            _ => server.stop(),
        }
        server = Server::start_with(&broker, state.path(), &fast_checkpoints);
    }
    assert!(
        eventually(Duration::from_secs(300), || broker
            .committed_to(&group, "payments")
            == events
            && broker.caught_up(&group)),
        "the query caught up: {} of {events}",
        broker.committed_to(&group, "payments")
    );
    let expected = batch_windows(&broker);
    assert_eq!(expected.values().map(|w| w.0).sum::<i64>(), events);
    assert_eq!(written_windows(&broker, "WINDOWED"), expected);
    drop(server);
}

#[test]
fn sql_test_rest_drives_a_server_over_http_and_reports_each_difference() {
    let statements = |select: &str| {
        json!([
            "CREATE STREAM INPUT (ID STRING KEY, V INT) WITH (kafka_topic='t', value_format='JSON');",
            "CREATE TABLE AGGREGATE AS SELECT ID, COUNT(1) AS COUNT FROM INPUT GROUP BY ID;",
            select
        ])
    };
    let inputs = json!([
        {"topic": "t", "timestamp": 1, "key": "10", "value": {"V": 1}},
        {"topic": "t", "timestamp": 2, "key": "10", "value": {"V": 2}},
        {"topic": "t", "timestamp": 3, "key": "11", "value": {"V": 3}}
    ]);
    let lookup = statements("SELECT ID, COUNT FROM AGGREGATE WHERE ID='10';");
    let counted = |count: i64| {
        json!([
            {"admin": {"@type": "currentStatus"}},
            {"admin": {"@type": "currentStatus"}},
            {"query": [
                {"header": {"schema": "`ID` STRING KEY, `COUNT` BIGINT"}},
                {"row": {"columns": ["10", count]}}
            ]}
        ])
    };
    let tests = json!({"tests": [
        {"name": "counted", "statements": lookup, "inputs": inputs, "responses": counted(2)},
        {"name": "miscounted", "statements": lookup, "inputs": inputs, "responses": counted(3)},
        {"name": "not a key", "statements": statements("SELECT * FROM AGGREGATE WHERE COUNT = 2;"),
         "inputs": inputs, "properties": {"ksql.query.pull.table.scan.enabled": false},
         "expectedError": {"type": "io.confluent.ksql.rest.entity.KsqlStatementErrorMessage",
                           "message": "WHERE clause missing key column", "status": 400}}
    ]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lookup.json");
    std::fs::write(&file, tests.to_string()).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kpipe"))
        .args(["sql", "test-rest", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.last(), Some(&"2 passed, 1 failed"), "{stdout}");
    assert!(
        lines[0].starts_with("FAIL lookup.json: miscounted: response 2: row [\"10\",2]"),
        "{stdout}"
    );
}
