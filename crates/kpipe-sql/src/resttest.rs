//! Runs ksqlDB's REST query-validation tests against a [`RestApi`]: each
//! test's statements before its first SELECT go in one `POST /ksql`, its
//! inputs are produced as a Java producer would (murmur2 of the serialized
//! key onto the topic's partitions), and each SELECT goes alone to
//! `POST /query`; the answers must match the test's `responses` (or its
//! `expectedError`) as ksqlDB's harness matches them. [`InProcess`] answers
//! over an engine and in-memory topics, without a broker.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value};

use crate::engine::{Engine, Executed, Record};
use crate::live::missing_topic;
use crate::parser::{parse, parse_with_text, Listing, Statement};
use crate::pull::{partition_for, PullSettings, View};
use crate::qtt::{read_tests, runs, statements, Outcome};
use crate::rest::{self, Response};

/// A ksqlDB-compatible server as the runner drives it: its two endpoints
/// and the Kafka cluster behind it.
pub trait RestApi {
    /// `POST /ksql` with these statements and properties.
    fn ksql(&mut self, sql: &str, properties: &Map<String, Value>) -> Response;
    /// `POST /query` with one statement and these properties.
    fn query(&mut self, sql: &str, properties: &Map<String, Value>) -> Response;
    /// Creates a topic before any statement runs.
    fn create_topic(&mut self, name: &str, partitions: i32) -> Result<()>;
    /// Produces a test's input record as a Java producer would: serialized
    /// in its topic's formats, partitioned by murmur2 of the key.
    fn produce(&mut self, input: &Input) -> Result<()>;
    /// Waits until the persistent queries have processed every input.
    fn catch_up(&mut self) -> Result<()>;
}

/// An input record of a test, in its topic's logical form.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub topic: String,
    pub key: Value,
    pub value: Value,
    pub timestamp: i64,
}

impl Input {
    /// The record to write, its partition left to whoever writes it.
    pub fn record(&self) -> Record {
        Record {
            topic: self.topic.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            timestamp: self.timestamp,
            window: None,
            partition: 0,
            offset: 0,
        }
    }
}

/// The partitions a topic gets when a test does not say (ksqlDB's harness's).
const DEFAULT_PARTITIONS: i32 = 4;

/// Makes the fresh API each test run gets.
pub type NewApi = dyn Fn() -> Result<Box<dyn RestApi>> + Sync;

/// Runs every test of a REST test file, each against a fresh API from `api`,
/// on up to `threads` threads at once; the outcomes are in the file's order.
pub fn run_file(path: &Path, threads: usize, api: &NewApi) -> Result<Vec<Outcome>> {
    let tests = read_tests(path)?;
    let runs: Vec<(&Value, String, Option<String>)> = tests
        .iter()
        .flat_map(|test| {
            runs(test)
                .into_iter()
                .map(move |(name, format)| (test, name, format))
        })
        .collect();
    let next = AtomicUsize::new(0);
    let failures: Vec<Mutex<Option<String>>> = runs.iter().map(|_| Mutex::default()).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, runs.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((test, _, format)) = runs.get(i) else {
                    break;
                };
                let failure = match api() {
                    Ok(mut server) => run_test(server.as_mut(), test, format.as_deref()).err(),
                    Err(e) => Some(format!("cannot start the server: {e:#}")),
                };
                *failures[i].lock().unwrap_or_else(|e| e.into_inner()) = failure;
            });
        }
    });
    Ok(runs
        .into_iter()
        .zip(failures)
        .map(|((_, name, _), failure)| Outcome {
            name,
            failure: failure.into_inner().unwrap_or_else(|e| e.into_inner()),
        })
        .collect())
}

