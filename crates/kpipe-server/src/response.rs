//! What the server writes back: a statement's entity for /ksql, and a query's
//! rows framed for /query (ksqlDB's v1 JSON array) or /query-stream
//! (delimited lines, or a JSON array).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use kpipe_sql::live::Output;
use kpipe_sql::parser::ColumnDef;
use kpipe_sql::rest;
use serde_json::{json, Value};

/// A statement's results, gathered for one JSON answer.
#[derive(Default)]
pub struct Collected {
    columns: Vec<ColumnDef>,
    rows: Vec<Vec<Value>>,
    final_message: Option<String>,
}

impl Output for Collected {
    fn message(&mut self, _text: &str) {}
    fn columns(&mut self, columns: &[ColumnDef], _streaming: bool) {
        self.columns = columns.to_vec();
    }
    fn row(&mut self, values: &[Value]) {
        self.rows.push(values.to_vec());
    }
    fn final_message(&mut self, how: &str) {
        self.final_message = Some(how.to_string());
    }
    fn end(&mut self) {}
}

impl Collected {
    /// A pull query's answer, framed: a stream's ends with how it ended.
    pub fn pulled(self, framing: Framing, id: &str) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut framer = Framer::new(framing);
        out.push(framer.header(id, &self.columns));
        out.extend(self.rows.iter().map(|row| framer.row(row)));
        out.push(framer.end(self.final_message.as_deref()));
        out
    }
}

/// How rows are laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// /query: `[{"header":…},{"row":{"columns":[…]}},…,{"finalMessage":…}]`.
    QueryV1,
    /// /query-stream: a metadata line, then a JSON array per row and line.
    Delimited,
    /// /query-stream with `Accept: application/json`: the same in one array.
    JsonArray,
}

impl Framing {
    pub fn content_type(self) -> &'static str {
        match self {
            Framing::QueryV1 | Framing::JsonArray => "application/json",
            Framing::Delimited => "application/vnd.ksqlapi.delimited.v1",
        }
    }
}

/// Writes one query's chunks in its framing.
struct Framer {
    framing: Framing,
}

impl Framer {
    fn new(framing: Framing) -> Framer {
        Framer { framing }
    }

    fn header(&mut self, id: &str, columns: &[ColumnDef]) -> Bytes {
        let text = match self.framing {
            Framing::QueryV1 => format!(
                "[{}",
                json!({"header": {"queryId": id, "schema": rest::schema(columns)}})
            ),
            Framing::Delimited | Framing::JsonArray => {
                let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
                let types: Vec<String> = columns.iter().map(|c| c.ty.to_string()).collect();
                let header = json!({"queryId": id, "columnNames": names, "columnTypes": types});
                if self.framing == Framing::Delimited {
                    format!("{header}\n")
                } else {
                    format!("[{header}")
                }
            }
        };
        Bytes::from(text)
    }

    fn row(&mut self, values: &[Value]) -> Bytes {
        let row = Value::Array(values.to_vec());
        Bytes::from(match self.framing {
            Framing::QueryV1 => format!(",\n{}", json!({"row": {"columns": row}})),
            Framing::Delimited => format!("{row}\n"),
            Framing::JsonArray => format!(",\n{row}"),
        })
    }

    /// The last chunk; `how` is ksqlDB's final message, if the query says one.
    fn end(&mut self, how: Option<&str>) -> Bytes {
        Bytes::from(match (self.framing, how) {
            (Framing::QueryV1, Some(how)) => format!(",\n{}]\n", json!({"finalMessage": how})),
            (Framing::QueryV1 | Framing::JsonArray, _) => "]\n".to_string(),
            (Framing::Delimited, _) => String::new(),
        })
    }

    fn error(&mut self, message: &str) -> Bytes {
        let error = json!({"@type": "generic_error", "error_code": 50000, "message": message});
        Bytes::from(match self.framing {
            Framing::QueryV1 => format!(",\n{}]\n", json!({"errorMessage": error})),
            Framing::Delimited => format!("{error}\n"),
            Framing::JsonArray => format!(",\n{error}]\n"),
        })
    }
}

/// A push query's rows, sent to the client as they come. A client that has
/// gone raises `cancel`, which ends the query.
pub struct Streamed {
    framer: Framer,
    id: String,
    limit: Option<u64>,
    rows: u64,
    sender: tokio::sync::mpsc::Sender<Bytes>,
    cancel: Arc<AtomicBool>,
    ended: bool,
}

impl Streamed {
    pub fn new(
        framing: Framing,
        id: &str,
        limit: Option<u64>,
        sender: tokio::sync::mpsc::Sender<Bytes>,
        cancel: Arc<AtomicBool>,
    ) -> Streamed {
        Streamed {
            framer: Framer::new(framing),
            id: id.to_string(),
            limit,
            rows: 0,
            sender,
            cancel,
            ended: false,
        }
    }

    fn send(&mut self, chunk: Bytes) {
        if self.sender.blocking_send(chunk).is_err() {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Ends the answer with an error (the query failed while streaming).
    pub fn fail(&mut self, message: &str) {
        if !self.ended {
            self.ended = true;
            let chunk = self.framer.error(message);
            self.send(chunk);
        }
    }
}

impl Output for Streamed {
    fn message(&mut self, _text: &str) {}

    fn columns(&mut self, columns: &[ColumnDef], _streaming: bool) {
        let chunk = self.framer.header(&self.id, columns);
        self.send(chunk);
    }

    fn row(&mut self, values: &[Value]) {
        self.rows += 1;
        let chunk = self.framer.row(values);
        self.send(chunk);
    }

    fn end(&mut self) {
        self.ended = true;
        let reached = self.limit.is_some_and(|l| self.rows >= l);
        let chunk = self.framer.end(reached.then_some("Limit Reached"));
        self.send(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kpipe_sql::parser::SqlType;

    fn columns() -> Vec<ColumnDef> {
        vec![
            ColumnDef {
                name: "ID".into(),
                ty: SqlType::String,
                key: true,
            },
            ColumnDef {
                name: "COUNT".into(),
                ty: SqlType::BigInt,
                key: false,
            },
        ]
    }

    fn text(chunks: Vec<Bytes>) -> String {
        chunks
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    #[test]
    fn a_pull_answer_in_each_framing() {
        let collected = || Collected {
            columns: columns(),
            rows: vec![vec![json!("10"), json!(1)], vec![json!("11"), json!(2)]],
            final_message: Some("Limit Reached".into()),
        };
        let v1: Value =
            serde_json::from_str(&text(collected().pulled(Framing::QueryV1, "q"))).unwrap();
        assert_eq!(
            v1,
            json!([
                {"header": {"queryId": "q", "schema": "`ID` STRING KEY, `COUNT` BIGINT"}},
                {"row": {"columns": ["10", 1]}},
                {"row": {"columns": ["11", 2]}},
                {"finalMessage": "Limit Reached"},
            ])
        );
        let lines = text(collected().pulled(Framing::Delimited, "q"));
        let lines: Vec<Value> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                json!({"queryId": "q", "columnNames": ["ID", "COUNT"], "columnTypes": ["STRING", "BIGINT"]}),
                json!(["10", 1]),
                json!(["11", 2]),
            ]
        );
        let array: Value =
            serde_json::from_str(&text(collected().pulled(Framing::JsonArray, "q"))).unwrap();
        assert_eq!(array.as_array().unwrap().len(), 3);
    }
}
