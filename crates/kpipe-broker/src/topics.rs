//! The topic registry: which topics exist, their configs and partitions, kept in
//! `<data>/topics/<name>/topic.json` beside one directory per partition.
//!
//! Creation builds the topic in `<data>/tmp` and renames it into place; deletion
//! renames it out of `topics/` before removing files, so a kill -9 at any point
//! leaves either the whole topic or none of it, and never touches another topic.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{self, log_config};
use crate::error::ApiError;
use crate::storage::log::{LogConfig, PartitionLog};
use crate::storage::{sync_dir, write_atomic};

#[derive(Serialize, Deserialize)]
struct TopicFile {
    id: Uuid,
    partitions: i32,
    configs: BTreeMap<String, String>,
}

pub struct Partition {
    pub index: i32,
    log: Mutex<PartitionLog>,
}

impl Partition {
    pub fn log(&self) -> MutexGuard<'_, PartitionLog> {
        // A panic while holding the lock leaves the log as consistent as a crash
        // would, and recovery-by-CRC does not apply in-process; keep serving.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct Topic {
    pub name: String,
    pub id: Uuid,
    dir: PathBuf,
    configs: RwLock<BTreeMap<String, String>>,
    partitions: RwLock<Vec<Arc<Partition>>>,
}

impl Topic {
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().expect("partitions lock").clone()
    }
    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        usize::try_from(index).ok().and_then(|i| {
            self.partitions
                .read()
                .expect("partitions lock")
                .get(i)
                .cloned()
        })
    }
    pub fn partition_count(&self) -> i32 {
        self.partitions.read().expect("partitions lock").len() as i32
    }
    /// The topic's config overrides (names and values set explicitly).
    pub fn configs(&self) -> BTreeMap<String, String> {
        self.configs.read().expect("configs lock").clone()
    }
    pub fn config(&self, name: &str) -> String {
        config::effective(&self.configs.read().expect("configs lock"), name).to_string()
    }
    pub fn log_config(&self) -> LogConfig {
        log_config(&self.configs.read().expect("configs lock"))
    }

    fn persist(&self) -> std::io::Result<()> {
        let file = TopicFile {
            id: self.id,
            partitions: self.partition_count(),
            configs: self.configs(),
        };
        write_atomic(
            &self.dir.join("topic.json"),
            &serde_json::to_vec_pretty(&file).expect("serialisable"),
        )
    }

    fn load(dir: &Path, name: String) -> anyhow::Result<Topic> {
        let file: TopicFile = serde_json::from_slice(&fs::read(dir.join("topic.json"))?)?;
        let partitions = (0..file.partitions)
            .map(|index| {
                Ok(Arc::new(Partition {
                    index,
                    log: Mutex::new(PartitionLog::open(&dir.join(index.to_string()))?),
                }))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Topic {
            name,
            id: file.id,
            dir: dir.to_path_buf(),
            configs: RwLock::new(file.configs),
            partitions: RwLock::new(partitions),
        })
    }
}

