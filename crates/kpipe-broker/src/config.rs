//! Broker settings and the topic configs the broker understands, with Kafka's
//! names, defaults, types and validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::storage::log::LogConfig;

/// When appended data is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Produce requests with acks=all are answered after their data is fsynced.
    Always,
    /// A background flush every interval; acks=all means "written to the OS",
    /// which survives a crash of the broker process but not of the machine.
    Interval(Duration),
    /// The OS decides, as with Kafka's defaults; segments are still fsynced when they roll.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => {
                let ms = other
                    .strip_suffix("ms")
                    .and_then(|n| n.parse::<u64>().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("fsync policy must be always, never or an interval like 200ms, not {other:?}"))?;
                Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => write!(f, "always"),
            FsyncPolicy::Never => write!(f, "never"),
            FsyncPolicy::Interval(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

/// Everything a broker needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Host clients are told to connect to; defaults to the listen address.
    pub advertised_host: Option<String>,
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub group_initial_rebalance_delay: Duration,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    /// How often retention and session expiry are checked.
    pub housekeeping_interval: Duration,
}

impl BrokerConfig {
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        BrokerConfig {
            listen,
            advertised_host: None,
            data_dir: data_dir.into(),
            fsync: FsyncPolicy::Always,
            auto_create_topics: false,
            default_partitions: 1,
            group_initial_rebalance_delay: Duration::ZERO,
            group_min_session_timeout_ms: 1000,
            group_max_session_timeout_ms: 1_800_000,
            housekeeping_interval: Duration::from_secs(10),
        }
    }

    /// Broker-level settings reported by DescribeConfigs, as (name, value, set explicitly).
    pub(crate) fn describe(&self) -> Vec<(String, String, bool)> {
        let defaults = BrokerConfig::new(self.listen, self.data_dir.clone());
        let ms = |d: Duration| d.as_millis().to_string();
        vec![
            ("broker.id".into(), "0".into(), false),
            ("log.dirs".into(), self.data_dir.display().to_string(), true),
            (
                "listeners".into(),
                format!("PLAINTEXT://{}", self.listen),
                true,
            ),
            (
                "auto.create.topics.enable".into(),
                self.auto_create_topics.to_string(),
                self.auto_create_topics != defaults.auto_create_topics,
            ),
            (
                "num.partitions".into(),
                self.default_partitions.to_string(),
                self.default_partitions != defaults.default_partitions,
            ),
            ("default.replication.factor".into(), "1".into(), false),
            ("offsets.topic.replication.factor".into(), "1".into(), false),
            ("min.insync.replicas".into(), "1".into(), false),
            ("message.max.bytes".into(), "1048588".into(), false),
            ("log.retention.ms".into(), "604800000".into(), false),
            ("log.segment.bytes".into(), "1073741824".into(), false),
            (
                "group.initial.rebalance.delay.ms".into(),
                ms(self.group_initial_rebalance_delay),
                self.group_initial_rebalance_delay != defaults.group_initial_rebalance_delay,
            ),
            (
                "group.min.session.timeout.ms".into(),
                self.group_min_session_timeout_ms.to_string(),
                false,
            ),
            (
                "group.max.session.timeout.ms".into(),
                self.group_max_session_timeout_ms.to_string(),
                false,
            ),
            (
                "kpipe.fsync.policy".into(),
                self.fsync.to_string(),
                self.fsync != defaults.fsync,
            ),
        ]
    }
}

/// DescribeConfigs type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

pub struct TopicConfigDef {
    pub name: &'static str,
    pub default: &'static str,
    pub kind: ConfigType,
    /// Allowed values for enumerations (each element of a list).
    pub choices: &'static [&'static str],
    pub min: i64,
}

const fn def(name: &'static str, default: &'static str, kind: ConfigType) -> TopicConfigDef {
    TopicConfigDef {
        name,
        default,
        kind,
        choices: &[],
        min: i64::MIN,
    }
}

/// Topic configs with Kafka's defaults. Unknown names are refused, as Kafka does.
pub static TOPIC_CONFIGS: &[TopicConfigDef] = &[
    TopicConfigDef {
        choices: &["delete", "compact"],
        ..def("cleanup.policy", "delete", ConfigType::List)
    },
    TopicConfigDef {
        choices: &["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"],
        ..def("compression.type", "producer", ConfigType::String)
    },
    TopicConfigDef {
        min: 0,
        ..def("delete.retention.ms", "86400000", ConfigType::Long)
    },
    TopicConfigDef {
        min: 0,
        ..def("file.delete.delay.ms", "60000", ConfigType::Long)
    },
    TopicConfigDef {
        min: 1,
        ..def("flush.messages", "9223372036854775807", ConfigType::Long)
    },
    TopicConfigDef {
        min: 0,
        ..def("flush.ms", "9223372036854775807", ConfigType::Long)
    },
    TopicConfigDef {
        min: 0,
        ..def("index.interval.bytes", "4096", ConfigType::Int)
    },
    TopicConfigDef {
        min: 1,
        ..def(
            "max.compaction.lag.ms",
            "9223372036854775807",
            ConfigType::Long,
        )
    },
    TopicConfigDef {
        min: 0,
        ..def("max.message.bytes", "1048588", ConfigType::Int)
    },
    def("message.downconversion.enable", "true", ConfigType::Boolean),
    TopicConfigDef {
        choices: &["CreateTime", "LogAppendTime"],
        ..def("message.timestamp.type", "CreateTime", ConfigType::String)
    },
    TopicConfigDef {
        min: 0,
        ..def(
            "message.timestamp.difference.max.ms",
            "9223372036854775807",
            ConfigType::Long,
        )
    },
    def("min.cleanable.dirty.ratio", "0.5", ConfigType::Double),
    TopicConfigDef {
        min: 0,
        ..def("min.compaction.lag.ms", "0", ConfigType::Long)
    },
    TopicConfigDef {
        min: 1,
        ..def("min.insync.replicas", "1", ConfigType::Int)
    },
    def("preallocate", "false", ConfigType::Boolean),
    def("retention.bytes", "-1", ConfigType::Long),
    TopicConfigDef {
        min: -1,
        ..def("retention.ms", "604800000", ConfigType::Long)
    },
    TopicConfigDef {
        min: 1024,
        ..def("segment.bytes", "1073741824", ConfigType::Int)
    },
    TopicConfigDef {
        min: 4,
        ..def("segment.index.bytes", "10485760", ConfigType::Int)
    },
    TopicConfigDef {
        min: 0,
        ..def("segment.jitter.ms", "0", ConfigType::Long)
    },
    TopicConfigDef {
        min: 1,
        ..def("segment.ms", "604800000", ConfigType::Long)
    },
    def(
        "unclean.leader.election.enable",
        "false",
        ConfigType::Boolean,
    ),
];

