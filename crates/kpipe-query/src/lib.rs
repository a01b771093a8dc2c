//! kpipe-query: SQL over the Parquet lake with DataFusion.
//!
//! Every topic directory is a table named after the topic, with `dt` as a
//! partition column when the lake is partitioned by date. Columns keep the lake's
//! dotted names, quoted in SQL: `SELECT "event_param.event_type" FROM music_events`.
//! Files written at different times may disagree on a column's type; the table
//! widens them as the sink does within a file (Int64 + Float64 → Float64, anything
//! else mixed → Utf8) and DataFusion casts each file to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use futures_util::{StreamExt, TryStreamExt};
use kpipe_lake::Lake;

/// A lake opened for SQL.
pub struct LakeQuery {
    ctx: SessionContext,
    tables: Vec<String>,
}

/// How result rows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Csv,
    Json,
}

impl std::str::FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "table" => Ok(Output::Table),
            "csv" => Ok(Output::Csv),
            "json" | "jsonl" => Ok(Output::Json),
            other => Err(format!("output must be table, csv or json, not {other:?}")),
        }
    }
}

/// Widens two column types the way the lake sink does.
fn widen(a: &DataType, b: &DataType) -> DataType {
    match (a, b) {
        (a, b) if a == b => a.clone(),
        (DataType::Int64, DataType::Float64) | (DataType::Float64, DataType::Int64) => {
            DataType::Float64
        }
        _ => DataType::Utf8,
    }
}

/// One schema for all of a table's files: columns in first-seen order, types widened.
fn merge(schemas: impl IntoIterator<Item = SchemaRef>) -> Schema {
    let mut fields: Vec<Field> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for schema in schemas {
        for field in schema.fields() {
            match index.get(field.name()) {
                Some(&i) => {
                    let widened = widen(fields[i].data_type(), field.data_type());
                    fields[i] = Field::new(field.name(), widened, true);
                }
                None => {
                    index.insert(field.name().clone(), fields.len());
                    fields.push(Field::new(field.name(), field.data_type().clone(), true));
                }
            }
        }
    }
    Schema::new(fields)
}

impl LakeQuery {
    /// Registers one table per topic found in the lake.
    pub async fn open(lake: &Lake) -> Result<LakeQuery> {
        let ctx = SessionContext::new();
        // DataFusion reads local files itself; an S3 bucket needs the lake's store.
        if let Some(bucket_url) = lake.store_url() {
            ctx.register_object_store(&url_of(&bucket_url)?, lake.store().0);
        }
        let mut by_topic: BTreeMap<String, Vec<(String, u64, bool)>> = BTreeMap::new();
        for (name, size) in lake.list(None).await? {
            by_topic.entry(name.topic.clone()).or_default().push((
                name.relative(),
                size,
                name.dt.is_some(),
            ));
        }
        let mut tables = Vec::new();
        for (topic, files) in by_topic {
            let dated = files.iter().all(|f| f.2);
            let schemas: Vec<SchemaRef> = futures_util::stream::iter(
                files
                    .iter()
                    .map(|(path, size, _)| lake.file_schema(path, *size)),
            )
            .buffered(16)
            .try_collect()
            .await?;
            let schema = Arc::new(merge(schemas));
            let mut options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet");
            if dated {
                options =
                    options.with_table_partition_cols(vec![("dt".to_string(), DataType::Utf8)]);
            }
            let table_url = ListingTableUrl::parse(lake.table_url(&topic))?;
            let config = ListingTableConfig::new(table_url)
                .with_listing_options(options)
                .with_schema(schema);
            let table = ListingTable::try_new(config)?;
            ctx.register_table(
                datafusion::common::TableReference::bare(topic.as_str()),
                Arc::new(table),
            )?;
            tables.push(topic);
        }
        Ok(LakeQuery { ctx, tables })
    }

    /// The topics that became tables.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// Runs one SQL statement and collects its result.
    pub async fn sql(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let frame = self
            .ctx
            .sql(sql)
            .await
            .map_err(|e| anyhow!("{}", first_line(&e.to_string())))?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame
            .collect()
            .await
            .map_err(|e| anyhow!("{}", first_line(&e.to_string())))?;
        Ok((schema, batches))
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn url_of(s: &str) -> Result<url::Url> {
    url::Url::parse(s).map_err(|e| anyhow!("bad store URL {s}: {e}"))
}

/// Writes a result in the chosen format.
pub fn render(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    output: Output,
    out: &mut impl std::io::Write,
) -> Result<()> {
    match output {
        Output::Table => {
            let table = if batches.iter().all(|b| b.num_rows() == 0) {
                datafusion::arrow::util::pretty::pretty_format_batches(&[RecordBatch::new_empty(
                    schema.clone(),
                )])?
            } else {
                datafusion::arrow::util::pretty::pretty_format_batches(batches)?
            };
            writeln!(out, "{table}")?;
        }
        Output::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            if batches.is_empty() {
                writer.write(&RecordBatch::new_empty(schema.clone()))?;
            }
            for batch in batches {
                writer.write(batch)?;
            }
        }
        Output::Json => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_widen_like_the_sink() {
        let a = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Int64, true),
            Field::new("y", DataType::Utf8, true),
        ]));
        let b = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Float64, true),
            Field::new("z", DataType::Boolean, true),
        ]));
        let c = Arc::new(Schema::new(vec![Field::new("z", DataType::Int64, true)]));
        let merged = merge([a, b, c]);
        let types: Vec<(String, DataType)> = merged
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        assert_eq!(
            types,
            vec![
                ("x".into(), DataType::Float64),
                ("y".into(), DataType::Utf8),
                ("z".into(), DataType::Utf8)
            ]
        );
    }
}