fn run_test(api: &mut dyn RestApi, test: &Value, format: Option<&str>) -> Result<(), String> {
    let statements = statements(test, format);
    let properties = test["properties"].as_object().cloned().unwrap_or_default();
    create_topics(api, test, &statements).map_err(|e| format!("{e:#}"))?;
    let first_select = statements
        .iter()
        .position(|s| is_select(s))
        .unwrap_or(statements.len());
    let mut responses = Vec::new();
    let mut failed: Option<Value> = None;
    let mut answered = |name: &str, (status, body): Response| {
        if status == 200 {
            let parts = match (name, body) {
                ("admin", Value::Array(entities)) => entities,
                (_, body) => vec![body],
            };
            responses.extend(parts.into_iter().map(|p| serde_json::json!({ name: p })));
            true
        } else {
            failed = Some(serde_json::json!({"status": status, "body": body}));
            false
        }
    };
    let mut ok = first_select == 0
        || answered(
            "admin",
            api.ksql(&statements[..first_select].join("\n"), &properties),
        );
    if ok {
        for input in test["inputs"].as_array().into_iter().flatten() {
            let input = Input {
                topic: input["topic"].as_str().unwrap_or_default().to_string(),
                key: input["key"].clone(),
                value: input["value"].clone(),
                timestamp: input["timestamp"].as_i64().unwrap_or(0),
            };
            api.produce(&input)
                .map_err(|e| format!("producing {input:?}: {e:#}"))?;
        }
        api.catch_up().map_err(|e| format!("{e:#}"))?;
    }
    for statement in statements.iter().skip(first_select) {
        if !ok {
            break;
        }
        ok = if is_select(statement) {
            answered("query", api.query(statement, &properties))
        } else {
            answered("admin", api.ksql(statement, &properties))
        };
    }
    let last = statements.last().map_or("", String::as_str);
    match (failed, test.get("expectedError")) {
        (Some(error), Some(expected)) => expected_error(expected, &error, last),
        (Some(error), None) => Err(format!("unexpected error: {}", error["body"])),
        (None, Some(expected)) => Err(format!(
            "expected the error {expected}, but every request succeeded"
        )),
        (None, None) => compare_responses(
            test["responses"].as_array().map_or(&[][..], Vec::as_slice),
            &responses,
            test["outputConditions"]["verifyOrder"] == true,
        ),
    }
}

fn is_select(statement: &str) -> bool {
    statement
        .trim_start()
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("SELECT "))
}

/// The topics a test's statements read and write before anything runs: its
/// `topics` (with their partitions), then every CREATE's topic (with its
/// PARTITIONS, else 4).
fn create_topics(api: &mut dyn RestApi, test: &Value, statements: &[String]) -> Result<()> {
    let mut topics: BTreeMap<String, i32> = BTreeMap::new();
    for topic in test["topics"].as_array().into_iter().flatten() {
        let name = topic["name"].as_str().unwrap_or_default();
        let partitions = topic["partitions"]
            .as_i64()
            .map_or(DEFAULT_PARTITIONS, |p| p as i32);
        topics.insert(name.to_string(), partitions);
    }
    for statement in statements {
        // Statements that do not parse fail later, in their request.
        let Ok(parsed) = parse(statement) else {
            continue;
        };
        for parsed in parsed {
            if let Statement::CreateSource { properties, .. } = parsed {
                let value = |name: &str| properties.iter().find(|(k, _)| k == name).map(|(_, v)| v);
                let Some(topic) = value("KAFKA_TOPIC").and_then(Value::as_str) else {
                    continue;
                };
                let partitions = value("PARTITIONS")
                    .and_then(Value::as_i64)
                    .map_or(DEFAULT_PARTITIONS, |p| p as i32);
                topics.entry(topic.to_string()).or_insert(partitions);
            }
        }
    }
    for (name, partitions) in topics {
        api.create_topic(&name, partitions)?;
    }
    Ok(())
}

