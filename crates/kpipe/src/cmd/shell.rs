//! `kpipe sql`'s interactive shell: a client of a kpipe server's ksqlDB REST
//! API, as the ksql CLI is of ksqlDB's. Statements go to `POST /ksql` and
//! their entities print as lines and tables; SELECTs go to `POST
//! /query-stream`, a push query's rows printing as they arrive. With no
//! server given, the shell runs one in-process and talks to it the same way.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use kpipe_kafka::client::ClientOptions;
use kpipe_server::ServerOptions;
use kpipe_sql::live::Output;
use kpipe_sql::parser::{parse_type, parse_with_text, ColumnDef, SqlType, Statement};
use serde_json::{json, Value};

use super::{interrupt_flag, statement_shell};

/// ksqlDB's content type for `/ksql`.
const KSQL_V1: &str = "application/vnd.ksql.v1+json";
/// `/query-stream`'s framing of a metadata line, then a JSON array per row.
const DELIMITED: &str = "application/vnd.ksqlapi.delimited.v1";

/// Runs the shell against the server at `url` until Ctrl-D.
pub fn run(url: &str, embedded: Option<String>, out: &mut dyn Output) -> Result<()> {
    let mut client = Client::connect(url)?;
    let version = client.version.clone();
    let kind = embedded.map_or_else(String::new, |about| format!(", {about}"));
    println!(
        "kpipe sql on {url} (server {version}{kind}): statements end with ';'; \
         Ctrl-C stops a running SELECT, Ctrl-D leaves."
    );
    statement_shell(".kpipe_sql_history", "ksql> ", |sql| client.run(sql, out))
}

/// Runs a script's statements on the server at `url`, in order, until one fails.
pub fn run_script(url: &str, script: &str, out: &mut dyn Output) -> Result<()> {
    Client::connect(url)?.run(script, out)
}

/// A ksqlDB REST client that blocks on a runtime of its own; every request
/// gives up when Ctrl-C raises `interrupted`.
struct Client {
    url: String,
    version: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    /// Properties set by SET, sent with every request (ksqlDB's CLI keeps them
    /// on the client, so they last for this shell only).
    properties: BTreeMap<String, String>,
    interrupted: Arc<AtomicBool>,
}

impl Client {
    /// Connects and asks the server what it is (`GET /info`). From now on
    /// Ctrl-C interrupts the request under way instead of ending the process.
    fn connect(url: &str) -> Result<Client> {
        let interrupted = Arc::new(AtomicBool::new(false));
        interrupt_flag(interrupted.clone());
        let url = url.trim_end_matches('/').to_string();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let mut client = Client {
            url,
            version: String::new(),
            http,
            runtime,
            properties: BTreeMap::new(),
            interrupted,
        };
        let info = client.until_interrupted(async {
            let response = client
                .http
                .get(format!("{}/info", client.url))
                .timeout(Duration::from_secs(10))
                .send()
                .await?;
            response.error_for_status()?.text().await
        });
        let info = match info {
            Some(Ok(text)) => serde_json::from_str::<Value>(&text).unwrap_or_default(),
            Some(Err(e)) => return Err(client.unreachable(e)),
            None => bail!("interrupted while connecting to {}", client.url),
        };
        client.version = info["KsqlServerInfo"]["version"]
            .as_str()
            .unwrap_or("of unknown version")
            .to_string();
        Ok(client)
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        anyhow!(e).context(format!("cannot reach kpipe server at {}", self.url))
    }

