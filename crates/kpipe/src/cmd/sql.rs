//! `kpipe sql`: streaming SQL in ksqlDB's dialect, live against Kafka
//! (`-e` / `--file`), as a shell on a kpipe server, or over ksqlDB's own
//! test files (`kpipe sql test`).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use kpipe_sql::catalog::display;
use kpipe_sql::live::{Counts, Output, Session, Settings};
use kpipe_sql::parser::{ColumnDef, SqlType};
use kpipe_sql::qtt::Outcome;
use kpipe_sql::resttest::{InProcess, NewApi};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::shell::{self, Embedded};
use super::{stop_flag, table, KafkaArgs};

mod test_rest;

/// Streaming SQL in ksqlDB's dialect, against Kafka.
///
/// Statements run in order; the first error stops the script (exit 1).
/// CREATE STREAM/TABLE creates a missing topic when PARTITIONS is given.
/// CREATE ... AS SELECT and INSERT INTO start persistent queries that read
/// their source and write their sink topic until Ctrl-C (or, with --until-end,
/// until they catch up). SELECT ... EMIT CHANGES / EMIT FINAL is a push query:
/// rows stream to stdout until LIMIT or Ctrl-C. SELECT without EMIT is a pull
/// query: it reads the topic as it is now and prints a table (a table shows
/// each key's latest row, per window for windowed ones; as in ksqlDB, only a
/// CREATE SOURCE TABLE or a query's table can be pulled). Queries start at
/// `auto.offset.reset` (latest, as in ksqlDB; `SET 'auto.offset.reset' =
/// 'earliest';` to replay).
/// Also: SHOW STREAMS|TABLES|TOPICS|QUERIES|PROPERTIES, DESCRIBE, DROP,
/// TERMINATE, SET, UNSET.
///
/// With neither -e nor --file, a shell like the ksql CLI, a client of a
/// `kpipe server` (--server URL or KPIPE_SERVER), or of one it starts
/// in-process on 127.0.0.1 when none is given (over -b's Kafka; its
/// sources and queries kept with --state, else gone when the shell leaves).
/// Statements end with ';' (lines accumulate until then); history is in
/// ~/.kpipe_sql_history. Listings print as tables, pull queries as a
/// table, push queries a row per line as rows arrive, until their LIMIT
/// or Ctrl-C, which stops that query and not the shell. SET and UNSET
/// last for the shell, sent with each statement. Persistent queries run
/// on the server; Ctrl-D leaves (and stops an in-process server).
///
/// Examples (seed 03):
///   kpipe gen payments --rate 50 &
///   kpipe sql -e "CREATE STREAM payments (name VARCHAR, amount INTEGER)
///       WITH (KAFKA_TOPIC='payments', VALUE_FORMAT='json', PARTITIONS=3);
///     SELECT * FROM payments WHERE amount > 900;"
///   kpipe sql -e "CREATE STREAM payments (name VARCHAR, amount INTEGER)
///       WITH (KAFKA_TOPIC='payments', VALUE_FORMAT='json');
///     SELECT FROM_UNIXTIME(WINDOWSTART) AS ws, name, COUNT(*) AS cnt
///       FROM payments WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY name EMIT FINAL;"
///   kpipe sql --file pipeline.sql --until-end
///   kpipe sql                                  # shell, server in-process
///   kpipe sql --server http://127.0.0.1:8088   # shell on `kpipe server`
///   kpipe sql test ../shared/ksql-qtt/query-validation-tests/*.json
///   kpipe sql test-rest ../shared/ksql-qtt/rest-query-validation-tests/*.json
#[derive(Args)]
#[command(verbatim_doc_comment, args_conflicts_with_subcommands = true)]
pub struct SqlArgs {
    #[command(subcommand)]
    command: Option<SqlCommand>,
    /// Statements to run, `;`-separated.
    #[arg(short = 'e', long = "execute", conflicts_with = "file")]
    execute: Option<String>,
    /// A file of statements to run.
    #[arg(short, long)]
    file: Option<PathBuf>,
    /// Persistent and push queries stop once they have read what their source
    /// held at their start.
    #[arg(long)]
    until_end: bool,
    /// Records that cannot be read go to this topic, with the reason in a header.
    #[arg(long)]
    dlq_topic: Option<String>,
    /// Rows as tables, or as JSON lines (one object per row; messages go to stderr).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// A kpipe server (its REST API) for the shell, or for -e / --file
    /// (then --until-end and --dlq-topic do not apply); none: the shell
    /// starts one in-process, and -e / --file run here.
    #[arg(
        long,
        env = "KPIPE_SERVER",
        value_name = "URL",
        conflicts_with = "state"
    )]
    server: Option<String>,
    /// Run the in-process server as the cluster's default service, with this
    /// directory of its own: its sources and queries stay in the service's
    /// command topic, run again by the next shell or `kpipe server` of that
    /// service. Without it they last for this shell only.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["execute", "file"])]
    state: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum SqlCommand {
    Test(TestArgs),
    TestRest(TestRestArgs),
}

