//! `kpipe query`: SQL over the lake, one statement or an interactive shell.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use kpipe_lake::Lake;
use kpipe_query::{render, LakeQuery, Output};

/// SQL over the lake (DataFusion). Each topic is a table; `dt` is a column.
///
/// Quote dotted column names. Seed 02's analysis:
///   kpipe query --lake ./lake "SELECT count(*) FROM music_events"
///   kpipe query --lake ./lake "DESCRIBE music_events"
///   kpipe query --lake ./lake "SELECT * FROM music_events LIMIT 10"
///   kpipe query --lake ./lake "SELECT * FROM music_events WHERE \"event_param.event_type_id\" = 1 LIMIT 10"
///   kpipe query --lake ./lake --format csv "SELECT \"event_param.event_type\" AS event_type, count(*) AS events
///     FROM music_events GROUP BY 1 ORDER BY 2 DESC"
/// Without SQL, a shell with history: statements end with ';'.
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct QueryArgs {
    /// Lake URL: a directory, file:///dir or s3://bucket/prefix.
    #[arg(long, env = "KPIPE_LAKE", default_value = "./lake")]
    lake: String,
    /// table, csv or json (JSON lines).
    #[arg(long, default_value = "table", value_parser = |s: &str| s.parse::<Output>())]
    format: Output,
    /// The statement; without it, an interactive shell.
    sql: Option<String>,
}

pub fn run(args: QueryArgs) -> Result<()> {
    let lake = Lake::open(&args.lake)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let query = runtime.block_on(LakeQuery::open(&lake))?;
    match args.sql {
        Some(sql) => {
            let (schema, batches) = runtime.block_on(query.sql(&sql))?;
            let mut out = std::io::stdout().lock();
            render(&schema, &batches, args.format, &mut out)?;
            out.flush()?;
            Ok(())
        }
        None => shell(&runtime, &query, args.format),
    }
}

fn shell(runtime: &tokio::runtime::Runtime, query: &LakeQuery, format: Output) -> Result<()> {
    println!(
        "tables: {}. End statements with ';', Ctrl-D to leave.",
        query.tables().join(", ")
    );
    super::statement_shell(".kpipe_query_history", "kpipe> ", |sql| {
        let (schema, batches) = runtime.block_on(query.sql(sql.trim_end_matches(';')))?;
        render(&schema, &batches, format, &mut std::io::stdout().lock())
    })
}

/// Runs statements (the demo's analysis) and prints each under its title.
pub fn print_analysis(
    runtime: &tokio::runtime::Runtime,
    query: &LakeQuery,
    statements: &[(&str, &str)],
) -> Result<()> {
    for (title, sql) in statements {
        println!("\n-- {title}\n{sql}");
        let (schema, batches) = runtime.block_on(query.sql(sql))?;
        render(
            &schema,
            &batches,
            Output::Table,
            &mut std::io::stdout().lock(),
        )?;
    }
    Ok(())
}
