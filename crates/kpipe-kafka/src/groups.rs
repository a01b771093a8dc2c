//! Consumer groups as kafka-consumer-groups shows them: members and their
//! assignments, committed offsets, end offsets and lag; resetting offsets.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{ClientOptions, QuietContext, CONNECT_TIMEOUT};

#[derive(Debug, Clone)]
pub struct GroupSummary {
    pub name: String,
    pub state: String,
    pub protocol_type: String,
    pub members: usize,
}

#[derive(Debug, Clone)]
pub struct MemberDetail {
    pub id: String,
    pub client_id: String,
    pub host: String,
    pub assignment: Vec<(String, i32)>,
}

#[derive(Debug, Clone)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub committed: Option<i64>,
    pub end: i64,
    pub owner: Option<String>,
}

impl PartitionLag {
    /// Messages not yet consumed; with no commit, everything from the log start counts.
    pub fn lag(&self, start: i64) -> i64 {
        (self.end - self.committed.unwrap_or(start)).max(0)
    }
}

#[derive(Debug, Clone)]
pub struct GroupDetail {
    pub name: String,
    pub state: String,
    pub protocol: String,
    pub members: Vec<MemberDetail>,
    /// (partition detail, log start offset)
    pub partitions: Vec<(PartitionLag, i64)>,
}

/// One partition's move: the committed offset before, and the new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetMove {
    pub topic: String,
    pub partition: i32,
    pub committed: Option<i64>,
    pub new: i64,
}

/// Where to move a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    /// The first offset at or after this time (ms since the epoch); the end when none.
    Timestamp(i64),
}

/// Decodes a consumer-protocol assignment (version, [topic, [partition]], user data).
pub fn parse_assignment(bytes: &[u8]) -> Vec<(String, i32)> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (b.get(..n)?, b.get(n..)?);
        *b = tail;
        Some(head)
    }
    let mut b = bytes;
    let mut out = Vec::new();
    let parsed = (|| -> Option<()> {
        take(&mut b, 2)?;
        let topics = i32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
        for _ in 0..topics.max(0) {
            let len = i16::from_be_bytes(take(&mut b, 2)?.try_into().ok()?).max(0) as usize;
            let topic = String::from_utf8_lossy(take(&mut b, len)?).into_owned();
            let count = i32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?);
            for _ in 0..count.max(0) {
                out.push((
                    topic.clone(),
                    i32::from_be_bytes(take(&mut b, 4)?.try_into().ok()?),
                ));
            }
        }
        Some(())
    })();
    if parsed.is_none() {
        tracing::debug!("unreadable member assignment ({} bytes)", bytes.len());
    }
    out
}

pub struct Groups {
    options: ClientOptions,
    client: BaseConsumer<QuietContext>,
}

impl Groups {
    pub fn connect(options: &ClientOptions) -> Result<Groups> {
        let client = options.metadata_client()?;
        options.metadata(&client, None)?;
        Ok(Groups {
            options: options.clone(),
            client,
        })
    }