/// Run ksqlDB query-validation test files in-process, without a broker.
///
/// Each test's statements run on a fresh engine, its input records are fed in
/// order, and every sink topic must receive exactly the expected records; a test
/// with a `format` list runs once per format. Failing tests are printed with
/// their first difference; the last line is "N passed, M failed" (exit 1 when M > 0).
///
/// Example:
///   kpipe sql test ../shared/ksql-qtt/query-validation-tests/*.json
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct TestArgs {
    /// QTT files (JSON).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// Run ksqlDB's REST query-validation test files against `kpipe server` over HTTP.
///
/// Each test run gets a broker and a server of its own, in this process on
/// 127.0.0.1. Its statements before its first SELECT go in one POST /ksql,
/// its inputs are produced as a Java producer would (murmur2 of the key onto
/// 4 partitions, or the test's `topics[].partitions`), the runner waits until
/// every persistent query's consumer group has committed its source's end
/// offsets, and each SELECT goes alone to POST /query; the answers must match
/// the test's `responses` or its `expectedError`. Failing tests are printed
/// with their first difference; the last line is "N passed, M failed" (exit 1
/// when M > 0).
///
/// Example:
///   kpipe sql test-rest ../shared/ksql-qtt/rest-query-validation-tests/*.json
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct TestRestArgs {
    /// REST test files (JSON).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Test runs at once, each with its own broker and server.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Answer from an engine in this process instead (no broker, no HTTP):
    /// quicker, for working on the engine.
    #[arg(long)]
    in_process: bool,
}

pub fn run(args: SqlArgs, kafka: &KafkaArgs) -> Result<()> {
    match args.command {
        Some(SqlCommand::Test(test)) => return run_tests(&test.files, kpipe_sql::qtt::run_file),
        Some(SqlCommand::TestRest(test)) => {
            let api: &NewApi = if test.in_process {
                &|| Ok(Box::<InProcess>::default())
            } else {
                &|| Ok(Box::new(test_rest::OverHttp::start()?))
            };
            return run_tests(&test.files, |file| {
                kpipe_sql::resttest::run_file(file, test.threads, api)
            });
        }
        None => {}
    }
    let script = match (&args.execute, &args.file) {
        (Some(sql), _) => Some(sql.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        (None, None) => None,
    };
    let mut out = Printer::new(args.output);
    let Some(script) = script else {
        return run_shell(args.server, args.state, kafka, &mut out);
    };
    if let Some(url) = &args.server {
        return shell::run_script(url, &script, &mut out);
    }
    let settings = Settings {
        until_end: args.until_end,
        dead_letters: args.dlq_topic.clone(),
        ..Settings::default()
    };
    let stop = stop_flag();
    let mut session = Session::connect(kafka.options(), settings, stop)?;
    let ran = session.run(&script, &mut out);
    if ran.is_ok() && session.persistent_queries() > 0 && !args.until_end {
        eprintln!(
            "{} persistent quer{} running; Ctrl-C stops them.",
            session.persistent_queries(),
            if session.persistent_queries() == 1 {
                "y"
            } else {
                "ies"
            }
        );
    }
    // Running queries are stopped and drained even when a later statement failed.
    let finished = session.finish();
    ran?;
    report(finished?);
    Ok(())
}

/// The interactive shell, on `server` or on one started in-process over
/// `kafka` (stopped, with its queries, when the shell leaves).
fn run_shell(
    server: Option<String>,
    state: Option<PathBuf>,
    kafka: &KafkaArgs,
    out: &mut Printer,
) -> Result<()> {
    if let Some(url) = server {
        return shell::run(&url, None, out);
    }
    let options = kafka.options();
    let about = format!("in-process, Kafka at {}", options.bootstrap);
    let embedded = Embedded::start(options, state)?;
    let ran = shell::run(&embedded.url, Some(about), out);
    let stopped = embedded.stop();
    ran.and(stopped)
}

/// What each persistent query did, on stderr.
fn report(finished: Vec<(String, Counts)>) {
    for (id, counts) in finished {
        eprintln!(
            "{id}: read {} records, wrote {}, skipped {}",
            counts.read, counts.written, counts.skipped
        );
    }
}

/// Prints a session's results: one-line messages, tables for finished
/// listings, and push-query rows as they come.
struct Printer {
    format: Format,
    columns: Vec<ColumnDef>,
    widths: Vec<usize>,
    streaming: bool,
    buffered: Vec<Vec<String>>,
    stdout: std::io::Stdout,
}

impl Printer {
    fn new(format: Format) -> Printer {
        Printer {
            format,
            columns: Vec::new(),
            widths: Vec::new(),
            streaming: false,
            buffered: Vec::new(),
            stdout: std::io::stdout(),
        }
    }

    fn line(&mut self, text: &str) {
        let mut out = self.stdout.lock();
        // A closed stdout (`| head`) ends output, not the query's bookkeeping.
        let _ = writeln!(out, "{text}").and_then(|()| out.flush());
    }

    fn border(&self) -> String {
        let cells: Vec<String> = self.widths.iter().map(|w| "-".repeat(*w)).collect();
        format!("+{}+", cells.join("+"))
    }

    fn cells(&self, values: &[String]) -> String {
        let cells: Vec<String> = values
            .iter()
            .zip(&self.widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        format!("|{}|", cells.join("|"))
    }
}

impl Output for Printer {
    fn message(&mut self, text: &str) {
        match self.format {
            Format::Table => self.line(text),
            Format::Json => eprintln!("{text}"),
        }
    }

    fn columns(&mut self, columns: &[ColumnDef], streaming: bool) {
        self.columns = columns.to_vec();
        self.streaming = streaming;
        self.buffered.clear();
        if self.format == Format::Table && streaming {
            // Push rows print as they come, so the widths are fixed up front.
            self.widths = columns
                .iter()
                .map(|c| {
                    let widest = if c.ty == SqlType::Timestamp { 23 } else { 12 };
                    c.name.len().max(widest) + 1
                })
                .collect();
            let header: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
            let text = [self.border(), self.cells(&header), self.border()].join("\n");
            self.line(&text);
        }
    }

    fn row(&mut self, values: &[Value]) {
        match self.format {
            Format::Json => {
                let object: Map<String, Value> = self
                    .columns
                    .iter()
                    .zip(values)
                    .map(|(c, v)| (c.name.clone(), v.clone()))
                    .collect();
                self.line(&Value::Object(object).to_string());
            }
            Format::Table => {
                let cells: Vec<String> = self
                    .columns
                    .iter()
                    .zip(values)
                    .map(|(c, v)| display(v, &c.ty))
                    .collect();
                if self.streaming {
                    let text = self.cells(&cells);
                    self.line(&text);
                } else {
                    self.buffered.push(cells);
                }
            }
        }
    }

    fn end(&mut self) {
        if self.format == Format::Json {
            return;
        }
        if self.streaming {
            let border = self.border();
            self.line(&border);
            return;
        }
        let header: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        let rows = std::mem::take(&mut self.buffered);
        let count = rows.len();
        let text = table(&header, rows).to_string();
        self.line(&text);
        self.line(&format!(
            "({count} row{})",
            if count == 1 { "" } else { "s" }
        ));
    }
}

/// Runs test files with `run`, printing each failure and then the counts.
fn run_tests(files: &[PathBuf], run: impl Fn(&Path) -> Result<Vec<Outcome>>) -> Result<()> {
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in files {
        let label = file.file_name().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        for outcome in run(file)? {
            match outcome.failure {
                None => passed += 1,
                Some(difference) => {
                    failed += 1;
                    println!("FAIL {label}: {}: {difference}", outcome.name);
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} of {} tests failed", passed + failed);
    }
    Ok(())
}
