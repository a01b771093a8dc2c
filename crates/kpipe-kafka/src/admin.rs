//! Topic administration: create (plain, if-not-exists, recreate), list,
//! describe, alter, delete, and seed 04's topic JSON config.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;

use crate::client::{ClientOptions, QuietContext, CONNECT_TIMEOUT};

/// What a topic should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub configs: BTreeMap<String, String>,
}

/// What `create` should do when the topic already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    Fail,
    /// Report "exists" and succeed (Airflow's idempotent check in seed 04).
    Keep,
    /// Delete it, wait until it is gone, create it anew: its data is lost.
    Recreate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    Exists,
    Recreated,
}

impl Created {
    pub fn word(self) -> &'static str {
        match self {
            Created::Created => "created",
            Created::Exists => "exists",
            Created::Recreated => "recreated",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: usize,
    pub replication: usize,
}

#[derive(Debug, Clone)]
pub struct PartitionDetail {
    pub id: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub start_offset: i64,
    pub end_offset: i64,
}

#[derive(Debug, Clone)]
pub struct TopicDetail {
    pub name: String,
    pub partitions: Vec<PartitionDetail>,
    /// Configs set on the topic (not defaults), name → value.
    pub configs: BTreeMap<String, String>,
}

pub struct Admin {
    options: ClientOptions,
    admin: AdminClient<QuietContext>,
    client: BaseConsumer<QuietContext>,
}

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(CONNECT_TIMEOUT))
        .operation_timeout(Some(CONNECT_TIMEOUT))
}

impl Admin {
    /// Connects and checks that a broker answers.
    pub fn connect(options: &ClientOptions) -> Result<Admin> {
        let admin = options
            .config()
            .create_with_context(QuietContext::default())
            .map_err(|e| options.config_error(e))?;
        let client = options.metadata_client()?;
        options.metadata(&client, None)?;
        Ok(Admin {
            options: options.clone(),
            admin,
            client,
        })
    }

    pub fn list(&self) -> Result<Vec<TopicSummary>> {
        let metadata = self.options.metadata(&self.client, None)?;
        let mut topics: Vec<TopicSummary> = metadata
            .topics()
            .iter()
            .map(|t| TopicSummary {
                name: t.name().to_string(),
                partitions: t.partitions().len(),
                replication: t.partitions().first().map_or(0, |p| p.replicas().len()),
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    pub fn exists(&self, name: &str) -> Result<bool> {
        let metadata = self.options.metadata(&self.client, Some(name))?;
        Ok(metadata
            .topics()
            .iter()
            .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty()))
    }

    pub async fn create(&self, spec: &TopicSpec, if_exists: IfExists) -> Result<Created> {
        let existed = self.exists(&spec.name)?;
        let outcome = match (existed, if_exists) {
            (true, IfExists::Keep) => return Ok(Created::Exists),
            (true, IfExists::Fail) => bail!("topic {} already exists", spec.name),
            (true, IfExists::Recreate) => {
                self.delete(&spec.name).await?;
                Created::Recreated
            }
            (false, _) => Created::Created,
        };
        let mut topic = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(spec.replication),
        );
        for (k, v) in &spec.configs {
            topic = topic.set(k, v);
        }
        let results = self
            .admin
            .create_topics([&topic], &admin_options())
            .await
            .context("create topic")?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) if if_exists == IfExists::Keep => {
                    return Ok(Created::Exists)
                }
                Err((name, code)) => bail!("cannot create topic {name}: {}", describe_code(code)),
            }
        }
        self.wait_for(&spec.name, true)?;
        Ok(outcome)
    }

    /// Deletes a topic and waits until the cluster no longer lists it.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let results = self
            .admin
            .delete_topics(&[name], &admin_options())
            .await
            .context("delete topic")?;
        for result in results {
            if let Err((name, code)) = result {
                if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                    bail!("topic {name} does not exist");
                }
                bail!("cannot delete topic {name}: {}", describe_code(code));
            }
        }
        self.wait_for(name, false)
    }

    fn wait_for(&self, name: &str, present: bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.exists(name)? != present {
            if Instant::now() > deadline {
                bail!(
                    "topic {name} was still {} after 30 s",
                    if present { "missing" } else { "listed" }
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub async fn describe(&self, name: &str) -> Result<TopicDetail> {
        self.options.require_topic(&self.client, name)?;
        let metadata = self.options.metadata(&self.client, Some(name))?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| anyhow!("topic {name} does not exist"))?;
        let mut partitions = Vec::new();
        for p in topic.partitions() {
            let (start, end) = self
                .client
                .fetch_watermarks(name, p.id(), CONNECT_TIMEOUT)
                .with_context(|| format!("offsets of {name}[{}]", p.id()))?;
            partitions.push(PartitionDetail {
                id: p.id(),
                leader: p.leader(),
                replicas: p.replicas().to_vec(),
                isr: p.isr().to_vec(),
                start_offset: start,
                end_offset: end,
            });
        }
        partitions.sort_by_key(|p| p.id);
        Ok(TopicDetail {
            name: name.to_string(),
            partitions,
            configs: self.overrides(name).await?,
        })
    }

    /// The topic's explicitly set configs.
    async fn overrides(&self, name: &str) -> Result<BTreeMap<String, String>> {
        let results = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(name)], &admin_options())
            .await?;
        let mut configs = BTreeMap::new();
        for result in results {
            let resource = result.map_err(|code| {
                anyhow!("cannot describe configs of {name}: {}", describe_code(code))
            })?;
            for entry in resource.entries {
                if entry.source == ConfigSource::DynamicTopic {
                    configs.insert(entry.name, entry.value.unwrap_or_default());
                }
            }
        }
        Ok(configs)
    }

    /// Sets and removes topic configs, keeping the others (AlterConfigs replaces the
    /// whole set, so the current overrides are read first), and grows partitions.
    pub async fn alter(
        &self,
        name: &str,
        set: &[(String, String)],
        remove: &[String],
        partitions: Option<i32>,
    ) -> Result<()> {
        let current = self.options.require_topic(&self.client, name)?;
        if !set.is_empty() || !remove.is_empty() {
            let mut configs = self.overrides(name).await?;
            for key in remove {
                configs.remove(key);
            }
            configs.extend(set.iter().cloned());
            let mut alter = AlterConfig::new(ResourceSpecifier::Topic(name));
            for (k, v) in &configs {
                alter = alter.set(k, v);
            }
            for result in self.admin.alter_configs([&alter], &admin_options()).await? {
                result.map_err(|(_, code)| {
                    anyhow!("cannot alter configs of {name}: {}", describe_code(code))
                })?;
            }
            // rust-rdkafka 0.39 drops per-resource AlterConfigs errors, so check
            // what the broker actually kept.
            let applied = self.overrides(name).await?;
            if let Some((key, value)) = configs.iter().find(|(k, v)| applied.get(*k) != Some(v)) {
                bail!("the broker refused {key}={value} for topic {name} (an unknown config or an invalid value)");
            }
            if let Some(key) = remove.iter().find(|k| applied.contains_key(*k)) {
                bail!("the broker kept {key} on topic {name}");
            }
        }
        if let Some(count) = partitions {
            if count as usize <= current {
                bail!("topic {name} has {current} partitions; the count can only grow");
            }
            let grow = NewPartitions::new(name, count as usize);
            for result in self
                .admin
                .create_partitions([&grow], &admin_options())
                .await?
            {
                result.map_err(|(_, code)| {
                    anyhow!("cannot add partitions to {name}: {}", describe_code(code))
                })?;
            }
        }
        Ok(())
    }
}