    /// Runs `work` until it completes or Ctrl-C is pressed (None).
    fn until_interrupted<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        let interrupted = &self.interrupted;
        self.runtime.block_on(async {
            tokio::select! {
                done = work => Some(done),
                () = raised(interrupted) => None,
            }
        })
    }

    /// Runs what was typed: each statement in turn, until one fails.
    fn run(&mut self, sql: &str, out: &mut dyn Output) -> Result<()> {
        self.interrupted.store(false, Ordering::Relaxed);
        // The server answers a text it cannot parse with the parser's own message.
        let Ok(statements) = parse_with_text(sql) else {
            return self.statements(sql, out);
        };
        for (statement, text) in statements {
            match statement {
                Statement::Query(select) => self.select(&text, select.emit.is_some(), out)?,
                Statement::Set { name, value } => {
                    out.message(&format!(
                        "Successfully changed local property '{name}' to '{value}'. \
                         Use the UNSET command to revert your change."
                    ));
                    self.properties.insert(name, value);
                }
                Statement::Unset { name } => {
                    self.properties.remove(&name);
                    out.message(&format!("Successfully unset local property '{name}'."));
                }
                _ => self.statements(&text, out)?,
            }
        }
        Ok(())
    }

    /// POSTs `body` to `path`; None when Ctrl-C came first. A refusal is an
    /// error with the server's message, after the entities it carries (those
    /// of the statements before the failing one).
    fn post(
        &self,
        path: &str,
        accept: &str,
        body: Value,
        out: &mut dyn Output,
    ) -> Result<Option<reqwest::Response>> {
        let request = self
            .http
            .post(format!("{}{path}", self.url))
            .header(reqwest::header::CONTENT_TYPE, KSQL_V1)
            .header(reqwest::header::ACCEPT, accept)
            .body(body.to_string());
        // Sent inside the runtime, whose timers and I/O the request needs.
        let Some(sent) = self.until_interrupted(async { request.send().await }) else {
            return Ok(None);
        };
        let response = sent.map_err(|e| self.unreachable(e))?;
        if response.status().is_success() {
            return Ok(Some(response));
        }
        let status = response.status();
        let text = self
            .until_interrupted(response.text())
            .and_then(Result::ok)
            .unwrap_or_default();
        let Ok(error) = serde_json::from_str::<Value>(&text) else {
            bail!("the server answered {status}: {text}");
        };
        for entity in error["entities"].as_array().into_iter().flatten() {
            show(entity, out);
        }
        match error["message"].as_str() {
            Some(message) => bail!("{message}"),
            None => bail!("the server answered {status}: {text}"),
        }
    }

    /// Statements other than SELECT, through `/ksql`.
    fn statements(&self, sql: &str, out: &mut dyn Output) -> Result<()> {
        let body = json!({"ksql": sql, "streamsProperties": self.properties});
        let Some(response) = self.post("/ksql", KSQL_V1, body, out)? else {
            bail!("interrupted; the server may still carry the statement out");
        };
        let text = self
            .until_interrupted(response.text())
            .context("interrupted while the server answered")?
            .map_err(|e| self.unreachable(e))?;
        let entities: Vec<Value> = serde_json::from_str(&text)
            .with_context(|| format!("the server's answer is not a list of entities: {text}"))?;
        for entity in &entities {
            show(entity, out);
        }
        Ok(())
    }

    /// A SELECT through `/query-stream`: a pull query's rows as a table, a
    /// push query's as they arrive, until its LIMIT or Ctrl-C, which closes
    /// the query on the server.
    fn select(&self, sql: &str, push: bool, out: &mut dyn Output) -> Result<()> {
        let body = json!({"sql": sql, "properties": self.properties});
        let Some(mut response) = self.post("/query-stream", DELIMITED, body, out)? else {
            return Ok(());
        };
        let mut lines = Lines::default();
        let mut query_id = None;
        loop {
            let Some(chunk) = self.until_interrupted(response.chunk()) else {
                if let Some(id) = &query_id {
                    self.close_query(id);
                }
                break;
            };
            let Some(chunk) = chunk.map_err(|e| self.unreachable(e))? else {
                break;
            };
            for line in lines.push(&chunk) {
                let value: Value = serde_json::from_str(&line)
                    .with_context(|| format!("the server sent a line that is not JSON: {line}"))?;
                match value {
                    Value::Array(row) => out.row(&row),
                    header if header.get("columnNames").is_some() => {
                        out.columns(&columns(&header), push);
                        query_id = Some(header["queryId"].clone());
                    }
                    // The query failed on the server after it began.
                    error => {
                        if query_id.is_some() {
                            out.end();
                        }
                        bail!("{}", error["message"].as_str().unwrap_or(&line));
                    }
                }
            }
        }
        if query_id.is_some() {
            out.end();
        }
        Ok(())
    }

    /// Ends a push query the user stopped (leaving would too, but only
    /// once the server next writes to the closed connection).
    fn close_query(&self, id: &Value) {
        let request = self
            .http
            .post(format!("{}/close-query", self.url))
            .header(reqwest::header::CONTENT_TYPE, KSQL_V1)
            .body(json!({ "queryId": id }).to_string())
            .timeout(Duration::from_secs(5));
        // A query that already ended is the outcome wanted.
        let _ = self.runtime.block_on(async { request.send().await });
    }
}

