//! What a session can ask the engine: its streams and tables (SHOW, DESCRIBE),
//! its queries, one query alone to run on its own thread, and a transient
//! query's output record as display columns.

use serde_json::Value;

use crate::engine::{Engine, Record, Source};
use crate::format::{split_delimited, Format};
use crate::parser::{ColumnDef, SelectItem, SourceKind, SqlType};

/// A stream or table as SHOW and DESCRIBE list it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    pub name: String,
    pub kind: SourceKind,
    pub topic: String,
    pub key_format: &'static str,
    pub value_format: &'static str,
    pub columns: Vec<ColumnDef>,
    /// `TUMBLING`, `HOPPING` or `SESSION` for a windowed table.
    pub window: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryInfo {
    pub id: String,
    pub from: String,
    pub sink: String,
    pub transient: bool,
}

fn info(name: &str, source: &Source) -> SourceInfo {
    SourceInfo {
        name: name.to_string(),
        kind: source.kind,
        topic: source.topic.clone(),
        key_format: source.key_format.name(),
        value_format: source.value_format.name(),
        columns: source.columns.clone(),
        window: source.window.map(|w| match w {
            w if w.session => "SESSION",
            w if w.advance < w.size => "HOPPING",
            _ => "TUMBLING",
        }),
    }
}

impl Engine {
    /// The streams and tables, by name (transient queries' outputs left out).
    pub fn sources(&self) -> Vec<SourceInfo> {
        let mut list: Vec<SourceInfo> = self
            .sources
            .iter()
            .filter(|(name, _)| !self.queries.iter().any(|q| q.transient && q.sink == **name))
            .map(|(name, source)| info(name, source))
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    pub fn source(&self, name: &str) -> Option<SourceInfo> {
        self.sources.get(name).map(|source| info(name, source))
    }

    pub fn queries(&self) -> Vec<QueryInfo> {
        self.queries
            .iter()
            .map(|q| QueryInfo {
                id: q.id.clone(),
                from: q.from.clone(),
                sink: q.sink.clone(),
                transient: q.transient,
            })
            .collect()
    }

    /// The topic a query reads and the topic it writes.
    pub fn query_topics(&self, id: &str) -> Option<(String, String)> {
        let query = self.queries.iter().find(|q| q.id == id)?;
        Some((
            self.sources.get(&query.from)?.topic.clone(),
            self.sources.get(&query.sink)?.topic.clone(),
        ))
    }

    /// An engine running only query `id` (with every source, to read and
    /// write their formats), so each query can run on its own thread and
    /// read its source from the broker rather than from another query.
    pub fn only(&self, id: &str) -> Option<Engine> {
        let query = self.queries.iter().find(|q| q.id == id)?.clone();
        let mut engine = Engine::default();
        engine.sources = self.sources.clone();
        engine.registry = self.registry.clone();
        engine.queries.push(query);
        Some(engine)
    }

    /// The columns a SELECT's rows show, in SELECT order.
    pub fn shown_columns(&self, id: &str) -> Vec<ColumnDef> {
        let Some(source) = self.sources.get(id) else {
            return Vec::new();
        };
        let mut columns: Vec<ColumnDef> = self
            .shown_order(id, source.columns.len())
            .into_iter()
            .map(|i| source.columns[i].clone())
            .collect();
        let leading_keys = columns.iter().take_while(|c| c.key).count();
        if let Some(at) = self.window_bounds_at(id, leading_keys) {
            let bound = |name: &str| ColumnDef {
                name: name.to_string(),
                ty: SqlType::BigInt,
                key: true,
            };
            columns.splice(at..at, [bound("WINDOWSTART"), bound("WINDOWEND")]);
        }
        columns
    }

    fn shown_order(&self, id: &str, columns: usize) -> Vec<usize> {
        match self.queries.iter().find(|q| q.sink == id) {
            Some(query) if query.shown.len() == columns => query.shown.clone(),
            _ => (0..columns).collect(),
        }
    }

    /// `SELECT *` of a windowed source shows its rows' window bounds right
    /// after the `leading_keys` key columns, as ksqlDB's queries on windowed
    /// tables do: where, if so.
    fn window_bounds_at(&self, id: &str, leading_keys: usize) -> Option<usize> {
        let query = self.queries.iter().find(|q| q.sink == id && q.transient)?;
        let from = self.sources.get(&query.from)?;
        let all = query
            .select
            .items
            .iter()
            .any(|i| matches!(i, SelectItem::All));
        (all && from.window.is_some() && query.select.group_by.is_empty()).then_some(leading_keys)
    }

    /// A record of a stream or table (or a SELECT's output) as the values of
    /// its columns, in the order [`Engine::shown_columns`] gives.
    pub fn display_row(&self, source_name: &str, record: &Record) -> Vec<Value> {
        let Some(source) = self.sources.get(source_name) else {
            return Vec::new();
        };
        let keys = source.columns.iter().filter(|c| c.key).count();
        let fields = match (&record.value, source.value_format) {
            (Value::String(text), Format::Delimited | Format::Kafka) => split_delimited(text),
            _ => Vec::new(),
        };
        let mut values = fields.into_iter();
        let in_sink_order: Vec<Value> = source
            .columns
            .iter()
            .map(|column| match (column.key, &record.value) {
                (true, _) if keys == 1 => record.key.clone(),
                (true, _) => record.key.get(&column.name).cloned().unwrap_or(Value::Null),
                (false, Value::Object(object)) => {
                    object.get(&column.name).cloned().unwrap_or(Value::Null)
                }
                (false, _) => values
                    .next()
                    .filter(|f| !f.is_empty())
                    .map_or(Value::Null, Value::String),
            })
            .collect();
        let order = self.shown_order(source_name, in_sink_order.len());
        let mut row: Vec<Value> = order.iter().map(|i| in_sink_order[*i].clone()).collect();
        let leading_keys = order.iter().take_while(|i| source.columns[**i].key).count();
        if let Some(at) = self.window_bounds_at(source_name, leading_keys) {
            let (start, end) = record.window.map_or((Value::Null, Value::Null), |(s, e)| {
                (Value::from(s), Value::from(e))
            });
            row.splice(at..at, [start, end]);
        }
        row
    }
}

/// A value as a person reads it: text unquoted, TIMESTAMPs as ksqlDB prints
/// them (`2024-10-10T15:11:50.000`, UTC), null as an empty cell.
pub fn display(value: &Value, ty: &SqlType) -> String {
    match (value, ty) {
        (Value::Null, _) => String::new(),
        (Value::Number(n), SqlType::Timestamp) => n.as_i64().map_or_else(
            || n.to_string(),
            |ms| {
                let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
                let (y, m, d) = civil_from_days(days);
                format!(
                    "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}",
                    ms_of_day / 3_600_000,
                    ms_of_day / 60_000 % 60,
                    ms_of_day / 1000 % 60,
                    ms_of_day % 1000
                )
            },
        ),
        (Value::String(s), _) => s.clone(),
        (other, _) => other.to_string(),
    }
}

/// Howard Hinnant's days-to-civil: the proleptic Gregorian date of a day count.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Executed;
    use crate::parser::parse;

