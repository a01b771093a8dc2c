//! Connection options shared by every client command: bootstrap servers,
//! `-X key=value` passthrough to librdkafka (as kcat does), secrets from the
//! environment, and a reachability check that fails in seconds, not never.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;
use rdkafka::ClientContext;

/// Environment variables `KPIPE_KAFKA_SASL_PASSWORD=…` become `-X sasl.password=…`:
/// secrets stay out of the process list and shell history.
pub const ENV_PREFIX: &str = "KPIPE_KAFKA_";

/// How long a command waits for a broker to answer before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub bootstrap: String,
    /// librdkafka settings, applied after kpipe's own defaults so they win.
    pub overrides: Vec<(String, String)>,
}

/// Leaves the group and closes `consumer` before it is dropped. Dropping
/// does the same but polls in 100 ms steps, so every run ended up to 100 ms
/// late; this polls in small ones.
pub fn close_consumer<C: ConsumerContext>(consumer: &BaseConsumer<C>) {
    if consumer.close_queue().is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
    while !consumer.closed() && std::time::Instant::now() < deadline {
        consumer.poll(Duration::from_millis(2));
    }
}

/// Parses one `-X key=value`.
pub fn parse_override(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "expected key=value (a librdkafka setting), got {s:?}"
        )),
    }
}

/// Whether a setting's value must never be printed or logged.
pub fn is_secret(key: &str) -> bool {
    [
        "password",
        "secret",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
        "ssl_key",
    ]
    .iter()
    .any(|s| key.contains(s))
}

impl ClientOptions {
    pub fn new(bootstrap: impl Into<String>) -> Self {
        ClientOptions {
            bootstrap: bootstrap.into(),
            overrides: Vec::new(),
        }
    }

    /// Adds `KPIPE_KAFKA_*` variables from the environment (before explicit `-X`, which win).
    pub fn with_env(mut self) -> Self {
        let mut from_env: Vec<(String, String)> = std::env::vars()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix(ENV_PREFIX)?;
                Some((key.to_ascii_lowercase().replace('_', "."), v))
            })
            .collect();
        from_env.sort();
        from_env.append(&mut self.overrides);
        self.overrides = from_env;
        self
    }

    /// A librdkafka config with kpipe's defaults, then the user's settings.
    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("socket.connection.setup.timeout.ms", "5000")
            .set_log_level(RDKafkaLogLevel::Warning);
        for (key, value) in &self.overrides {
            config.set(key, value);
        }
        config
    }

    /// [`ClientOptions::config`] plus command-specific defaults the user did not set.
    pub fn config_with_defaults(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = self.config();
        for (key, value) in defaults {
            if config.get(key).is_none() {
                config.set(*key, *value);
            }
        }
        config
    }

    /// Settings as `key=value` for messages, with secrets masked.
    pub fn describe_overrides(&self) -> String {
        self.overrides
            .iter()
            .map(|(k, v)| {
                if is_secret(k) {
                    format!("{k}=***")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A plain consumer (no group) for metadata and watermark queries.
    pub fn metadata_client(&self) -> Result<BaseConsumer<QuietContext>> {
        self.config()
            .create_with_context(QuietContext::default())
            .map_err(|e| self.config_error(e))
    }

    /// A consumer that reads the partitions it assigns itself, to their end
    /// (it reports partition EOF) and without committing; `group` only names
    /// it to the broker. `extra` defaults come on top.
    pub fn partition_reader(
        &self,
        group: &str,
        extra: &[(&str, &str)],
    ) -> Result<BaseConsumer<QuietContext>> {
        let mut defaults = vec![
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
        ];
        defaults.extend_from_slice(extra);
        self.config_with_defaults(&defaults)
            .create_with_context(QuietContext::default())
            .map_err(|e| self.config_error(e))
    }

    /// Turns a librdkafka configuration error into one sentence.
    pub fn config_error(&self, e: KafkaError) -> anyhow::Error {
        anyhow!(
            "invalid Kafka client settings ({}): {e}",
            self.describe_overrides()
        )
    }

    /// Cluster metadata, or a clear error when no broker answers in time.
    pub fn metadata(
        &self,
        client: &BaseConsumer<QuietContext>,
        topic: Option<&str>,
    ) -> Result<Metadata> {
        client
            .fetch_metadata(topic, CONNECT_TIMEOUT)
            .map_err(|e| self.unreachable(client.context(), e))
    }

    fn unreachable(&self, context: &QuietContext, e: KafkaError) -> anyhow::Error {
        let detail = context.last_error().unwrap_or_else(|| e.to_string());
        anyhow!(
            "cannot reach Kafka at {} within {} s ({detail}); is a broker running there? `kpipe broker` starts one",
            self.bootstrap,
            CONNECT_TIMEOUT.as_secs()
        )
    }

    /// Fails with "topic X does not exist" unless the topic is there; returns its partition count.
    pub fn require_topic(&self, client: &BaseConsumer<QuietContext>, topic: &str) -> Result<usize> {
        let metadata = self.metadata(client, Some(topic))?;
        match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().len())
            }
            _ => bail!("topic {topic} does not exist on {}", self.bootstrap),
        }
    }

    /// Messages a topic holds now (end minus start offsets), or None when it does not exist.
    pub fn topic_messages(
        &self,
        client: &BaseConsumer<QuietContext>,
        topic: &str,
    ) -> Result<Option<u64>> {
        let Ok(partitions) = self.require_topic(client, topic) else {
            return Ok(None);
        };
        let mut total = 0u64;
        for p in 0..partitions as i32 {
            let (low, high) = client.fetch_watermarks(topic, p, CONNECT_TIMEOUT)?;
            total += (high - low).max(0) as u64;
        }
        Ok(Some(total))
    }
}