pub fn topic_config_def(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks one topic config; the error is the sentence Kafka clients show.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), String> {
    let def = topic_config_def(name).ok_or_else(|| format!("Unknown topic config name: {name}"))?;
    let bad = |why: &str| {
        Err(format!(
            "Invalid value {value} for configuration {name}: {why}"
        ))
    };
    match def.kind {
        ConfigType::Boolean => {
            if !matches!(value.to_ascii_lowercase().as_str(), "true" | "false") {
                return bad("Expected value to be either true or false");
            }
        }
        ConfigType::Int | ConfigType::Long => {
            let parsed = if def.kind == ConfigType::Int {
                value.trim().parse::<i32>().map(i64::from).ok()
            } else {
                value.trim().parse::<i64>().ok()
            };
            match parsed {
                None => return bad("Not a number of the right size"),
                Some(n) if n < def.min => {
                    return bad(&format!("Value must be at least {}", def.min))
                }
                _ => {}
            }
        }
        ConfigType::Double => {
            if value.trim().parse::<f64>().is_err() {
                return bad("Not a number");
            }
        }
        ConfigType::String | ConfigType::List => {
            let items: Vec<&str> = if def.kind == ConfigType::List {
                value.split(',').map(str::trim).collect()
            } else {
                vec![value]
            };
            if let Some(item) = items
                .iter()
                .find(|i| !def.choices.is_empty() && !def.choices.contains(i))
            {
                return bad(&format!(
                    "String must be one of: {} (got {item})",
                    def.choices.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// The effective value of a topic config: its override, else the default.
pub fn effective<'a>(overrides: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    overrides
        .get(name)
        .map(String::as_str)
        .unwrap_or_else(|| topic_config_def(name).map_or("", |d| d.default))
}

fn number(overrides: &BTreeMap<String, String>, name: &str) -> i64 {
    effective(overrides, name).trim().parse().unwrap_or(0)
}

/// The log settings a topic's configs imply.
pub fn log_config(overrides: &BTreeMap<String, String>) -> LogConfig {
    LogConfig {
        segment_bytes: number(overrides, "segment.bytes") as u64,
        segment_ms: number(overrides, "segment.ms"),
        index_interval_bytes: number(overrides, "index.interval.bytes") as u64,
        retention_ms: number(overrides, "retention.ms"),
        retention_bytes: number(overrides, "retention.bytes"),
        delete_enabled: effective(overrides, "cleanup.policy")
            .split(',')
            .any(|p| p.trim() == "delete"),
        log_append_time: effective(overrides, "message.timestamp.type") == "LogAppendTime",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_like_kafka() {
        assert!(validate_topic_config("retention.ms", "3600000").is_ok());
        assert!(validate_topic_config("retention.ms", "-1").is_ok());
        assert!(validate_topic_config("retention.ms", "soon").is_err());
        assert!(validate_topic_config("cleanup.policy", "compact,delete").is_ok());
        assert!(validate_topic_config("cleanup.policy", "archive").is_err());
        assert!(validate_topic_config("compression.type", "zstd").is_ok());
        assert_eq!(
            validate_topic_config("colour", "red").unwrap_err(),
            "Unknown topic config name: colour"
        );
        assert!(validate_topic_config("min.insync.replicas", "0").is_err());
    }

    #[test]
    fn log_config_follows_overrides() {
        let mut overrides = BTreeMap::new();
        assert!(log_config(&overrides).delete_enabled);
        overrides.insert("cleanup.policy".to_string(), "compact".to_string());
        overrides.insert("segment.bytes".to_string(), "2048".to_string());
        let config = log_config(&overrides);
        assert!(!config.delete_enabled);
        assert_eq!(config.segment_bytes, 2048);
    }

    #[test]
    fn parses_fsync_policy() {
        assert_eq!("always".parse::<FsyncPolicy>(), Ok(FsyncPolicy::Always));
        assert_eq!(
            "250ms".parse::<FsyncPolicy>(),
            Ok(FsyncPolicy::Interval(Duration::from_millis(250)))
        );
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
    }
}
