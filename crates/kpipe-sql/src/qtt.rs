//! Runs ksqlDB's query-validation tests (QTT) in-process: each test's
//! statements go to a fresh [`Engine`], its input records are fed in order,
//! and every sink topic must receive exactly the expected records. A test
//! whose `format` list names several formats runs once per format. AVRO keys
//! and values go through the Avro codec and the engine's schema registry on
//! their way in and out, as they would through a topic.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::avro::{key_subject, value_subject, Schema};
use crate::engine::{Engine, Record};
use crate::format::Format;
use crate::functions::{register, UserFunction};
use crate::parser::{parse, SqlType};

/// One run of one test.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub name: String,
    /// None when it passed, else the first difference.
    pub failure: Option<String>,
}

/// Runs every test of a QTT file.
pub fn run_file(path: &Path) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for test in read_tests(path)? {
        for (name, format) in runs(&test) {
            outcomes.push(Outcome {
                failure: run_test(&test, format.as_deref()).err(),
                name,
            });
        }
    }
    Ok(outcomes)
}

/// The tests of a file in QTT's shape (`{"tests": [..]}`, `//` comments allowed).
pub(crate) fn read_tests(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: Value = serde_json::from_str(&strip_comments(&text))
        .with_context(|| format!("{} is not a QTT file", path.display()))?;
    Ok(file["tests"].as_array().cloned().unwrap_or_default())
}

