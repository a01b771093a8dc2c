//! `kpipe gen`: synthetic events shaped like the seeds' data, into Kafka or stdout.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use clap::Args;
use kpipe_gen::{generator, parse_weights, Event, Kind, Options};
use kpipe_kafka::admin::{Admin, IfExists, TopicSpec};
use kpipe_kafka::produce::Producer;

use super::{block_on, progress, stop_flag, KafkaArgs};

/// Generate synthetic events like the seeds' Python generators.
///
/// Kinds: music (seed 01/02 clickstream), users, sales, warehouse, retail (sales
/// 70% + warehouse 30%), covid-new, covid-cumulative (seed 04), payments (seed 03).
/// Missing topics are created with 3 partitions. The same --seed and --start-ms
/// give the same events, byte for byte.
///
/// Examples:
///   kpipe gen music --count 100000
///   kpipe gen payments --topic payments --rate 5          # until Ctrl-C
///   kpipe gen music --weights track_like=30,track_unlike=1 --count 1000
///   kpipe gen retail --topic shop_sales,shop_stock --count 5000
///   kpipe gen music --count 10 --print                     # key<TAB>JSON to stdout
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct GenArgs {
    /// What to generate.
    #[arg(value_parser = |s: &str| s.parse::<Kind>())]
    kind: Kind,
    /// Topic (retail: two, comma-separated: sales,warehouse) [default: the kind's seed topic names]
    #[arg(short, long)]
    topic: Option<String>,
    /// How many events [default: 10000, or unlimited with --rate]
    #[arg(short = 'n', long)]
    count: Option<u64>,
    /// Events per second (paced in real time); unlimited when absent.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Timestamp of the first event, ms since the epoch [default: now]
    #[arg(long)]
    start_ms: Option<i64>,
    /// music: event-type weights by name or id, e.g. track_playback=50,7=10
    #[arg(long)]
    weights: Option<String>,
    /// music and users: size of the fixed pool of generated users.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Write `key<TAB>json` lines to stdout instead of producing to Kafka.
    #[arg(long)]
    print: bool,
}

pub fn run(args: GenArgs, kafka: &KafkaArgs) -> Result<()> {
    let mut options = Options {
        seed: args.seed,
        users: args.users,
        ..Options::default()
    };
    if let Some(spec) = &args.weights {
        if args.kind != Kind::Music {
            bail!("--weights applies to music events only");
        }
        options.music_weights = parse_weights(spec).map_err(anyhow::Error::msg)?;
    }
    if args.users == 0 {
        bail!("--users must be at least 1");
    }
    if args.start_ms.is_some_and(|ms| ms < 1) && !args.print {
        bail!("--start-ms must be at least 1: Kafka clients read a timestamp of 0 as \"now\"");
    }
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            bail!("--rate must be a positive number of events per second");
        }
    }
    let mut events = generator(args.kind, &options);
    let routes: Vec<String> = match &args.topic {
        Some(list) => list.split(',').map(|t| t.trim().to_string()).collect(),
        None => events.routes().iter().map(|r| r.to_string()).collect(),
    };
    if routes.len() != events.routes().len() || routes.iter().any(String::is_empty) {
        bail!(
            "{} writes {} topic(s); --topic needs {} comma-separated name(s)",
            args.kind.name(),
            events.routes().len(),
            events.routes().len()
        );
    }
    let count = args.count.or(if args.rate.is_some() {
        None
    } else {
        Some(10_000)
    });
    let start_ms = args.start_ms.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    });
    // Timestamps advance with the rate's spacing, or 1 ms apart when unpaced.
    let step_ms = args.rate.map_or(1.0, |r| 1000.0 / r);
    let stop = stop_flag();
    let bar = progress(count, "events");
    let started = Instant::now();
    let mut sink = if args.print {
        Sink::Print(std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout().lock(),
        ))
    } else {
        let kafka = kafka.options();
        let admin = Admin::connect(&kafka)?;
        for topic in &routes {
            let spec = TopicSpec {
                name: topic.clone(),
                partitions: 3,
                replication: 1,
                configs: Default::default(),
            };
            block_on(admin.create(&spec, IfExists::Keep))??;
        }
        Sink::Kafka(Producer::connect(&kafka)?)
    };
    let mut event = Event::default();
    let mut produced = 0u64;
    while count.is_none_or(|n| produced < n) && !stop.load(Ordering::Relaxed) {
        if let Some(rate) = args.rate {
            let due = started + Duration::from_secs_f64(produced as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        events.next_into(start_ms + (produced as f64 * step_ms) as i64, &mut event);
        sink.send(&routes[event.route], &event)?;
        produced += 1;
        if produced.is_multiple_of(4096) {
            bar.set_position(produced);
        }
    }
    bar.finish_and_clear();
    let delivered = sink.finish()?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "{} {produced} {} events to {} in {secs:.2} s ({:.0} events/s){}",
        if args.print { "printed" } else { "produced" },
        args.kind.name(),
        routes.join(", "),
        produced as f64 / secs,
        delivered.map_or(String::new(), |d| format!(", {d} acknowledged"))
    );
    Ok(())
}

enum Sink<W: Write> {
    Kafka(Producer),
    Print(W),
}

impl<W: Write> Sink<W> {
    fn send(&mut self, topic: &str, event: &Event) -> Result<()> {
        match self {
            Sink::Kafka(producer) => producer.send_at(
                topic,
                None,
                Some(event.key.as_bytes()),
                Some(&event.value),
                None,
                Some(event.timestamp_ms),
            ),
            Sink::Print(out) => {
                let written = out
                    .write_all(event.key.as_bytes())
                    .and_then(|_| out.write_all(b"\t"))
                    .and_then(|_| out.write_all(&event.value))
                    .and_then(|_| out.write_all(b"\n"));
                written.map_err(|e| anyhow::anyhow!("cannot write to stdout: {e}"))
            }
        }
    }

    /// Flushes; for Kafka, waits for acknowledgements and returns how many.
    fn finish(self) -> Result<Option<u64>> {
        match self {
            Sink::Kafka(producer) => Ok(Some(producer.finish(Duration::from_secs(60))?.delivered)),
            Sink::Print(mut out) => {
                out.flush()
                    .map_err(|e| anyhow::anyhow!("cannot write to stdout: {e}"))?;
                Ok(None)
            }
        }
    }
}
