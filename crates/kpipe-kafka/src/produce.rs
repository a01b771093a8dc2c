//! Producing: a librdkafka producer that counts deliveries, used by
//! `kpipe produce` (stdin lines) and `kpipe gen` (generated events).

use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _, ProducerContext};

use crate::client::{ClientOptions, QuietContext};

/// Counts acknowledgements as librdkafka reports them. (Reporting only errors,
/// `delivery.report.only.error`, measured a third slower in bench/gen.sh.)
#[derive(Default)]
pub struct DeliveryCounter {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    quiet: QuietContext,
}

crate::quiet_client_context!(DeliveryCounter, quiet);

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

/// Counts after a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    pub sent: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// Delivery reports are served from the sending thread, as kcat does: a
/// background polling thread costs more in lock contention than it saves.
pub struct Producer {
    inner: BaseProducer<DeliveryCounter>,
    sent: u64,
}

/// Sends between two polls for delivery reports.
const POLL_EVERY: u64 = 1000;

impl Producer {
    /// A producer tuned for throughput (user `-X` settings still win).
    pub fn connect(options: &ClientOptions) -> Result<Producer> {
        let probe = options.metadata_client()?;
        options.metadata(&probe, None)?;
        let config = options.config_with_defaults(&[
            ("linger.ms", "5"),
            ("batch.num.messages", "10000"),
            ("queue.buffering.max.messages", "500000"),
            ("queue.buffering.max.kbytes", "1048576"),
        ]);
        let inner = config
            .create_with_context(DeliveryCounter::default())
            .map_err(|e| options.config_error(e))?;
        Ok(Producer { inner, sent: 0 })
    }

    /// Queues one message, waiting while librdkafka's queue is full.
    pub fn send(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: Option<&OwnedHeaders>,
    ) -> Result<()> {
        self.send_at(topic, None, key, Some(value), headers, None)
    }

    /// [`Producer::send`] with the message's own timestamp (ms) instead of the
    /// clock's, and its partition when the caller places it (else the
    /// partitioner does); a `None` value is a tombstone.
    pub fn send_at(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Option<&OwnedHeaders>,
        timestamp_ms: Option<i64>,
    ) -> Result<()> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(value) = value {
            record = record.payload(value);
        }
        if let Some(ts) = timestamp_ms {
            record = record.timestamp(ts);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(headers) = headers {
            record = record.headers(headers.clone());
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.inner.poll(Duration::from_millis(1));
                }
                Err((e, _)) => bail!("cannot produce to {topic}: {e}"),
            }
        }
        self.sent += 1;
        if self.sent.is_multiple_of(POLL_EVERY) {
            self.inner.poll(Duration::ZERO);
        }
        Ok(())
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Waits until everything sent so far is acknowledged; fails if anything was not.
    pub fn flush(&mut self, timeout: Duration) -> Result<()> {
        let flushed = self.inner.flush(timeout);
        let failed = self.inner.context().failed.load(Ordering::Relaxed);
        if failed > 0 {
            bail!("{failed} of {} messages were not delivered", self.sent);
        }
        flushed.map_err(|e| {
            anyhow!(
                "{} messages still unacknowledged after {timeout:?}: {e}",
                self.inner.in_flight_count()
            )
        })
    }

    /// Waits for every queued message to be acknowledged or to fail.
    pub fn finish(self, timeout: Duration) -> Result<Delivery> {
        let flushed = self.inner.flush(timeout);
        let context = self.inner.context();
        let failed = context.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = context
                .first_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_default();
            bail!(
                "{failed} of {} messages were not delivered (first error: {first})",
                self.sent
            );
        }
        if let Err(e) = flushed {
            let pending = self.inner.in_flight_count();
            bail!(
                "{pending} of {} messages still unacknowledged after {timeout:?}: {e}",
                self.sent
            );
        }
        Ok(Delivery {
            sent: self.sent,
            delivered: self.sent,
            failed: 0,
        })
    }
}

/// Headers from `-H key=value` pairs.
pub fn headers(pairs: &[(String, String)]) -> Option<OwnedHeaders> {
    (!pairs.is_empty()).then(|| {
        pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        })
    })
}

/// Looks up a dotted path (`event_param.user_id`) in a JSON document; strings
/// come back unquoted, other values as JSON text.
pub fn json_key(line: &[u8], path: &str) -> Option<Vec<u8>> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let found = path.split('.').try_fold(&value, |v, part| v.get(part))?;
    Some(match found {
        serde_json::Value::String(s) => s.clone().into_bytes(),
        serde_json::Value::Null => return None,
        other => other.to_string().into_bytes(),
    })
}

/// What `kpipe produce` did.
#[derive(Debug, Clone, Copy)]
pub struct LinesReport {
    pub delivery: Delivery,
    /// Lines sent without a key because `--key-field` was not found in them.
    pub unkeyed: u64,
    pub elapsed: Duration,
}

/// Sends one message per input line (empty lines are skipped, as kcat does).
pub fn produce_lines(
    mut producer: Producer,
    input: impl BufRead,
    topic: &str,
    key_field: Option<&str>,
    headers: Option<&OwnedHeaders>,
    mut progress: impl FnMut(u64),
) -> Result<LinesReport> {
    let started = Instant::now();
    let mut unkeyed = 0u64;
    for line in input.split(b'\n') {
        let mut line = line.map_err(|e| anyhow!("cannot read standard input: {e}"))?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            continue;
        }
        let key = match key_field {
            Some(path) => {
                let key = json_key(&line, path);
                unkeyed += key.is_none() as u64;
                key
            }
            None => None,
        };
        producer.send(topic, key.as_deref(), &line, headers)?;
        if producer.sent().is_multiple_of(1024) {
            progress(producer.sent());
        }
    }
    let delivery = producer.finish(Duration::from_secs(60))?;
    progress(delivery.sent);
    Ok(LinesReport {
        delivery,
        unkeyed,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_dotted_json_paths() {
        let line = br#"{"event_param":{"user_id":"u-1","event_type_id":7},"n":null}"#;
        assert_eq!(json_key(line, "event_param.user_id").unwrap(), b"u-1");
        assert_eq!(json_key(line, "event_param.event_type_id").unwrap(), b"7");
        assert_eq!(json_key(line, "event_param.missing"), None);
        assert_eq!(json_key(line, "n"), None);
        assert_eq!(json_key(b"not json", "a"), None);
    }
}
