//! ksqlDB's REST entities as JSON: the bodies of `POST /ksql` (an entity per
//! statement, or a `statement_error`) and of `POST /query` (a header, rows
//! and, for streams, a final message), each with its HTTP status, built
//! from what the engine did so that any server answers as ksqlDB does.

use serde_json::{json, Map, Value};

use crate::catalog::{QueryInfo, SourceInfo};
use crate::engine::{Engine, Executed};
use crate::parser::{ColumnDef, Listing, SourceKind, SqlType, Statement};
use crate::pull::Pulled;

/// An HTTP status and a JSON body.
pub type Response = (u16, Value);

/// ksqlDB's error code for a statement it refuses (HTTP 400 × 100 + 1).
pub const BAD_STATEMENT: u16 = 40001;
/// A SELECT sent to `/ksql`, which only `/query` runs.
pub const QUERY_ENDPOINT: u16 = 40002;

/// Columns as ksqlDB's query header describes them:
/// ``"`ID` STRING KEY, `COUNT` BIGINT"``.
pub fn schema(columns: &[ColumnDef]) -> String {
    let columns: Vec<String> = columns
        .iter()
        .map(|c| {
            let key = if c.key { " KEY" } else { "" };
            format!("`{}` {}{key}", c.name, c.ty)
        })
        .collect();
    columns.join(", ")
}

/// The `POST /query` body of a pull query: its header, its rows and, for
/// a stream, how it ended.
pub fn query_response(query_id: &str, columns: &[ColumnDef], pulled: &Pulled) -> Value {
    let mut body = vec![json!({"header": {"queryId": query_id, "schema": schema(columns)}})];
    body.extend(
        pulled
            .rows
            .iter()
            .map(|row| json!({"row": {"columns": row}})),
    );
    body.extend(
        pulled
            .final_message
            .map(|message| json!({"finalMessage": message})),
    );
    Value::Array(body)
}

/// A refused statement (parse, validation or execution), with the entities
/// of the statements before it in the same request: HTTP 400.
pub fn statement_error(message: &str, statement_text: &str, entities: Vec<Value>) -> Response {
    error_with_code(BAD_STATEMENT, message, statement_text, entities)
}

/// A SELECT sent to `/ksql`.
pub fn select_on_ksql(statement_text: &str, entities: Vec<Value>) -> Response {
    error_with_code(
        QUERY_ENDPOINT,
        "The following statement types should be issued to the websocket endpoint '/query':\n\t* PRINT\n\t* SELECT",
        statement_text,
        entities,
    )
}

fn error_with_code(
    code: u16,
    message: &str,
    statement_text: &str,
    entities: Vec<Value>,
) -> Response {
    (
        code / 100,
        json!({
            "@type": "statement_error",
            "error_code": code,
            "message": message,
            "statementText": statement_text,
            "entities": entities,
        }),
    )
}

/// The entity of a statement the engine executed: ksqlDB's `currentStatus`
/// with its command id and message; None for INSERT .. VALUES, which ksqlDB
/// answers with no entity. `sequence` is the command's place in the command log.
pub fn command_status(
    statement_text: &str,
    statement: &Statement,
    executed: &Executed,
    sequence: i64,
) -> Option<Value> {
    let kind_of = |kind: SourceKind| match kind {
        SourceKind::Stream => ("stream", "Stream"),
        SourceKind::Table => ("table", "Table"),
    };
    let (command_id, message, query_id) = match executed {
        Executed::Created { kind, name } => {
            let (word, title) = kind_of(*kind);
            (
                format!("{word}/{name}/create"),
                format!("{title} created"),
                None,
            )
        }
        Executed::Started { id, sink } => {
            let command = match statement {
                Statement::CreateAs { kind, .. } => format!("{}/{sink}/create", kind_of(*kind).0),
                _ => format!("stream/{sink}/execute"),
            };
            (command, format!("Created query with ID {id}"), Some(id))
        }
        Executed::Dropped { name, topic } => {
            let word = match statement {
                Statement::Drop { kind, .. } => kind_of(*kind).0,
                _ => "stream",
            };
            let message = match topic {
                Some(topic) => format!("Source `{name}` (topic: {topic}) was dropped."),
                None => format!("Source `{name}` does not exist."),
            };
            (format!("{word}/{name}/drop"), message, None)
        }
        Executed::Terminated { ids } => {
            let target = match ids.as_slice() {
                [one] => one.as_str(),
                _ => "ALL",
            };
            let message = if ids.len() == 1 {
                "Query terminated."
            } else {
                "All queries terminated."
            };
            (
                format!("terminate/{target}/execute"),
                message.to_string(),
                None,
            )
        }
        Executed::Altered { kind, name } => {
            let (word, title) = kind_of(*kind);
            (
                format!("{word}/{name}/alter"),
                format!("{title} altered."),
                None,
            )
        }
        Executed::Transient { .. } | Executed::Inserted { .. } => return None,
    };
    let mut status = json!({"status": "SUCCESS", "message": message});
    if let Some(id) = query_id {
        status["queryId"] = Value::from(id.as_str());
    }
    Some(json!({
        "@type": "currentStatus",
        "statementText": statement_text,
        "commandId": command_id,
        "commandStatus": status,
        "commandSequenceNumber": sequence,
        "warnings": [],
    }))
}