/// Kafka's rule: 1 to 249 characters of ASCII letters, digits, '.', '_' and '-', not "." or "..".
pub fn validate_topic_name(name: &str) -> Result<(), ApiError> {
    let invalid = |why: &str| {
        Err(ApiError::new(
            ResponseError::InvalidTopicException,
            format!("Topic name \"{name}\" is illegal, {why}"),
        ))
    };
    if name.is_empty() {
        return invalid("it can't be empty");
    }
    if name == "." || name == ".." {
        return invalid("it can't be \".\" or \"..\"");
    }
    if name.len() > 249 {
        return invalid("it can't be longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return invalid("it contains a character other than ASCII alphanumerics, '.', '_' and '-'");
    }
    Ok(())
}

pub struct TopicRegistry {
    root: PathBuf,
    tmp: PathBuf,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises create, delete and partition changes.
    admin: Mutex<()>,
}

impl TopicRegistry {
    pub fn open(data_dir: &Path) -> anyhow::Result<TopicRegistry> {
        let root = data_dir.join("topics");
        let tmp = data_dir.join("tmp");
        fs::create_dir_all(&root)?;
        // Half-created or half-deleted topics from a crash are garbage.
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        let mut topics = BTreeMap::new();
        for entry in fs::read_dir(&root)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if validate_topic_name(&name).is_err() || !entry.path().join("topic.json").exists() {
                continue;
            }
            let topic = Topic::load(&entry.path(), name.clone()).map_err(|e| {
                anyhow::anyhow!(
                    "cannot open topic {name} in {}: {e}",
                    entry.path().display()
                )
            })?;
            topics.insert(name, Arc::new(topic));
        }
        Ok(TopicRegistry {
            root,
            tmp,
            topics: RwLock::new(topics),
            admin: Mutex::new(()),
        })
    }

    fn admin(&self) -> MutexGuard<'_, ()> {
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    pub fn by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .find(|t| t.id == id)
            .cloned()
    }

    pub fn list(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .cloned()
            .collect()
    }

    /// Checks a creation without doing it (CreateTopics' validate_only uses this alone).
    pub fn check_new(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        validate_topic_name(name)?;
        if self.get(name).is_some() {
            return Err(ApiError::new(
                ResponseError::TopicAlreadyExists,
                format!("Topic '{name}' already exists."),
            ));
        }
        if partitions < 1 {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                "Number of partitions must be larger than 0.",
            ));
        }
        for (key, value) in configs {
            config::validate_topic_config(key, value)
                .map_err(|m| ApiError::new(ResponseError::InvalidConfig, m))?;
        }
        Ok(())
    }

    pub fn create(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, ApiError> {
        let _admin = self.admin();
        self.check_new(name, partitions, &configs)?;
        let staging = self.tmp.join(Uuid::new_v4().to_string());
        let build = || -> std::io::Result<()> {
            fs::create_dir_all(&staging)?;
            let file = TopicFile {
                id: Uuid::new_v4(),
                partitions,
                configs: configs.clone(),
            };
            write_atomic(
                &staging.join("topic.json"),
                &serde_json::to_vec_pretty(&file).expect("serialisable"),
            )?;
            fs::rename(&staging, self.root.join(name))?;
            sync_dir(&self.root)
        };
        build().map_err(|e| {
            let _ = fs::remove_dir_all(&staging);
            ApiError::new(
                ResponseError::KafkaStorageError,
                format!("cannot create topic {name}: {e}"),
            )
        })?;
        let topic = Topic::load(&self.root.join(name), name.to_string()).map_err(|e| {
            ApiError::new(
                ResponseError::KafkaStorageError,
                format!("cannot open topic {name}: {e}"),
            )
        })?;
        let topic = Arc::new(topic);
        self.topics
            .write()
            .expect("topics lock")
            .insert(name.to_string(), topic.clone());
        Ok(topic)
    }

    pub fn delete(&self, name: &str) -> Result<Arc<Topic>, ApiError> {
        let _admin = self.admin();
        let topic = self
            .topics
            .write()
            .expect("topics lock")
            .remove(name)
            .ok_or_else(|| unknown_topic(name))?;
        let graveyard = self.tmp.join(format!("deleted-{}", Uuid::new_v4()));
        fs::rename(&topic.dir, &graveyard)
            .and_then(|_| sync_dir(&self.root))
            .map_err(|e| {
                ApiError::new(
                    ResponseError::KafkaStorageError,
                    format!("cannot delete topic {name}: {e}"),
                )
            })?;
        // Removing files can take a while for big topics; the rename already made the deletion durable.
        std::thread::spawn(move || {
            let _ = fs::remove_dir_all(graveyard);
        });
        Ok(topic)
    }

    pub fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), ApiError> {
        let _admin = self.admin();
        let topic = self.get(name).ok_or_else(|| unknown_topic(name))?;
        let current = topic.partition_count();
        if count <= current {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("Topic currently has {current} partitions, which is higher than or equal to the requested {count}."),
            ));
        }
        if validate_only {
            return Ok(());
        }
        let storage =
            |e: std::io::Error| ApiError::new(ResponseError::KafkaStorageError, e.to_string());
        let mut added = Vec::new();
        for index in current..count {
            let log = PartitionLog::open(&topic.dir.join(index.to_string())).map_err(storage)?;
            added.push(Arc::new(Partition {
                index,
                log: Mutex::new(log),
            }));
        }
        topic
            .partitions
            .write()
            .expect("partitions lock")
            .extend(added);
        topic.persist().map_err(storage)
    }

    /// Replaces or edits a topic's config overrides after validating every entry.
    pub fn alter_configs(
        &self,
        name: &str,
        edit: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), ApiError>,
        validate_only: bool,
    ) -> Result<(), ApiError> {
        let _admin = self.admin();
        let topic = self.get(name).ok_or_else(|| unknown_topic(name))?;
        let mut configs = topic.configs();
        edit(&mut configs)?;
        for (key, value) in &configs {
            config::validate_topic_config(key, value)
                .map_err(|m| ApiError::new(ResponseError::InvalidConfig, m))?;
        }
        if validate_only {
            return Ok(());
        }
        *topic.configs.write().expect("configs lock") = configs;
        topic
            .persist()
            .map_err(|e| ApiError::new(ResponseError::KafkaStorageError, e.to_string()))
    }
}

pub fn unknown_topic(name: &str) -> ApiError {
    ApiError::new(
        ResponseError::UnknownTopicOrPartition,
        format!("This server does not host topic {name}."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_delete_survive_restart_and_touch_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let registry = TopicRegistry::open(dir.path()).unwrap();
        let configs = BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]);
        registry.create("keep", 2, configs.clone()).unwrap();
        registry.create("drop", 1, BTreeMap::new()).unwrap();
        assert_eq!(
            registry
                .create("keep", 1, BTreeMap::new())
                .err()
                .unwrap()
                .code,
            ResponseError::TopicAlreadyExists.code()
        );
        assert!(registry.create("bad/name", 1, BTreeMap::new()).is_err());
        registry.create_partitions("keep", 3, false).unwrap();
        registry.delete("drop").unwrap();
        drop(registry);
        let registry = TopicRegistry::open(dir.path()).unwrap();
        let names: Vec<String> = registry.list().iter().map(|t| t.name.clone()).collect();
        assert_eq!(names, vec!["keep"]);
        let keep = registry.get("keep").unwrap();
        assert_eq!(keep.partition_count(), 3);
        assert_eq!(keep.configs(), configs);
        assert_eq!(keep.config("cleanup.policy"), "delete");
    }
}
