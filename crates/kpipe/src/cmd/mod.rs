//! One module per command: argument definitions and the call into a library crate.
//! Pieces every client command shares (connection flags, tables, progress,
//! Ctrl-C) live here.

pub mod broker;
pub mod ch;
pub mod consume;
pub mod demo;
pub mod gen;
pub mod group;
pub mod lake;
pub mod produce;
pub mod query;
pub mod server;
pub mod shell;
pub mod sink;
pub mod sql;
pub mod topic;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kpipe_kafka::client::{parse_override, ClientOptions};

pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9092";

/// Where the Kafka cluster is, for every client command.
#[derive(Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Bootstrap servers, HOST:PORT[,HOST:PORT...] [default: 127.0.0.1:9092]
    #[arg(
        short = 'b',
        long = "bootstrap",
        env = "KPIPE_BOOTSTRAP",
        global = true
    )]
    pub bootstrap: Option<String>,
    /// A librdkafka setting, repeatable, as kcat's -X: `-X security.protocol=SASL_SSL
    /// -X sasl.mechanism=SCRAM-SHA-512 -X sasl.username=me`. Put secrets in the
    /// environment instead: KPIPE_KAFKA_SASL_PASSWORD=... becomes sasl.password.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_override, global = true)]
    pub settings: Vec<(String, String)>,
}

impl KafkaArgs {
    pub fn options(&self) -> ClientOptions {
        self.options_or(None)
    }

    /// Options with `fallback` as the bootstrap when neither -b nor KPIPE_BOOTSTRAP is set.
    pub fn options_or(&self, fallback: Option<&str>) -> ClientOptions {
        let bootstrap = self
            .bootstrap
            .as_deref()
            .or(fallback)
            .unwrap_or(DEFAULT_BOOTSTRAP);
        let mut options = ClientOptions::new(bootstrap);
        options.overrides = self.settings.clone();
        options.with_env()
    }
}

pub fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> Table {
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    for row in rows {
        table.add_row(row);
    }
    table
}

/// A progress bar on stderr when it is a terminal; nothing in a pipe.
pub fn progress(total: Option<u64>, unit: &str) -> ProgressBar {
    let bar = match total {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(&format!(
                "{{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, {{eta}} left)"
            ))
            .expect("valid template"),
        ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template(&format!("{{spinner}} {{pos}} {unit} ({{per_sec}})"))
                .expect("valid template"),
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(5));
    bar
}

/// A flag raised by Ctrl-C or SIGTERM so long commands can finish cleanly; a
/// second Ctrl-C exits at once.
pub fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let term = async {
                match terminate.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term => {}
            }
            flag.store(true, Ordering::Relaxed);
            let _ = tokio::signal::ctrl_c().await;
            std::process::exit(130);
        });
    });
    stop
}

/// Raises `flag` on every Ctrl-C, for a shell: Ctrl-C stops what runs, not
/// the shell. Returns once the handler is in place, because the line editor
/// saves the SIGINT handler it finds and puts it back after every line.
pub fn interrupt_flag(flag: Arc<AtomicBool>) {
    let (ready, registered) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            let _ = ready.send(());
            return;
        };
        runtime.block_on(async {
            let interrupts =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
            let _ = ready.send(());
            let Ok(mut interrupts) = interrupts else {
                return;
            };
            while interrupts.recv().await.is_some() {
                flag.store(true, Ordering::Relaxed);
            }
        });
    });
    let _ = registered.recv();
}

/// A line editor with history in `~/.{history}` that hands `run` one
/// `;`-terminated statement at a time (lines accumulate until one ends with
/// `;`) until Ctrl-D; Ctrl-C at the prompt drops the statement being typed.
pub fn statement_shell(
    history: &str,
    prompt: &str,
    mut run: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(history));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    let continuation = format!("{:>width$}", "...> ", width = prompt.len());
    let mut statement = String::new();
    loop {
        let shown = if statement.is_empty() {
            prompt
        } else {
            &continuation
        };
        match editor.readline(shown) {
            Ok(line) => {
                statement.push_str(&line);
                statement.push('\n');
                if !line.trim_end().ends_with(';') {
                    continue;
                }
                let sql = std::mem::take(&mut statement);
                let _ = editor.add_history_entry(sql.trim());
                if let Err(e) = run(sql.trim()) {
                    eprintln!("error: {e:#}");
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => statement.clear(),
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(())
}

/// Runs an async library call from a synchronous command.
pub fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future))
}