/// `SHOW STREAMS` or `SHOW TABLES`: the sources of `kind`.
/// The entity of SHOW/LIST over `engine`'s catalog; topics and properties
/// come from whoever knows them (the broker, the session).
pub fn listing(
    engine: &Engine,
    listing: Listing,
    statement_text: &str,
    topics: &[(String, i32)],
    properties: &[(String, String)],
) -> Value {
    match listing {
        Listing::Streams => source_list(statement_text, SourceKind::Stream, &engine.sources()),
        Listing::Tables => source_list(statement_text, SourceKind::Table, &engine.sources()),
        Listing::Queries => {
            let queries: Vec<_> = engine
                .queries()
                .into_iter()
                .map(|q| {
                    let topic = engine
                        .query_topics(&q.id)
                        .map(|(_, to)| to)
                        .unwrap_or_default();
                    (q, topic)
                })
                .collect();
            query_list(statement_text, &queries)
        }
        Listing::Topics => topic_list(statement_text, topics),
        Listing::Properties => property_list(statement_text, properties),
    }
}

/// The entity of DESCRIBE `name`, with the queries that read and write it.
pub fn description(engine: &Engine, name: &str, statement_text: &str) -> anyhow::Result<Value> {
    let source = engine
        .source(name)
        .ok_or_else(|| anyhow::anyhow!("Could not find STREAM/TABLE '{name}' in the Metastore"))?;
    let queries = engine.queries();
    let ids = |pick: &dyn Fn(&QueryInfo) -> bool| -> Vec<String> {
        queries
            .iter()
            .filter(|q| !q.transient && pick(q))
            .map(|q| q.id.clone())
            .collect()
    };
    let (read, write) = (ids(&|q| q.from == *name), ids(&|q| q.sink == *name));
    Ok(source_description(statement_text, &source, &read, &write))
}

fn source_list(statement_text: &str, kind: SourceKind, sources: &[SourceInfo]) -> Value {
    let (field, word) = match kind {
        SourceKind::Stream => ("streams", "STREAM"),
        SourceKind::Table => ("tables", "TABLE"),
    };
    let listed: Vec<Value> = sources
        .iter()
        .filter(|s| s.kind == kind)
        .map(|s| {
            json!({
                "type": word,
                "name": s.name,
                "topic": s.topic,
                "keyFormat": s.key_format,
                "valueFormat": s.value_format,
                "isWindowed": s.window.is_some(),
            })
        })
        .collect();
    json!({"@type": field, "statementText": statement_text, field: listed, "warnings": []})
}

/// `SHOW QUERIES`: the persistent queries, with the topic each writes (their
/// statement text, ksqlDB's `queryString`, is the command log's to add).
fn query_list(statement_text: &str, queries: &[(QueryInfo, String)]) -> Value {
    let listed: Vec<Value> = queries
        .iter()
        .filter(|(q, _)| !q.transient)
        .map(|(q, topic)| {
            json!({
                "sinks": [q.sink],
                "sinkKafkaTopics": [topic],
                "id": q.id,
                "queryType": "PERSISTENT",
                "state": "RUNNING",
                "statusCount": {"RUNNING": 1},
            })
        })
        .collect();
    json!({"@type": "queries", "statementText": statement_text, "queries": listed, "warnings": []})
}

