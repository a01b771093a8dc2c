//! Pull-query load generator for `bench/server.sh`: N clients, each on its own
//! HTTP/1.1 keep-alive connection, send key lookups to a table (or GET
//! /healthcheck, the server's overhead without a query) for a fixed time, then
//! one line of figures is printed.
//!
//! Usage: pull_load URL TABLE KEY_COLUMN [--clients N] [--seconds S] [--healthcheck]
//!
//! The keys looked up are the table's own, read first with a scan, so every
//! lookup finds a row.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

struct Load {
    url: String,
    table: String,
    key_column: String,
    clients: usize,
    duration: Duration,
    healthcheck: bool,
}

fn parse_args() -> Result<Load> {
    let mut positional = Vec::new();
    let (mut clients, mut seconds, mut healthcheck) = (100, 10.0, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--clients" => clients = args.next().context("--clients N")?.parse()?,
            "--seconds" => seconds = args.next().context("--seconds S")?.parse()?,
            "--healthcheck" => healthcheck = true,
            _ => positional.push(arg),
        }
    }
    let [url, table, key_column] = <[String; 3]>::try_from(positional).map_err(|_| {
        anyhow::anyhow!(
            "usage: pull_load URL TABLE KEY_COLUMN [--clients N] [--seconds S] [--healthcheck]"
        )
    })?;
    Ok(Load {
        url,
        table,
        key_column,
        clients,
        duration: Duration::from_secs_f64(seconds),
        healthcheck,
    })
}

/// What one client saw: each answered request's latency, and its failures.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
}

fn main() -> Result<()> {
    let load = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(load))
}

async fn run(load: Load) -> Result<()> {
    let keys = table_keys(&load).await?;
    if keys.is_empty() {
        bail!("{} has no rows to look up", load.table);
    }
    let deadline = Instant::now() + load.duration;
    let started = Instant::now();
    let mut clients = Vec::new();
    for seed in 0..load.clients {
        let requests: Vec<String> = keys
            .iter()
            .map(|key| {
                json!({"ksql": format!("SELECT * FROM {} WHERE {}='{key}';", load.table, load.key_column)})
                    .to_string()
            })
            .collect();
        let url = load.url.clone();
        let healthcheck = load.healthcheck;
        clients.push(tokio::spawn(async move {
            client(&url, healthcheck, &requests, seed as u64, deadline).await
        }));
    }
    let mut total = Tally::default();
    for c in clients {
        let tally = c.await?;
        total.latencies_us.extend(tally.latencies_us);
        total.errors += tally.errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let latencies = &mut total.latencies_us;
    latencies.sort_unstable();
    let quantile = |q: f64| {
        let at = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len().max(1));
        latencies.get(at - 1).map_or(0.0, |us| *us as f64 / 1000.0)
    };
    println!(
        "requests={} rps={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} errors={}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        quantile(0.50),
        quantile(0.99),
        quantile(1.0),
        total.errors
    );
    Ok(())
}

/// The table's keys, from one scan of it.
async fn table_keys(load: &Load) -> Result<Vec<String>> {
    let body = json!({
        "ksql": format!("SELECT {} FROM {};", load.key_column, load.table),
        "streamsProperties": {"ksql.query.pull.table.scan.enabled": true},
    });
    let body = reqwest::Client::new()
        .post(format!("{}/query", load.url))
        .body(body.to_string())
        .send()
        .await?
        .bytes()
        .await?;
    let answer: Value = serde_json::from_slice(&body).context("the scan's answer")?;
    Ok(answer
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["row"]["columns"][0].as_str().map(String::from))
        .collect())
}

/// One client: a connection of its own, one request at a time until the deadline.
async fn client(
    url: &str,
    healthcheck: bool,
    requests: &[String],
    seed: u64,
    deadline: Instant,
) -> Tally {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .expect("an HTTP client");
    // xorshift64: a key per request, different per client, no dependency.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let request = if healthcheck {
            http.get(format!("{url}/healthcheck"))
        } else {
            let body = &requests[(state % requests.len() as u64) as usize];
            http.post(format!("{url}/query")).body(body.clone())
        };
        let sent = Instant::now();
        let answered = match request.send().await {
            Ok(response) if response.status().is_success() => response
                .bytes()
                .await
                .is_ok_and(|body| healthcheck || body.windows(6).any(|w| w == b"\"row\":")),
            _ => false,
        };
        if answered {
            tally.latencies_us.push(sent.elapsed().as_micros() as u64);
        } else {
            tally.errors += 1;
        }
    }
    tally
}