    pub fn list(&self) -> Result<Vec<GroupSummary>> {
        let list = self.client.fetch_group_list(None, CONNECT_TIMEOUT)?;
        let mut groups: Vec<GroupSummary> = list
            .groups()
            .iter()
            .map(|g| GroupSummary {
                name: g.name().to_string(),
                state: g.state().to_string(),
                protocol_type: g.protocol_type().to_string(),
                members: g.members().len(),
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(groups)
    }

    /// A consumer carrying the group's id, for offset queries; it never joins the group.
    fn group_client(&self, group: &str) -> Result<BaseConsumer<QuietContext>> {
        self.options
            .config_with_defaults(&[("group.id", group), ("enable.auto.commit", "false")])
            .create_with_context(QuietContext::default())
            .map_err(|e| self.options.config_error(e))
    }

    pub fn describe(&self, group: &str) -> Result<GroupDetail> {
        let list = self.client.fetch_group_list(Some(group), CONNECT_TIMEOUT)?;
        let info = list.groups().iter().find(|g| g.name() == group);
        let Some(info) = info.filter(|g| g.state() != "Dead") else {
            bail!(
                "consumer group {group} does not exist on {}",
                self.options.bootstrap
            );
        };
        let members: Vec<MemberDetail> = info
            .members()
            .iter()
            .map(|m| MemberDetail {
                id: m.id().to_string(),
                client_id: m.client_id().to_string(),
                host: m.client_host().to_string(),
                assignment: m.assignment().map(parse_assignment).unwrap_or_default(),
            })
            .collect();
        let owners: BTreeMap<(String, i32), String> = members
            .iter()
            .flat_map(|m| {
                m.assignment
                    .iter()
                    .map(move |tp| (tp.clone(), m.client_id.clone()))
            })
            .collect();
        let committed = self.committed(group, None)?;
        let mut keys: Vec<(String, i32)> = committed.keys().cloned().collect();
        keys.extend(owners.keys().cloned());
        keys.sort();
        keys.dedup();
        let mut partitions = Vec::new();
        for (topic, partition) in keys {
            let (start, end) = self
                .client
                .fetch_watermarks(&topic, partition, CONNECT_TIMEOUT)?;
            let lag = PartitionLag {
                committed: committed.get(&(topic.clone(), partition)).copied(),
                end,
                owner: owners.get(&(topic.clone(), partition)).cloned(),
                topic,
                partition,
            };
            partitions.push((lag, start));
        }
        Ok(GroupDetail {
            name: group.to_string(),
            state: info.state().to_string(),
            protocol: info.protocol().to_string(),
            members,
            partitions,
        })
    }

    /// Each partition of `topic`: the group's committed offset and the end
    /// offset, whether or not the group has members (a group that only
    /// commits, as a Kafka Streams application's does, counts too).
    pub fn topic_lag(&self, group: &str, topic: &str) -> Result<Vec<PartitionLag>> {
        let partitions = self.options.require_topic(&self.client, topic)?;
        let committed = self.committed(group, Some(topic))?;
        (0..partitions as i32)
            .map(|partition| {
                let (_, end) = self
                    .client
                    .fetch_watermarks(topic, partition, CONNECT_TIMEOUT)?;
                Ok(PartitionLag {
                    topic: topic.to_string(),
                    partition,
                    committed: committed.get(&(topic.to_string(), partition)).copied(),
                    end,
                    owner: None,
                })
            })
            .collect()
    }

    /// Committed offsets of the group, for one topic or every topic in the cluster.
    fn committed(&self, group: &str, topic: Option<&str>) -> Result<BTreeMap<(String, i32), i64>> {
        let metadata = self.options.metadata(&self.client, topic)?;
        let mut wanted = TopicPartitionList::new();
        for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
            for p in t.partitions() {
                wanted.add_partition(t.name(), p.id());
            }
        }
        if wanted.count() == 0 {
            return Ok(BTreeMap::new());
        }
        let consumer = self.group_client(group)?;
        let committed = consumer.committed_offsets(wanted, CONNECT_TIMEOUT)?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                _ => None,
            })
            .collect())
    }

    /// Plans (and with `execute`, commits) new offsets for an inactive group.
    pub fn reset(
        &self,
        group: &str,
        topic: &str,
        to: ResetTo,
        execute: bool,
    ) -> Result<Vec<OffsetMove>> {
        let partitions = self.options.require_topic(&self.client, topic)?;
        let list = self.client.fetch_group_list(Some(group), CONNECT_TIMEOUT)?;
        if let Some(g) = list
            .groups()
            .iter()
            .find(|g| g.name() == group && !g.members().is_empty())
        {
            bail!(
                "offsets of group {group} can only be reset while it is inactive, but it has {} member(s) and state {}; stop its consumers first",
                g.members().len(),
                g.state()
            );
        }
        let current = self.committed(group, Some(topic))?;
        let consumer = self.group_client(group)?;
        let mut plan = Vec::new();
        let mut targets = TopicPartitionList::new();
        let by_time = match to {
            ResetTo::Timestamp(ms) => {
                let mut query = TopicPartitionList::new();
                for p in 0..partitions as i32 {
                    query.add_partition_offset(topic, p, Offset::Offset(ms))?;
                }
                Some(consumer.offsets_for_times(query, CONNECT_TIMEOUT)?)
            }
            _ => None,
        };
        for p in 0..partitions as i32 {
            let (start, end) = self.client.fetch_watermarks(topic, p, CONNECT_TIMEOUT)?;
            let target = match to {
                ResetTo::Earliest => start,
                ResetTo::Latest => end,
                ResetTo::Timestamp(_) => match by_time
                    .as_ref()
                    .and_then(|t| t.find_partition(topic, p))
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => o,
                    _ => end,
                },
            };
            targets.add_partition_offset(topic, p, Offset::Offset(target))?;
            plan.push(OffsetMove {
                topic: topic.to_string(),
                partition: p,
                committed: current.get(&(topic.to_string(), p)).copied(),
                new: target,
            });
        }
        if execute {
            consumer
                .commit(&targets, CommitMode::Sync)
                .map_err(|e| anyhow!("cannot commit new offsets for group {group}: {e}"))?;
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_consumer_protocol_assignments() {
        let mut bytes = vec![0, 1, 0, 0, 0, 1, 0, 3];
        bytes.extend(b"abc");
        bytes.extend([0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0]);
        assert_eq!(
            parse_assignment(&bytes),
            vec![("abc".to_string(), 0), ("abc".to_string(), 5)]
        );
        assert!(parse_assignment(&bytes[..9]).is_empty());
        assert!(parse_assignment(&[]).is_empty());
    }
}