    #[test]
    fn a_select_shows_its_columns_in_select_order_though_keys_come_first_in_the_sink() {
        let mut engine = Engine::default();
        let statements = parse(
            "CREATE STREAM p (name STRING, amount INT) WITH (kafka_topic='p', value_format='JSON');
             SELECT FROM_UNIXTIME(WINDOWSTART) AS ws, name, COUNT(*) AS cnt FROM p
               WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY name EMIT CHANGES;",
        )
        .unwrap();
        engine.execute(&statements[0]).unwrap();
        let Executed::Transient { id, pull } = engine.execute(&statements[1]).unwrap() else {
            panic!("a SELECT is transient")
        };
        assert!(!pull);
        let names: Vec<String> = engine
            .shown_columns(&id)
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["WS", "NAME", "CNT"]);
        let sink: Vec<String> = engine
            .source(&id)
            .unwrap()
            .columns
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(sink[0], "NAME", "the key column leads the sink");
        let record = Record {
            topic: "p".into(),
            key: Value::Null,
            value: serde_json::json!({"name": "Carol", "amount": 5}),
            timestamp: 12_345,
            window: None,
            partition: 0,
            offset: 0,
        };
        let out = engine.process(&record).unwrap();
        assert_eq!(
            engine.display_row(&id, &out[0]),
            [Value::from(10_000), Value::from("Carol"), Value::from(1)]
        );
    }

    #[test]
    fn timestamps_display_as_ksqldb_prints_them() {
        assert_eq!(
            display(&Value::from(1_728_573_110_000i64), &SqlType::Timestamp),
            "2024-10-10T15:11:50.000"
        );
        assert_eq!(
            display(&Value::from(0), &SqlType::Timestamp),
            "1970-01-01T00:00:00.000"
        );
        assert_eq!(display(&Value::from("x"), &SqlType::String), "x");
        assert_eq!(display(&Value::Null, &SqlType::Int), "");
    }
}