/// A test's runs, each with its name: one per entry of its `format` list
/// (named `name - FORMAT`), or one without a format.
pub(crate) fn runs(test: &Value) -> Vec<(String, Option<String>)> {
    let name = test["name"].as_str().unwrap_or("unnamed");
    let formats: Vec<&str> = test["format"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if formats.is_empty() {
        return vec![(name.to_string(), None)];
    }
    formats
        .into_iter()
        .map(|f| (format!("{name} - {f}"), Some(f.to_string())))
        .collect()
}

/// A test's statements, `{FORMAT}` replaced by the run's format.
pub(crate) fn statements(test: &Value, format: Option<&str>) -> Vec<String> {
    let statements = test["statements"].as_array().into_iter().flatten();
    statements
        .map(|statement| {
            let sql = statement.as_str().unwrap_or_default();
            match format {
                Some(format) => sql.replace("{FORMAT}", format),
                None => sql.to_string(),
            }
        })
        .collect()
}

/// Removes `//` comments outside strings.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => out.extend(chars.next()),
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '/' && chars.peek() == Some(&'/') {
            for c in chars.by_ref() {
                if c == '\n' {
                    out.push('\n');
                    break;
                }
            }
        } else {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// The test functions ksqlDB's QTT harness loads, which some tests call;
/// registered afresh for each test, as their state is the test's.
fn register_test_functions() {
    // BAD_UDF: given text, null on every other call (the first included);
    // given a number, it fails.
    let calls = AtomicUsize::new(0);
    register(
        "BAD_UDF",
        UserFunction {
            return_type: |args| args.first().cloned().unwrap_or(SqlType::String),
            call: Box::new(move |args| match args.first() {
                Some(Value::Number(_)) => bail!("BAD_UDF fails for numbers"),
                Some(value) if calls.fetch_add(1, Ordering::Relaxed) % 2 == 1 => Ok(value.clone()),
                _ => Ok(Value::Null),
            }),
        },
    );
    // WHENCONDITION and WHENRESULT: their first argument, failing when the
    // second is false (to show CASE evaluates only the branch it takes).
    for name in ["WHENCONDITION", "WHENRESULT"] {
        register(
            name,
            UserFunction {
                return_type: |args| args.first().cloned().unwrap_or(SqlType::Boolean),
                call: Box::new(|args| match args {
                    [value, Value::Bool(true)] => Ok(value.clone()),
                    _ => bail!("evaluated although its branch was not taken"),
                }),
            },
        );
    }
}

fn run_test(test: &Value, format: Option<&str>) -> Result<(), String> {
    register_test_functions();
    let expected_error = test["expectedException"]["message"].as_str();
    let mut engine = Engine::default();
    for (name, value) in test["properties"].as_object().into_iter().flatten() {
        let value = value
            .as_str()
            .map_or_else(|| value.to_string(), String::from);
        engine.set_property(name, &value);
    }
    let writers = register_topic_schemas(&mut engine, test)?;
    // One script, a statement a line, as ksqlDB's runner has it (so parse
    // errors name the same line).
    let script = statements(test, format);
    let result = parse(&script.join("\n")).and_then(|statements| {
        statements
            .iter()
            .try_for_each(|s| engine.execute(s).map(drop))
    });
    if let Err(error) = result {
        let error = error.to_string();
        return match expected_error {
            Some(expected) if error.contains(expected) => Ok(()),
            Some(expected) => Err(format!("expected the error {expected:?}, got {error:?}")),
            None => Err(error),
        };
    }
    let produced = match (feed(&mut engine, test, &writers), expected_error) {
        (Ok(produced), None) => produced,
        (Ok(_), Some(expected)) => {
            return Err(format!(
                "expected the error {expected:?}, but every statement ran and every record was processed"
            ))
        }
        (Err(error), Some(expected)) if error.contains(expected) => return Ok(()),
        (Err(error), Some(expected)) => {
            return Err(format!("expected the error {expected:?}, got {error:?}"))
        }
        (Err(error), None) => return Err(error),
    };
    let expected: Vec<&Value> = test["outputs"].as_array().into_iter().flatten().collect();
    let mut topics: Vec<&str> = expected
        .iter()
        .filter_map(|o| o["topic"].as_str())
        .collect();
    topics.dedup();
    for topic in topics {
        let want: Vec<&&Value> = expected.iter().filter(|o| o["topic"] == topic).collect();
        let got: Vec<&Record> = produced.iter().filter(|r| r.topic == topic).collect();
        for (i, want) in want.iter().enumerate() {
            let Some(got) = got.get(i) else {
                return Err(format!(
                    "{topic}: expected {} records, got {}",
                    want_len(&expected, topic),
                    got.len()
                ));
            };
            // The expected record as a consumer would read it, had it been written.
            let (want_key, want_value) =
                through_avro(&engine, topic, None, &want["key"], &want["value"])
                    .map_err(|e| format!("{topic} record {i}, expected: {e:#}"))?;
            let key_ok = same(&want_key, &got.key);
            let value_ok = same(&want_value, &got.value);
            let time_ok = want["timestamp"]
                .as_i64()
                .is_none_or(|t| t == got.timestamp);
            if !(key_ok && value_ok && time_ok) {
                return Err(format!(
                    "{topic} record {i}: expected key {} value {} timestamp {}, got key {} value {} timestamp {}",
                    want["key"], want["value"], want["timestamp"], got.key, got.value, got.timestamp
                ));
            }
        }
        if got.len() > want.len() {
            return Err(format!(
                "{topic}: expected {} records, got {}",
                want.len(),
                got.len()
            ));
        }
    }
    Ok(())
}

/// Feeds the records of `INSERT INTO .. VALUES` and then the test's inputs
/// to the engine; returns what the sinks received, each record written and
/// read back in its sink's formats. Failing to process or write a record is
/// Kafka Streams' "Exception caught in process".
fn feed(
    engine: &mut Engine,
    test: &Value,
    writers: &HashMap<String, Writers>,
) -> Result<Vec<Record>, String> {
    let mut inputs = engine.take_inserted();
    // Offsets per (topic, partition), as a broker would assign them.
    let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
    for input in test["inputs"].as_array().into_iter().flatten() {
        let topic = input["topic"].as_str().unwrap_or_default();
        let partition = input["partition"].as_i64().unwrap_or(0) as i32;
        let next = offsets.entry((topic.to_string(), partition)).or_default();
        let offset = *next;
        *next += 1;
        let (key, value) = through_avro(
            engine,
            topic,
            writers.get(topic),
            &input["key"],
            &input["value"],
        )
        .map_err(|e| format!("input to {topic}: {e:#}"))?;
        inputs.push(Record {
            topic: topic.to_string(),
            key,
            value,
            timestamp: input["timestamp"].as_i64().unwrap_or(0),
            window: input["window"]["start"]
                .as_i64()
                .zip(input["window"]["end"].as_i64()),
            partition,
            offset,
        });
    }
    let mut produced = Vec::new();
    for record in &inputs {
        let failed = |e: anyhow::Error| {
            format!(
                "Exception caught in process: topic {}, offset {}: {e:#}",
                record.topic, record.offset
            )
        };
        for mut out in engine.process(record).map_err(failed)? {
            (out.key, out.value) =
                through_avro(engine, &out.topic, None, &out.key, &out.value).map_err(failed)?;
            produced.push(out);
        }
    }
    Ok(produced)
}

/// The schema ids of a topic's producer (given by the test), by key and value.
#[derive(Default)]
struct Writers {
    key: Option<u32>,
    value: Option<u32>,
}

/// Registers the schemas a test's `topics` give (as their producers would
/// have), under the ids given or the registry's next.
fn register_topic_schemas(
    engine: &mut Engine,
    test: &Value,
) -> Result<HashMap<String, Writers>, String> {
    let mut writers: HashMap<String, Writers> = HashMap::new();
    for topic in test["topics"].as_array().into_iter().flatten() {
        let name = topic["name"].as_str().unwrap_or_default();
        for part in ["key", "value"] {
            let schema = &topic[format!("{part}Schema")];
            let avro = topic[format!("{part}Format")]
                .as_str()
                .is_some_and(|f| f.eq_ignore_ascii_case("AVRO"));
            if schema.is_null() || !avro {
                continue;
            }
            let schema = Schema::from_json(schema)
                .map_err(|e| format!("the {part} schema of topic {name}: {e:#}"))?;
            let subject = match part {
                "key" => key_subject(name),
                _ => value_subject(name),
            };
            let id = match topic[format!("{part}SchemaId")].as_u64() {
                Some(id) => {
                    let id = id as u32;
                    engine.registry.register_with_id(&subject, schema, id);
                    id
                }
                None => engine.registry.register(&subject, schema),
            };
            let entry = writers.entry(name.to_string()).or_default();
            match part {
                "key" => entry.key = Some(id),
                _ => entry.value = Some(id),
            }
        }
    }
    Ok(writers)
}

/// A record's key and value as a consumer of `topic` reads them: the parts
/// its stream or table holds in AVRO are written with the producer's schema
/// (`writers`, else the subject's latest) and read back with the engine's
/// registry; the other parts are already in their logical form.
fn through_avro(
    engine: &Engine,
    topic: &str,
    writers: Option<&Writers>,
    key: &Value,
    value: &Value,
) -> Result<(Value, Value)> {
    let Some(source) = engine.source_over(topic) else {
        return Ok((key.clone(), value.clone()));
    };
    let trip = |format: Format, subject: String, writer: Option<u32>, part: &Value| {
        if format != Format::Avro || part.is_null() {
            return Ok(part.clone());
        }
        let bytes = match writer.and_then(|id| Some((id, engine.registry.schema(id)?))) {
            Some((id, schema)) => engine.registry.encode_with(id, schema, part)?,
            None => engine.registry.encode(&subject, part)?,
        };
        engine.registry.decode(&bytes)
    };
    Ok((
        trip(
            source.key_format,
            key_subject(topic),
            writers.and_then(|w| w.key),
            key,
        )?,
        trip(
            source.value_format,
            value_subject(topic),
            writers.and_then(|w| w.value),
            value,
        )?,
    ))
}

fn want_len(expected: &[&Value], topic: &str) -> usize {
    expected.iter().filter(|o| o["topic"] == topic).count()
}

/// Equality as ksqlDB's runner sees it: numbers by value, field names in any case.
fn same(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter().all(|(k, v)| {
                    b.iter()
                        .find(|(bk, _)| bk.eq_ignore_ascii_case(k))
                        .is_some_and(|(_, bv)| same(v, bv))
                })
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        _ => want == got,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_go_but_strings_stay() {
        assert_eq!(
            strip_comments("{\"a\": \"x // y\"} // note\n1"),
            "{\"a\": \"x // y\"} \n1"
        );
    }

    #[test]
    fn a_test_passes_and_a_wrong_expectation_fails_with_the_difference() {
        let test = serde_json::json!({
            "name": "where",
            "statements": [
                "CREATE STREAM INPUT (id int KEY, name STRING) WITH (kafka_topic='test_topic', value_format='{FORMAT}');",
                "CREATE STREAM OUTPUT AS SELECT * FROM INPUT WHERE id < 10;"
            ],
            "inputs": [{"topic": "test_topic", "key": 8, "value": {"name": "a"}},
                       {"topic": "test_topic", "key": 11, "value": {"name": "c"}}],
            "outputs": [{"topic": "OUTPUT", "key": 8, "value": {"NAME": "a"}}]
        });
        assert_eq!(run_test(&test, Some("JSON")), Ok(()));
        let mut wrong = test.clone();
        wrong["outputs"][0]["value"]["NAME"] = Value::from("b");
        assert!(run_test(&wrong, Some("JSON"))
            .unwrap_err()
            .contains("OUTPUT record 0"));
        assert_eq!(run_test(&test, Some("AVRO")), Ok(()));
        assert!(run_test(&test, Some("PROTOBUF"))
            .unwrap_err()
            .contains("PROTOBUF is not supported"));
    }
}
