//! The REST tests over real HTTP: each run gets a broker and a `kpipe server` of its own in this process.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kpipe_broker::{Broker, BrokerConfig};
use kpipe_kafka::admin::{Admin, IfExists, TopicSpec};
use kpipe_kafka::client::ClientOptions;
use kpipe_kafka::groups::Groups;
use kpipe_kafka::produce::Producer;
use kpipe_sql::durable::{application_id, repartition_topic};
use kpipe_sql::engine::Engine;
use kpipe_sql::parser::parse;
use kpipe_sql::rest::Response;
use kpipe_sql::resttest::{Input, RestApi};
use serde_json::{json, Map, Value};

use crate::cmd::shell::Embedded;

/// How long the persistent queries get to commit every input.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a request may take: a pull query answers at once.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh broker (its data in a temp dir, as tests reuse topic names) and a
/// server in front of it, both on 127.0.0.1 ports of their own.
pub struct OverHttp {
    runtime: tokio::runtime::Runtime,
    broker: Option<Broker>,
    server: Option<Embedded>,
    url: String,
    http: reqwest::Client,
    kafka: ClientOptions,
    producer: Option<Producer>,
    /// The test's admin statements run here too, only to learn each topic's
    /// formats (to serialize inputs) and each query's source topic.
    formats: Engine,
    _dirs: tempfile::TempDir,
}

impl OverHttp {
    pub fn start() -> Result<OverHttp> {
        let dirs = tempfile::tempdir()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let config = BrokerConfig::new("127.0.0.1:0".parse()?, dirs.path().join("kafka"));
        let broker = runtime.block_on(Broker::start(config))?;
        let kafka = ClientOptions::new(broker.bootstrap());
        let server = Embedded::start(kafka.clone(), Some(dirs.path().join("state")))?;
        Ok(OverHttp {
            runtime,
            broker: Some(broker),
            url: server.url.clone(),
            server: Some(server),
            http: reqwest::Client::new(),
            kafka,
            producer: None,
            formats: Engine::default(),
            _dirs: dirs,
        })
    }

    fn post(&self, path: &str, body: Value) -> Response {
        let sent = self.runtime.block_on(async {
            let response = self
                .http
                .post(format!("{}{path}", self.url))
                .header("Content-Type", "application/vnd.ksql.v1+json")
                .body(body.to_string())
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.bytes().await?))
        });
        match sent {
            Ok((status, body)) => match serde_json::from_slice(&body) {
                Ok(body) => (status, body),
                Err(e) => transport_error(anyhow!(
                    "{path} answered {status} with a body that is not JSON ({e}): {}",
                    String::from_utf8_lossy(&body)
                )),
            },
            Err(e) => transport_error(e.context(format!("POST {path}"))),
        }
    }

    /// The ids of the persistent queries the server runs, from SHOW QUERIES.
    fn query_ids(&self) -> Result<Vec<String>> {
        let (status, body) = self.post("/ksql", json!({"ksql": "SHOW QUERIES;"}));
        if status != 200 {
            bail!("SHOW QUERIES answered {status}: {body}");
        }
        Ok(body[0]["queries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|q| q["id"].as_str().map(String::from))
            .collect())
    }
}

/// An answer for a request that got no answer, so the test fails with why.
fn transport_error(e: anyhow::Error) -> Response {
    (
        599,
        json!({"@type": "transport_error", "message": format!("{e:#}")}),
    )
}

/// A request's properties, with the harness's server setting that queries
/// read their sources from the beginning unless the test says otherwise.
fn with_earliest(properties: &Map<String, Value>) -> Map<String, Value> {
    let mut properties = properties.clone();
    properties
        .entry("auto.offset.reset")
        .or_insert_with(|| "earliest".into());
    properties
}

impl RestApi for OverHttp {
    fn ksql(&mut self, sql: &str, properties: &Map<String, Value>) -> Response {
        let properties = with_earliest(properties);
        // Statements that fail here fail on the server too, where the test sees why.
        for statement in parse(sql).into_iter().flatten() {
            let _ = self.formats.execute(&statement);
        }
        self.post(
            "/ksql",
            json!({"ksql": sql, "streamsProperties": properties}),
        )
    }

    fn query(&mut self, sql: &str, properties: &Map<String, Value>) -> Response {
        let properties = with_earliest(properties);
        self.post(
            "/query",
            json!({"ksql": sql, "streamsProperties": properties}),
        )
    }

    fn create_topic(&mut self, name: &str, partitions: i32) -> Result<()> {
        let spec = TopicSpec {
            name: name.to_string(),
            partitions,
            replication: 1,
            configs: Default::default(),
        };
        let admin = Admin::connect(&self.kafka)?;
        self.runtime.block_on(admin.create(&spec, IfExists::Keep))?;
        Ok(())
    }

    fn produce(&mut self, input: &Input) -> Result<()> {
        let record = input.record();
        let encoded = self.formats.encode_message(&record)?;
        if self.producer.is_none() {
            let mut options = self.kafka.clone();
            // Java's default partitioner: murmur2 of the serialized key.
            options
                .overrides
                .push(("partitioner".into(), "murmur2_random".into()));
            self.producer = Some(Producer::connect(&options)?);
        }
        let producer = self.producer.as_mut().expect("connected above");
        // Java's producer sticks unkeyed records to one partition; the first
        // keeps the tests that read them in order deterministic.
        let partition = encoded.key.is_none().then_some(0);
        producer.send_at(
            &input.topic,
            partition,
            encoded.key.as_deref(),
            encoded.value.as_deref(),
            None,
            Some(input.timestamp),
        )
    }

    /// Waits as ksqlDB's harness does: until each persistent query's consumer
    /// group has committed the end offset of every partition of its source.
    fn catch_up(&mut self) -> Result<()> {
        if let Some(producer) = &mut self.producer {
            producer.flush(REQUEST_TIMEOUT)?;
        }
        let groups = Groups::connect(&self.kafka)?;
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        for id in self.query_ids()? {
            let (source, _) = self
                .formats
                .query_topics(&id)
                .with_context(|| format!("the server runs {id}, which the runner did not start"))?;
            let group = application_id(kpipe_server::SERVICE_ID, &id);
            // A repartitioned query's second stage reads what its first wrote.
            let repartitioned = self
                .formats
                .only(&id)
                .and_then(|engine| engine.repartition_count(1))
                .map(|_| repartition_topic(kpipe_server::SERVICE_ID, &id));
            let topics: Vec<String> = std::iter::once(source).chain(repartitioned).collect();
            loop {
                let mut behind = Vec::new();
                for topic in &topics {
                    for p in groups.topic_lag(&group, topic)? {
                        if p.committed.unwrap_or(0) < p.end {
                            let committed = p.committed.map_or("nothing".into(), |c| c.to_string());
                            behind.push(format!(
                                "{topic} [{}] committed {committed} of {}",
                                p.partition, p.end
                            ));
                        }
                    }
                }
                if behind.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{id} did not catch up within {CATCH_UP_TIMEOUT:?}: group {group}: {}",
                        behind.join(", ")
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for OverHttp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            if let Err(e) = server.stop() {
                tracing::warn!("the test's server failed: {e:#}");
            }
        }
        if let Some(broker) = self.broker.take() {
            if let Err(e) = self.runtime.block_on(broker.shutdown()) {
                tracing::warn!("the test's broker did not stop cleanly: {e:#}");
            }
        }
    }
}