fn describe_code(code: RDKafkaErrorCode) -> String {
    code.to_string().trim_start_matches("Broker: ").to_string()
}

/// Seed 04's topic config, as its Airflow DAG takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedTopicConfig {
    pub topic_name: String,
    #[serde(default = "one")]
    pub partitions: i32,
    #[serde(default = "one")]
    pub replication_factor: i32,
    pub retention_ms: Option<i64>,
    pub cleanup_policy: Option<String>,
    pub compression_type: Option<String>,
    #[serde(default)]
    pub recreate_topic: bool,
    pub description: Option<String>,
    pub schema_description: Option<serde_json::Map<String, serde_json::Value>>,
    /// Where the DAG connected; used when no `-b`/KPIPE_BOOTSTRAP is given.
    pub kafka_broker: Option<String>,
}

fn one() -> i32 {
    1
}

impl SeedTopicConfig {
    pub fn load(path: &Path) -> Result<SeedTopicConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow!("{} is not a valid topic config: {e}", path.display()))
    }

    pub fn spec(&self) -> TopicSpec {
        let mut configs = BTreeMap::new();
        if let Some(ms) = self.retention_ms {
            configs.insert("retention.ms".to_string(), ms.to_string());
        }
        if let Some(policy) = &self.cleanup_policy {
            configs.insert("cleanup.policy".to_string(), policy.clone());
        }
        if let Some(codec) = &self.compression_type {
            configs.insert("compression.type".to_string(), codec.clone());
        }
        TopicSpec {
            name: self.topic_name.clone(),
            partitions: self.partitions,
            replication: self.replication_factor,
            configs,
        }
    }

    pub fn if_exists(&self) -> IfExists {
        if self.recreate_topic {
            IfExists::Recreate
        } else {
            IfExists::Keep
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_04_config_maps_onto_a_topic_spec() {
        let json = r#"{
          "topic_name": "covid_new_cases_1min", "partitions": 5, "replication_factor": 1,
          "retention_ms": 172800000, "cleanup_policy": "delete", "compression_type": "lz4",
          "recreate_topic": true, "description": "COVID-19 new cases",
          "schema_description": {"date": "Date in YYYY-MM-DD format"}, "kafka_broker": "kafka:9092"
        }"#;
        let config: SeedTopicConfig = serde_json::from_str(json).unwrap();
        let spec = config.spec();
        assert_eq!((spec.partitions, spec.replication), (5, 1));
        assert_eq!(spec.configs["retention.ms"], "172800000");
        assert_eq!(spec.configs["compression.type"], "lz4");
        assert_eq!(config.if_exists(), IfExists::Recreate);
        assert!(
            serde_json::from_str::<SeedTopicConfig>(r#"{"topic_name":"t","partitionz":3}"#)
                .is_err()
        );
    }
}