async fn raised(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Splits a response body into lines as its chunks arrive.
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// The lines `chunk` completes, blank ones (keep-alives) left out.
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim().to_string();
            if !line.is_empty() {
                lines.push(line);
            }
        }
        lines
    }
}

/// A `/query-stream` header's columns, typed so that values print as
/// ksqlDB prints them (a TIMESTAMP as a date and time).
fn columns(header: &Value) -> Vec<ColumnDef> {
    let names = header["columnNames"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let types = header["columnTypes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    names
        .iter()
        .enumerate()
        .map(|(i, name)| ColumnDef {
            name: name.as_str().unwrap_or_default().to_string(),
            ty: types
                .get(i)
                .and_then(Value::as_str)
                .and_then(|t| parse_type(t).ok())
                .unwrap_or(SqlType::String),
            key: false,
        })
        .collect()
}

/// What a `/ksql` entity shows: a line, or a table.
#[derive(Debug, PartialEq)]
enum Shown {
    Line(String),
    Table {
        header: Vec<&'static str>,
        rows: Vec<Vec<Value>>,
    },
}

fn show(entity: &Value, out: &mut dyn Output) {
    for shown in shown(entity) {
        match shown {
            Shown::Line(text) => out.message(&text),
            Shown::Table { header, rows } => {
                let columns: Vec<ColumnDef> = header
                    .iter()
                    .map(|name| ColumnDef {
                        name: name.to_string(),
                        ty: SqlType::String,
                        key: false,
                    })
                    .collect();
                out.columns(&columns, false);
                for row in &rows {
                    out.row(row);
                }
                out.end();
            }
        }
    }
}

/// An entity as the ksql CLI shows it: a status or warning as its message,
/// listings and descriptions as tables with the columns `kpipe sql -e` prints.
fn shown(entity: &Value) -> Vec<Shown> {
    let table = |header: Vec<&'static str>, field: &str, row: &dyn Fn(&Value) -> Vec<Value>| {
        let rows = entity[field].as_array().into_iter().flatten().map(row);
        Shown::Table {
            header,
            rows: rows.collect(),
        }
    };
    let joined = |list: &Value| {
        let items: Vec<&str> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        Value::from(items.join(", "))
    };
    let source = |s: &Value| {
        vec![
            s["name"].clone(),
            s["topic"].clone(),
            s["keyFormat"].clone(),
            s["valueFormat"].clone(),
            s["isWindowed"].clone(),
        ]
    };
    let listing = |name: &'static str| {
        vec![
            name,
            "Kafka Topic",
            "Key Format",
            "Value Format",
            "Windowed",
        ]
    };
    match entity["@type"].as_str().unwrap_or_default() {
        "currentStatus" => vec![Shown::Line(text(&entity["commandStatus"]["message"]))],
        "streams" => vec![table(listing("Stream Name"), "streams", &source)],
        "tables" => vec![table(listing("Table Name"), "tables", &source)],
        "queries" => vec![table(
            vec![
                "Query ID",
                "Status",
                "Sink Name",
                "Sink Kafka Topic",
                "Query String",
            ],
            "queries",
            &|q| {
                vec![
                    q["id"].clone(),
                    q["state"].clone(),
                    joined(&q["sinks"]),
                    joined(&q["sinkKafkaTopics"]),
                    q["queryString"].clone(),
                ]
            },
        )],
        "kafka_topics" => vec![table(
            vec!["Kafka Topic", "Partitions", "Partition Replicas"],
            "topics",
            &|t| {
                let replicas = t["replicaInfo"].as_array().cloned().unwrap_or_default();
                vec![
                    t["name"].clone(),
                    Value::from(replicas.len()),
                    replicas.first().cloned().unwrap_or(Value::Null),
                ]
            },
        )],
        "properties" => vec![table(vec!["Property", "Value"], "properties", &|p| {
            vec![p["name"].clone(), p["value"].clone()]
        })],
        "sourceDescription" => {
            let source = &entity["sourceDescription"];
            let key = match source["type"].as_str() {
                Some("TABLE") => " (primary key)",
                _ => " (key)",
            };
            let fields = source["fields"].as_array().into_iter().flatten();
            let rows = fields.map(|f| {
                let marker = if f["type"] == "KEY" { key } else { "" };
                vec![
                    f["name"].clone(),
                    Value::from(format!("{}{marker}", type_text(&f["schema"]))),
                ]
            });
            vec![
                Shown::Line(format!(
                    "Name: {}  Type: {}  Topic: {}  Key format: {}  Value format: {}",
                    text(&source["name"]),
                    text(&source["type"]),
                    text(&source["topic"]),
                    text(&source["keyFormat"]),
                    text(&source["valueFormat"]),
                )),
                Shown::Table {
                    header: vec!["Field", "Type"],
                    rows: rows.collect(),
                },
            ]
        }
        // warning_entity, errors, and whatever a newer server sends.
        _ => match entity["message"].as_str() {
            Some(message) => vec![Shown::Line(message.to_string())],
            None => vec![Shown::Line(entity.to_string())],
        },
    }
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), String::from)
}