/// Matches an error answer with the test's `expectedError`: its type (a
/// `KsqlStatementErrorMessage` is a `statement_error` whose statement text
/// holds the test's last statement), a message it contains, its status.
fn expected_error(expected: &Value, error: &Value, last_statement: &str) -> Result<(), String> {
    let body = &error["body"];
    let message = body["message"].as_str().unwrap_or_default();
    if let Some(want) = expected["message"].as_str() {
        if !message.contains(want) {
            return Err(format!(
                "expected an error containing {want:?}, got {message:?}"
            ));
        }
    }
    if let Some(status) = expected["status"].as_u64() {
        if error["status"].as_u64() != Some(status) {
            return Err(format!("expected status {status}, got {}", error["status"]));
        }
    }
    if let Some(kind) = expected["type"].as_str() {
        let statement_error = body["@type"] == "statement_error"
            && body["statementText"]
                .as_str()
                .is_some_and(|text| text.contains(last_statement.trim()));
        if kind.ends_with(".KsqlStatementErrorMessage") && !statement_error {
            return Err(format!(
                "expected a statement_error for {last_statement:?}, got {body}"
            ));
        }
    }
    Ok(())
}

/// Each expected response must match the answer in its place (more answers
/// than expected are fine, as in ksqlDB's harness). A query's rows match as
/// a multiset unless the test's `outputConditions` ask to verify their order.
fn compare_responses(expected: &[Value], got: &[Value], verify_order: bool) -> Result<(), String> {
    for (i, want) in expected.iter().enumerate() {
        let Some(got) = got.get(i) else {
            return Err(format!(
                "expected {} responses, got {}; the first missing is {want}",
                expected.len(),
                got.len()
            ));
        };
        let found = match (&want["query"], &got["query"]) {
            (Value::Array(want), Value::Array(got)) => query_difference(want, got, verify_order),
            _ => difference(want, got),
        };
        if let Some(found) = found {
            return Err(format!("response {i}: {found}"));
        }
    }
    Ok(())
}

/// Where a query's answer fails to match: element by element and in length,
/// but the rows' columns in any order unless `verify_order`.
fn query_difference(want: &[Value], got: &[Value], verify_order: bool) -> Option<String> {
    if want.len() != got.len() {
        return Some(format!(
            "expected {} elements, got {}: {}",
            want.len(),
            got.len(),
            Value::Array(got.to_vec())
        ));
    }
    let mut unmatched: Vec<&Value> = Vec::new();
    let mut rows: Vec<&Value> = Vec::new();
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        let columns = (&w["row"]["columns"], &g["row"]["columns"]);
        if let (false, Value::Array(_), Value::Array(_)) = (verify_order, columns.0, columns.1) {
            unmatched.push(columns.0);
            rows.push(columns.1);
            continue;
        }
        if let Some(found) = difference(w, g) {
            return Some(format!("[{i}]: {found}"));
        }
    }
    for row in rows {
        match unmatched.iter().position(|w| difference(w, row).is_none()) {
            Some(at) => {
                unmatched.swap_remove(at);
            }
            None => {
                let wanted: Vec<&Value> = unmatched;
                return Some(format!(
                    "row {row} was not expected; expected rows left: {wanted:?}"
                ));
            }
        }
    }
    None
}

