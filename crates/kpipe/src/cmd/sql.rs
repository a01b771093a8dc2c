//! `kpipe sql`: streaming SQL in ksqlDB's dialect (today: `kpipe sql test`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

/// Streaming SQL in ksqlDB's dialect.
#[derive(Args)]
pub struct SqlArgs {
    #[command(subcommand)]
    command: SqlCommand,
}

#[derive(Subcommand)]
enum SqlCommand {
    Test(TestArgs),
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

pub fn run(args: SqlArgs) -> Result<()> {
    let SqlCommand::Test(args) = args.command;
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in &args.files {
        let label = file.file_name().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        for outcome in kpipe_sql::qtt::run_file(file)? {
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