/// A field's type from ksqlDB's schema object: `ARRAY<STRING>`,
/// `STRUCT<A INTEGER>`, ...
fn type_text(schema: &Value) -> String {
    let base = text(&schema["type"]);
    match base.as_str() {
        "ARRAY" => format!("ARRAY<{}>", type_text(&schema["memberSchema"])),
        "MAP" => format!("MAP<STRING, {}>", type_text(&schema["memberSchema"])),
        "STRUCT" => {
            let fields: Vec<String> = schema["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| format!("{} {}", text(&f["name"]), type_text(&f["schema"])))
                .collect();
            format!("STRUCT<{}>", fields.join(", "))
        }
        _ => base,
    }
}

/// A `kpipe server` run in this process for a shell given no `--server`.
pub struct Embedded {
    pub url: String,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<()>>,
    /// A state directory of the shell's own, removed when it leaves.
    _scratch: Option<tempfile::TempDir>,
}

impl Embedded {
    /// Starts a server on a free port of 127.0.0.1: the default service's,
    /// with `state` its directory, or else a service of its own that goes
    /// when the shell does.
    pub fn start(kafka: ClientOptions, state: Option<PathBuf>) -> Result<Embedded> {
        // Without a state directory the queries last as long as the shell:
        // a service of its own, forgotten when it stops.
        let transient = state.is_none();
        let service_id = match transient {
            true => format!("kpipe_shell_{}_", std::process::id()),
            false => kpipe_server::SERVICE_ID.into(),
        };
        let (state, scratch) = match state {
            Some(dir) => (dir, None),
            None => {
                let scratch = tempfile::tempdir().context("cannot make a state directory")?;
                (scratch.path().to_path_buf(), Some(scratch))
            }
        };
        let options = ServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state,
            service_id,
            commit_interval: kpipe_server::COMMIT_INTERVAL,
            transient,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (bound, address) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kpipe-server".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    kpipe_server::run(kafka, options, stop, |address| {
                        let _ = bound.send(address);
                    })
                }
            })?;
        match address.recv() {
            Ok(address) => Ok(Embedded {
                url: format!("http://{address}"),
                stop,
                thread,
                _scratch: scratch,
            }),
            // The server ended before it listened: its error says why.
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e.context("cannot start the embedded kpipe server")),
                _ => bail!("the embedded kpipe server stopped as it started"),
            },
        }
    }

    /// Stops the server and the persistent queries it runs.
    pub fn stop(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(ended) => ended,
            Err(_) => bail!("the embedded kpipe server crashed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_and_a_warning_show_their_message() {
        let created = json!({"@type": "currentStatus", "commandStatus": {"status": "SUCCESS", "message": "Created query with ID CTAS_T_0", "queryId": "CTAS_T_0"}});
        assert_eq!(
            shown(&created),
            [Shown::Line("Created query with ID CTAS_T_0".into())]
        );
        let set = kpipe_sql::rest::warning("SET 'x'='y';", "Successfully changed");
        assert_eq!(shown(&set), [Shown::Line("Successfully changed".into())]);
    }

    #[test]
    fn queries_show_as_a_table_of_id_status_and_sinks() {
        let queries = json!({"@type": "queries", "queries": [{
            "sinks": ["T"], "sinkKafkaTopics": ["T"], "id": "CTAS_T_0",
            "queryType": "PERSISTENT", "state": "RUNNING", "statusCount": {"RUNNING": 1},
        }]});
        assert_eq!(
            shown(&queries),
            [Shown::Table {
                header: vec![
                    "Query ID",
                    "Status",
                    "Sink Name",
                    "Sink Kafka Topic",
                    "Query String"
                ],
                rows: vec![vec![
                    json!("CTAS_T_0"),
                    json!("RUNNING"),
                    json!("T"),
                    json!("T"),
                    Value::Null
                ]],
            }]
        );
    }

    /// The one table `entity` shows.
    fn table_of(entity: &Value) -> (Vec<&'static str>, Vec<Vec<Value>>) {
        match shown(entity).pop() {
            Some(Shown::Table { header, rows }) => (header, rows),
            other => panic!("not a table: {other:?}"),
        }
    }

    #[test]
    fn streams_and_topics_show_as_tables() {
        let streams = json!({"@type": "streams", "streams": [{"type": "STREAM", "name": "P", "topic": "p", "keyFormat": "KAFKA", "valueFormat": "JSON", "isWindowed": false}]});
        let (header, rows) = table_of(&streams);
        assert_eq!(header[0], "Stream Name");
        assert_eq!(
            rows,
            [vec![
                json!("P"),
                json!("p"),
                json!("KAFKA"),
                json!("JSON"),
                json!(false)
            ]]
        );
        let topics =
            json!({"@type": "kafka_topics", "topics": [{"name": "p", "replicaInfo": [1, 1, 1]}]});
        let (_, rows) = table_of(&topics);
        assert_eq!(rows, [vec![json!("p"), json!(3), json!(1)]]);
    }

    #[test]
    fn a_description_shows_fields_with_their_types_and_key() {
        let description = json!({"@type": "sourceDescription", "sourceDescription": {
            "name": "T", "type": "TABLE", "topic": "t", "keyFormat": "KAFKA", "valueFormat": "JSON",
            "fields": [
                {"name": "ID", "schema": {"type": "STRING"}, "type": "KEY"},
                {"name": "TAGS", "schema": {"type": "ARRAY", "memberSchema": {"type": "STRING"}}},
                {"name": "AT", "schema": {"type": "STRUCT", "fields": [{"name": "X", "schema": {"type": "INTEGER"}}]}},
            ],
        }});
        let shown = shown(&description);
        assert!(matches!(&shown[0], Shown::Line(line) if line.starts_with("Name: T  Type: TABLE")));
        assert_eq!(
            shown[1],
            Shown::Table {
                header: vec!["Field", "Type"],
                rows: vec![
                    vec![json!("ID"), json!("STRING (primary key)")],
                    vec![json!("TAGS"), json!("ARRAY<STRING>")],
                    vec![json!("AT"), json!("STRUCT<X INTEGER>")],
                ],
            }
        );
    }

    #[test]
    fn an_error_or_an_unknown_entity_shows_one_line() {
        let (_, error) = kpipe_sql::rest::statement_error("no such column", "SELECT x;", vec![]);
        assert_eq!(shown(&error), [Shown::Line("no such column".into())]);
        let unknown = json!({"@type": "function_names"});
        assert_eq!(shown(&unknown), [Shown::Line(unknown.to_string())]);
    }

    #[test]
    fn lines_come_whole_whatever_the_chunks() {
        let mut lines = Lines::default();
        assert!(lines.push(b"{\"queryId\":").is_empty());
        assert_eq!(
            lines.push(b"\"q\"}\n[1]\n\n[2"),
            ["{\"queryId\":\"q\"}", "[1]"]
        );
        assert_eq!(lines.push(b"]\n"), ["[2]"]);
    }

    #[test]
    fn header_types_decide_how_values_print() {
        let header = json!({"queryId": "q", "columnNames": ["AT", "N"], "columnTypes": ["TIMESTAMP", "DECIMAL(4, 2)"]});
        let columns = columns(&header);
        assert_eq!(columns[0].ty, SqlType::Timestamp);
        assert_eq!(
            columns[1].ty,
            SqlType::Decimal {
                precision: 4,
                scale: 2
            }
        );
    }
}