/// Where `got` fails to match `want` as ksqlDB's harness matches answers:
/// objects by the expected fields only, arrays element by element and in
/// length, numbers by value; None when it matches.
fn difference(want: &Value, got: &Value) -> Option<String> {
    match (want, got) {
        (Value::Object(want), Value::Object(got)) => want.iter().find_map(|(field, w)| {
            let Some(g) = got.get(field) else {
                return Some(format!("missing {field:?} (expected {w})"));
            };
            difference(w, g).map(|d| format!("{field}: {d}"))
        }),
        (Value::Array(w), Value::Array(g)) => {
            let first = w
                .iter()
                .zip(g)
                .enumerate()
                .find_map(|(i, (w, g))| difference(w, g).map(|d| format!("[{i}]: {d}")));
            first.or_else(|| {
                (w.len() != g.len()).then(|| {
                    format!(
                        "expected {} elements, got {}: {}",
                        w.len(),
                        g.len(),
                        Value::Array(g.clone())
                    )
                })
            })
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        _ if want == got => None,
        _ => Some(format!("expected {want}, got {got}")),
    }
}

/// A server in this process: an engine, its topics in memory, and the
/// command log's length (each command's sequence number). Persistent
/// queries run as records are produced, so it is always caught up.
#[derive(Default)]
pub struct InProcess {
    engine: Engine,
    /// Each topic's partitions, each its records in offset order.
    topics: BTreeMap<String, Vec<Vec<Record>>>,
    commands: i64,
    /// What SET set, for SHOW PROPERTIES.
    properties: BTreeMap<String, String>,
}

impl RestApi for InProcess {
    fn ksql(&mut self, sql: &str, properties: &Map<String, Value>) -> Response {
        let statements = match parse_with_text(sql) {
            Ok(statements) => statements,
            Err(e) => return rest::statement_error(&format!("{e:#}"), sql, Vec::new()),
        };
        let mut entities = Vec::new();
        for (statement, text) in &statements {
            if let Statement::Query(_) = statement {
                return rest::select_on_ksql(text, entities);
            }
            match self.with_properties(properties, |s| s.statement(statement, text)) {
                Ok(entity) => entities.extend(entity),
                Err(e) => return rest::statement_error(&format!("{e:#}"), text, entities),
            }
        }
        (200, Value::Array(entities))
    }

    fn query(&mut self, sql: &str, properties: &Map<String, Value>) -> Response {
        let refused = |e: anyhow::Error| rest::statement_error(&format!("{e:#}"), sql, Vec::new());
        let statements = match parse_with_text(sql) {
            Ok(statements) => statements,
            Err(e) => return refused(e),
        };
        let [(Statement::Query(select), text)] = statements.as_slice() else {
            return refused(anyhow!("/query runs exactly one SELECT"));
        };
        if select.emit.is_some() {
            return refused(anyhow!(
                "Push queries need a server: this in-process API answers pull queries only"
            ));
        }
        let mut settings = PullSettings::default();
        for (name, value) in properties {
            settings.set(name, value);
        }
        let pulled = self.with_properties(properties, |s| {
            let pull = s.engine.plan_pull(select, settings)?;
            let partitions = s.topics.get(pull.topic()).map_or(&[][..], Vec::as_slice);
            let records = partitions.iter().flatten();
            let pulled = if pull.reads_table() {
                let mut view = View::new(partitions.len() as i32);
                for record in records {
                    if let Some(key) = s.engine.key_bytes(pull.topic(), &record.key)? {
                        view.apply(key, record.clone());
                    }
                }
                pull.from_table(&view)?
            } else {
                pull.from_stream(records)?
            };
            anyhow::Ok((pull.id().to_string(), pull.columns().to_vec(), pulled))
        });
        match pulled {
            Ok((id, columns, pulled)) => (200, rest::query_response(&id, &columns, &pulled)),
            Err(e) => rest::statement_error(&format!("{e:#}"), text, Vec::new()),
        }
    }

    fn create_topic(&mut self, name: &str, partitions: i32) -> Result<()> {
        self.topics
            .entry(name.to_string())
            .or_insert_with(|| vec![Vec::new(); partitions.max(1) as usize]);
        Ok(())
    }

    fn produce(&mut self, input: &Input) -> Result<()> {
        self.write(input.record())
    }

    fn catch_up(&mut self) -> Result<()> {
        Ok(())
    }
}

impl InProcess {
    /// Runs `f` with a request's properties set, as ksqlDB scopes them to
    /// the request; what was set before is restored.
    fn with_properties<T>(
        &mut self,
        properties: &Map<String, Value>,
        f: impl FnOnce(&mut Self) -> T,
    ) -> T {
        let saved: Vec<(String, Option<String>)> = properties
            .keys()
            .map(|name| (name.clone(), self.engine.property(name).map(String::from)))
            .collect();
        for (name, value) in properties {
            let text = value
                .as_str()
                .map_or_else(|| value.to_string(), String::from);
            self.engine.set_property(name, &text);
        }
        let result = f(self);
        for (name, value) in saved {
            match value {
                Some(value) => self.engine.set_property(&name, &value),
                None => self.engine.unset_property(&name),
            }
        }
        result
    }

    /// One statement of a `/ksql` request: its entity, if it has one.
    fn statement(&mut self, statement: &Statement, text: &str) -> Result<Option<Value>> {
        match statement {
            Statement::Show(listing) => return Ok(Some(self.show(*listing, text))),
            Statement::Describe { name, .. } => {
                return rest::description(&self.engine, name, text).map(Some);
            }
            Statement::Set { name, value } => {
                self.properties.insert(name.clone(), value.clone());
                self.engine.set_property(name, value);
                return Ok(Some(rest::warning(
                    text,
                    &format!("Successfully changed local property '{name}' to '{value}'."),
                )));
            }
            Statement::Unset { name } => {
                self.properties.remove(name);
                self.engine.unset_property(name);
                return Ok(Some(rest::warning(
                    text,
                    &format!("Successfully unset local property '{name}'."),
                )));
            }
            _ => {}
        }
        let executed = self.engine.execute(statement)?;
        let created = match (&executed, statement) {
            (Executed::Created { kind, name }, Statement::CreateSource { properties, .. }) => {
                let topic = self.engine.source(name).expect("just created").topic;
                let partitions = properties
                    .iter()
                    .find(|(k, _)| k == "PARTITIONS")
                    .and_then(|(_, v)| v.as_i64());
                match (self.topics.contains_key(&topic), partitions) {
                    (true, _) => Ok(()),
                    (false, Some(n)) => self.create_topic(&topic, n as i32),
                    (false, None) => {
                        self.engine.execute(&Statement::Drop {
                            kind: *kind,
                            name: name.clone(),
                            if_exists: true,
                            delete_topic: false,
                        })?;
                        Err(missing_topic(&topic))
                    }
                }
            }
            (Executed::Started { id, .. }, _) => {
                // A query's sink has its source's partitions unless it exists.
                let (from, to) = self.engine.query_topics(id).expect("just started");
                let partitions = self.topics.get(&from).map_or(1, |p| p.len() as i32);
                self.create_topic(&to, partitions)
            }
            (
                Executed::Dropped {
                    topic: Some(topic), ..
                },
                Statement::Drop {
                    delete_topic: true, ..
                },
            ) => {
                self.topics.remove(topic);
                Ok(())
            }
            (Executed::Inserted { .. }, _) => {
                for record in self.engine.take_inserted() {
                    self.write(record)?;
                }
                Ok(())
            }
            _ => Ok(()),
        };
        created?;
        self.commands += 1;
        Ok(rest::command_status(
            text,
            statement,
            &executed,
            self.commands - 1,
        ))
    }

    fn show(&self, listing: Listing, text: &str) -> Value {
        let topics: Vec<(String, i32)> = self
            .topics
            .iter()
            .map(|(name, partitions)| (name.clone(), partitions.len() as i32))
            .collect();
        let properties: Vec<(String, String)> = self.properties.clone().into_iter().collect();
        rest::listing(&self.engine, listing, text, &topics, &properties)
    }

    /// Appends a record to its topic, on the partition its key hashes to,
    /// and runs the queries over it; what they write is appended likewise.
    fn write(&mut self, record: Record) -> Result<()> {
        let placed = self.place(record)?;
        let produced = match self.engine.process(&placed) {
            Ok(produced) => produced,
            Err(e) => {
                // As a server does, a record a query cannot process is skipped.
                tracing::warn!("skipping a record the queries cannot process: {e:#}");
                Vec::new()
            }
        };
        for out in produced {
            self.place(out)?;
        }
        Ok(())
    }

    /// Appends a record to its topic (which must exist), giving it its
    /// partition and offset.
    fn place(&mut self, mut record: Record) -> Result<Record> {
        let key = match self.engine.source_over(&record.topic) {
            Some(_) => self.engine.key_bytes(&record.topic, &record.key)?,
            None => None,
        };
        let Some(partitions) = self.topics.get_mut(&record.topic) else {
            bail!("topic {} does not exist", record.topic);
        };
        record.partition = key.map_or(0, |k| partition_for(&k, partitions.len() as i32));
        let log = &mut partitions[record.partition as usize];
        record.offset = log.len() as i64;
        log.push(record.clone());
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_match_by_expected_fields_and_rows_in_any_order() {
        assert_eq!(
            difference(
                &json!({"@type": "currentStatus"}),
                &json!({"@type": "currentStatus", "commandId": "x"})
            ),
            None
        );
        assert!(difference(&json!({"a": [1, 2]}), &json!({"a": [1]})).is_some());
        assert_eq!(difference(&json!([1.0]), &json!([1])), None);
        let header = json!({"header": {"schema": "`ID` STRING KEY"}});
        let row = |id: &str| json!({"row": {"columns": [id]}});
        let want = [header.clone(), row("a"), row("b")];
        let swapped = [
            json!({"header": {"queryId": "q", "schema": "`ID` STRING KEY"}}),
            row("b"),
            row("a"),
        ];
        assert_eq!(query_difference(&want, &swapped, false), None);
        assert!(query_difference(&want, &swapped, true).is_some());
        assert!(query_difference(&want, &[header.clone(), row("a"), row("a")], false).is_some());
        assert!(
            query_difference(&want, &[header, row("a")], false).is_some(),
            "as many elements"
        );
    }

    #[test]
    fn expected_errors_match_type_message_and_status() {
        let error = json!({"status": 400, "body": {"@type": "statement_error", "message": "Bad thing: x", "statementText": "SELECT 1;"}});
        let expected = json!({"type": "io.confluent.ksql.rest.entity.KsqlStatementErrorMessage", "message": "Bad thing", "status": 400});
        assert_eq!(expected_error(&expected, &error, "SELECT 1;"), Ok(()));
        assert!(
            expected_error(&expected, &error, "SELECT 2;").is_err(),
            "another statement"
        );
        assert!(expected_error(&json!({"message": "Good"}), &error, "SELECT 1;").is_err());
        assert!(expected_error(&json!({"status": 500}), &error, "SELECT 1;").is_err());
    }

    #[test]
    fn a_test_runs_through_the_in_process_api() {
        let test = json!({
            "name": "lookup",
            "statements": [
                "CREATE STREAM INPUT (ID STRING KEY, V INT) WITH (kafka_topic='t', value_format='JSON');",
                "CREATE TABLE AGGREGATE AS SELECT ID, COUNT(1) AS COUNT FROM INPUT GROUP BY ID;",
                "SELECT * FROM AGGREGATE WHERE ID='10';"
            ],
            "inputs": [
                {"topic": "t", "timestamp": 1, "key": "10", "value": {}},
                {"topic": "t", "timestamp": 2, "key": "11", "value": {}}
            ],
            "responses": [
                {"admin": {"@type": "currentStatus"}},
                {"admin": {"@type": "currentStatus", "commandStatus": {"queryId": "CTAS_AGGREGATE_0"}}},
                {"query": [
                    {"header": {"schema": "`ID` STRING KEY, `COUNT` BIGINT"}},
                    {"row": {"columns": ["10", 1]}}
                ]}
            ]
        });
        assert_eq!(run_test(&mut InProcess::default(), &test, None), Ok(()));
        let mut wrong = test.clone();
        wrong["responses"][2]["query"][1]["row"]["columns"][1] = json!(2);
        let failure = run_test(&mut InProcess::default(), &wrong, None).unwrap_err();
        assert!(
            failure.starts_with("response 2: row [\"10\",1] was not expected"),
            "{failure}"
        );
        let mut refused = test.clone();
        refused["statements"][2] = json!("SELECT * FROM AGGREGATE WHERE ID=10;");
        refused["expectedError"] = json!({
            "type": "io.confluent.ksql.rest.entity.KsqlStatementErrorMessage",
            "message": "Cannot compare ID (STRING) to 10 (INTEGER)",
            "status": 400
        });
        assert_eq!(run_test(&mut InProcess::default(), &refused, None), Ok(()));
    }
}