/// `SHOW TOPICS`: each topic with its partitions' replica counts.
fn topic_list(statement_text: &str, topics: &[(String, i32)]) -> Value {
    let listed: Vec<Value> = topics
        .iter()
        .map(|(name, partitions)| json!({"name": name, "replicaInfo": vec![1; *partitions as usize]}))
        .collect();
    json!({"@type": "kafka_topics", "statementText": statement_text, "topics": listed, "warnings": []})
}

/// `SHOW PROPERTIES`: the properties set, as ksqlDB scopes them.
fn property_list(statement_text: &str, properties: &[(String, String)]) -> Value {
    let listed: Vec<Value> = properties
        .iter()
        .map(|(name, value)| json!({"name": name, "scope": "KSQL", "value": value}))
        .collect();
    json!({
        "@type": "properties",
        "statementText": statement_text,
        "properties": listed,
        "overwrittenProperties": [],
        "defaultProperties": [],
        "warnings": [],
    })
}

/// `DESCRIBE`: a source's fields (key columns marked `KEY`), formats and
/// the queries that read and write it.
fn source_description(
    statement_text: &str,
    source: &SourceInfo,
    read_queries: &[String],
    write_queries: &[String],
) -> Value {
    let fields: Vec<Value> = source
        .columns
        .iter()
        .map(|c| {
            let mut field = json!({"name": c.name, "schema": type_schema(&c.ty)});
            if c.key {
                field["type"] = Value::from("KEY");
            }
            field
        })
        .collect();
    let queries =
        |ids: &[String]| -> Vec<Value> { ids.iter().map(|id| json!({"id": id})).collect() };
    json!({
        "@type": "sourceDescription",
        "statementText": statement_text,
        "sourceDescription": {
            "name": source.name,
            "type": match source.kind { SourceKind::Stream => "STREAM", SourceKind::Table => "TABLE" },
            "fields": fields,
            "readQueries": queries(read_queries),
            "writeQueries": queries(write_queries),
            "keyFormat": source.key_format,
            "valueFormat": source.value_format,
            "topic": source.topic,
            "windowType": source.window,
            "timestamp": "",
            "statistics": "",
            "errorStats": "",
            "extended": false,
            "partitions": 0,
            "replication": 0,
            "statement": "",
        },
        "warnings": [],
    })
}

/// A statement that did nothing worth an entity of its own (SET, UNSET).
pub fn warning(statement_text: &str, message: &str) -> Value {
    json!({"@type": "warning_entity", "statementText": statement_text, "message": message, "warnings": []})
}

/// A type as ksqlDB's `SchemaInfo`: its base type, a struct's fields, an
/// array's or map's member schema.
fn type_schema(ty: &SqlType) -> Value {
    let base = ty.to_string();
    let base = base.split(['(', '<']).next().unwrap_or_default();
    let mut schema = Map::new();
    schema.insert("type".into(), Value::from(base));
    match ty {
        SqlType::Array(member) | SqlType::Map(_, member) => {
            schema.insert("memberSchema".into(), type_schema(member));
        }
        SqlType::Struct(fields) => {
            let fields: Vec<Value> = fields
                .iter()
                .map(|(name, ty)| json!({"name": name, "schema": type_schema(ty)}))
                .collect();
            schema.insert("fields".into(), Value::Array(fields));
        }
        _ => {}
    }
    Value::Object(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_and_query_bodies_read_as_ksqldb_writes_them() {
        let columns = [
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
        ];
        assert_eq!(schema(&columns), "`ID` STRING KEY, `COUNT` BIGINT");
        let pulled = Pulled {
            rows: vec![vec![Value::from("10"), Value::from(1)]],
            final_message: Some("Limit Reached"),
        };
        assert_eq!(
            query_response("q1", &columns, &pulled),
            json!([
                {"header": {"queryId": "q1", "schema": "`ID` STRING KEY, `COUNT` BIGINT"}},
                {"row": {"columns": ["10", 1]}},
                {"finalMessage": "Limit Reached"}
            ])
        );
        let (status, body) = statement_error("bad", "SELECT 1;", Vec::new());
        assert_eq!(status, 400);
        assert_eq!(body["error_code"], 40001);
        assert_eq!(body["@type"], "statement_error");
    }
}