/// A client context that keeps librdkafka's errors for our messages instead of
/// printing them: a user sees one sentence, not a stream of connection retries.
#[derive(Default)]
pub struct QuietContext {
    last_error: Mutex<Option<String>>,
}

impl QuietContext {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(target: "librdkafka", ?level, fac, "{message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(reason.to_string());
        }
    }
}

impl ConsumerContext for QuietContext {}

/// Implements `rdkafka::ClientContext` for a context that keeps a
/// [`QuietContext`] in field `$field`: librdkafka's logs and errors go there.
#[macro_export]
macro_rules! quiet_client_context {
    ($context:ty, $field:ident) => {
        impl rdkafka::ClientContext for $context {
            fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
                rdkafka::ClientContext::log(&self.$field, level, fac, message);
            }
            fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
                rdkafka::ClientContext::error(&self.$field, error, reason);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_secrets_are_masked() {
        assert_eq!(
            parse_override("acks=all").unwrap(),
            ("acks".into(), "all".into())
        );
        assert_eq!(parse_override("sasl.jaas=a=b").unwrap().1, "a=b");
        assert!(parse_override("novalue").is_err());
        let mut options = ClientOptions::new("k:9092");
        options
            .overrides
            .push(("sasl.password".into(), "hunter2".into()));
        options
            .overrides
            .push(("security.protocol".into(), "SASL_SSL".into()));
        let shown = options.describe_overrides();
        assert!(
            !shown.contains("hunter2")
                && shown.contains("sasl.password=***")
                && shown.contains("SASL_SSL")
        );
    }

    #[test]
    fn unreachable_broker_is_one_sentence_within_the_timeout() {
        let options = ClientOptions::new("127.0.0.1:1");
        let client = options.metadata_client().unwrap();
        let started = std::time::Instant::now();
        let error = options.metadata(&client, None).unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(15));
        assert!(
            error.starts_with("cannot reach Kafka at 127.0.0.1:1"),
            "{error}"
        );
        assert!(!error.contains('\n'));
    }
}
