//! The group coordinator: Kafka's classic consumer-group protocol (JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup) and committed offsets.
//!
//! States follow Kafka's coordinator: Empty → PreparingRebalance (waiting for every
//! known member to rejoin, up to the rebalance timeout) → CompletingRebalance
//! (waiting for the leader's assignment) → Stable. The broker is protocol-agnostic:
//! eager and cooperative-sticky assignors both run in the clients, the coordinator
//! only collects metadata and hands out what the leader decided. Members that stop
//! heartbeating for their session timeout are removed and trigger a rebalance.
//! Committed offsets live in an append-only, CRC-checked, compacted file (see
//! [`OffsetStore`]); group membership is not persisted, as members rejoin anyway.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::storage::write_atomic;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// A committed offset as OffsetFetch returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_time_ms: i64,
}

struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
}

impl Member {
    /// The member's metadata for the group's chosen protocol.
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|p| p.0 == protocol)
            .map(|p| p.1.clone())
            .unwrap_or_default()
    }
}

struct Group {
    state: State,
    protocol_type: String,
    protocol: Option<String>,
    generation: i32,
    leader: Option<String>,
    /// In join order: the first member leads when the leader leaves.
    members: Vec<Member>,
    offsets: BTreeMap<(String, i32), Committed>,
    rebalance_deadline: Instant,
    /// No join completes before this (group.initial.rebalance.delay.ms for a new group).
    join_not_before: Instant,
    join_waiters: HashMap<String, oneshot::Sender<JoinGroupResponse>>,
    sync_waiters: HashMap<String, oneshot::Sender<SyncGroupResponse>>,
}

impl Group {
    fn new() -> Group {
        let now = Instant::now();
        Group {
            state: State::Empty,
            protocol_type: String::new(),
            protocol: None,
            generation: 0,
            leader: None,
            members: Vec::new(),
            offsets: BTreeMap::new(),
            rebalance_deadline: now,
            join_not_before: now,
            join_waiters: HashMap::new(),
            sync_waiters: HashMap::new(),
        }
    }

    fn member(&mut self, id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    fn is_dead(&self) -> bool {
        self.state == State::Empty && self.offsets.is_empty()
    }

    fn begin_rebalance(&mut self, initial_delay: Duration) {
        let now = Instant::now();
        if self.state == State::Empty {
            self.join_not_before = now + initial_delay;
        }
        for (_, waiter) in self.sync_waiters.drain() {
            let _ = waiter.send(sync_error(ResponseError::RebalanceInProgress));
        }
        let timeout = self
            .members
            .iter()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.rebalance_deadline = now + timeout;
        self.state = State::PreparingRebalance;
    }

    fn remove_member(&mut self, id: &str, initial_delay: Duration) {
        self.members.retain(|m| m.id != id);
        self.join_waiters.remove(id);
        self.sync_waiters.remove(id);
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        if matches!(self.state, State::Stable | State::CompletingRebalance) {
            self.begin_rebalance(initial_delay);
        }
        self.try_complete_join(false);
    }

    /// Finishes the join phase when every member has rejoined (or, when `force`d
    /// by the rebalance timeout, drops those that did not).
    fn try_complete_join(&mut self, force: bool) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = self
            .members
            .iter()
            .all(|m| self.join_waiters.contains_key(&m.id));
        if !(force || all_joined && Instant::now() >= self.join_not_before) {
            return;
        }
        let waiters = &self.join_waiters;
        self.members.retain(|m| waiters.contains_key(&m.id));
        self.generation += 1;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        let first = &self.members[0];
        self.protocol = first.protocols.iter().map(|p| p.0.clone()).find(|name| {
            self.members
                .iter()
                .all(|m| m.protocols.iter().any(|p| &p.0 == name))
        });
        let protocol = self.protocol.clone().unwrap_or_default();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.iter().any(|m| &m.id == l))
        {
            self.leader = Some(first.id.clone());
        }
        let leader = self.leader.clone().unwrap_or_default();
        let roster: Vec<JoinGroupResponseMember> = self
            .members
            .iter()
            .map(|m| {
                let metadata = m.metadata_for(&protocol);
                JoinGroupResponseMember::default()
                    .with_member_id(str_bytes(&m.id))
                    .with_group_instance_id(m.instance_id.as_deref().map(str_bytes))
                    .with_metadata(metadata)
            })
            .collect();
        self.state = State::CompletingRebalance;
        for (member_id, waiter) in self.join_waiters.drain() {
            let response = JoinGroupResponse::default()
                .with_generation_id(self.generation)
                .with_protocol_type(Some(str_bytes(&self.protocol_type)))
                .with_protocol_name(Some(str_bytes(&protocol)))
                .with_leader(str_bytes(&leader))
                .with_member_id(str_bytes(&member_id))
                .with_members(if member_id == leader {
                    roster.clone()
                } else {
                    Vec::new()
                });
            let _ = waiter.send(response);
        }
    }
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn join_error(error: ResponseError, member_id: &str) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(error.code())
        .with_generation_id(-1)
        .with_member_id(str_bytes(member_id))
}

fn sync_error(error: ResponseError) -> SyncGroupResponse {
    SyncGroupResponse::default().with_error_code(error.code())
}

/// Group timing settings.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub initial_rebalance_delay: Duration,
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
}

pub struct GroupCoordinator {
    groups: Mutex<HashMap<String, Group>>,
    store: OffsetStore,
    settings: GroupSettings,
}

/// One partition's commit as the coordinator receives it, already validated against topics.
pub struct CommitRequest {
    pub topic: String,
    pub partition: i32,
    pub committed: Committed,
}

impl GroupCoordinator {
    pub fn open(state_dir: &Path, settings: GroupSettings) -> io::Result<GroupCoordinator> {
        let (store, offsets) = OffsetStore::open(&state_dir.join("offsets.log"))?;
        let mut groups = HashMap::new();
        for ((group, topic, partition), committed) in offsets {
            groups
                .entry(group)
                .or_insert_with(Group::new)
                .offsets
                .insert((topic, partition), committed);
        }
        Ok(GroupCoordinator {
            groups: Mutex::new(groups),
            store,
            settings,
        })
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn join(
        &self,
        req: JoinGroupRequest,
        client_id: &str,
        client_host: &str,
    ) -> JoinGroupResponse {
        let group_id = req.group_id.0.to_string();
        let receiver = {
            let mut groups = self.groups();
            if group_id.is_empty() {
                return join_error(ResponseError::InvalidGroupId, &req.member_id);
            }
            if req.session_timeout_ms < self.settings.min_session_timeout_ms
                || req.session_timeout_ms > self.settings.max_session_timeout_ms
            {
                return join_error(ResponseError::InvalidSessionTimeout, &req.member_id);
            }
            let group = groups.entry(group_id).or_insert_with(Group::new);
            let protocols: Vec<(String, Bytes)> = req
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect();
            let compatible = group.members.is_empty()
                || (group.protocol_type == req.protocol_type.as_str()
                    && protocols.iter().any(|(name, _)| {
                        group
                            .members
                            .iter()
                            .all(|m| m.protocols.iter().any(|p| &p.0 == name))
                    }));
            if protocols.is_empty() || !compatible {
                return join_error(ResponseError::InconsistentGroupProtocol, &req.member_id);
            }
            let instance_id = req.group_instance_id.as_ref().map(|s| s.to_string());
            let mut member_id = req.member_id.to_string();
            if member_id.is_empty() {
                // A static member coming back replaces its previous incarnation.
                if let Some(instance) = &instance_id {
                    if let Some(old) = group
                        .members
                        .iter()
                        .find(|m| m.instance_id.as_ref() == Some(instance))
                    {
                        let old = old.id.clone();
                        group.remove_member(&old, self.settings.initial_rebalance_delay);
                    }
                }
                member_id = format!("{client_id}-{}", uuid::Uuid::new_v4());
                group.members.push(Member {
                    id: member_id.clone(),
                    instance_id,
                    client_id: client_id.to_string(),
                    client_host: client_host.to_string(),
                    session_timeout: Duration::from_millis(req.session_timeout_ms as u64),
                    rebalance_timeout: Duration::from_millis(
                        req.rebalance_timeout_ms.max(req.session_timeout_ms) as u64,
                    ),
                    protocols,
                    assignment: Bytes::new(),
                    last_seen: Instant::now(),
                });
            } else {
                let Some(member) = group.member(&member_id) else {
                    return join_error(ResponseError::UnknownMemberId, &member_id);
                };
                member.protocols = protocols;
                member.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
                member.rebalance_timeout = Duration::from_millis(
                    req.rebalance_timeout_ms.max(req.session_timeout_ms) as u64,
                );
                member.last_seen = Instant::now();
            }
            group.protocol_type = req.protocol_type.to_string();
            if group.state != State::PreparingRebalance {
                group.begin_rebalance(self.settings.initial_rebalance_delay);
            }
            let (sender, receiver) = oneshot::channel();
            group.join_waiters.insert(member_id.clone(), sender);
            group.try_complete_join(false);
            (receiver, member_id)
        };
        let (receiver, member_id) = receiver;
        receiver
            .await
            .unwrap_or_else(|_| join_error(ResponseError::UnknownMemberId, &member_id))
    }

    pub async fn sync(&self, req: SyncGroupRequest) -> SyncGroupResponse {
        let receiver = {
            let mut groups = self.groups();
            let Some(group) = groups.get_mut(req.group_id.as_str()) else {
                return sync_error(ResponseError::UnknownMemberId);
            };
            let protocol_type = group.protocol_type.clone();
            let protocol = group.protocol.clone();
            let generation = group.generation;
            let state = group.state;
            let leader = group.leader.clone();
            let Some(member) = group.member(&req.member_id) else {
                return sync_error(ResponseError::UnknownMemberId);
            };
            member.last_seen = Instant::now();
            if req.generation_id != generation {
                return sync_error(ResponseError::IllegalGeneration);
            }
            if req
                .protocol_type
                .as_ref()
                .is_some_and(|t| t.as_str() != protocol_type)
                || req
                    .protocol_name
                    .as_ref()
                    .is_some_and(|n| Some(n.as_str()) != protocol.as_deref())
            {
                return sync_error(ResponseError::InconsistentGroupProtocol);
            }
            let done = |assignment: Bytes| {
                SyncGroupResponse::default()
                    .with_protocol_type(Some(str_bytes(&protocol_type)))
                    .with_protocol_name(protocol.as_deref().map(str_bytes))
                    .with_assignment(assignment)
            };
            match state {
                State::PreparingRebalance => return sync_error(ResponseError::RebalanceInProgress),
                State::Empty => return sync_error(ResponseError::UnknownMemberId),
                State::Stable => return done(member.assignment.clone()),
                State::CompletingRebalance => {}
            }
            let (sender, receiver) = oneshot::channel();
            group.sync_waiters.insert(req.member_id.to_string(), sender);
            if leader.as_deref() == Some(req.member_id.as_str()) {
                let assignments: HashMap<&str, &Bytes> = req
                    .assignments
                    .iter()
                    .map(|a| (a.member_id.as_str(), &a.assignment))
                    .collect();
                for member in &mut group.members {
                    member.assignment = assignments
                        .get(member.id.as_str())
                        .map(|b| (*b).clone())
                        .unwrap_or_default();
                }
                group.state = State::Stable;
                let members = &group.members;
                for (member_id, waiter) in group.sync_waiters.drain() {
                    let assignment = members
                        .iter()
                        .find(|m| m.id == member_id)
                        .map(|m| m.assignment.clone())
                        .unwrap_or_default();
                    let _ = waiter.send(done(assignment));
                }
            }
            receiver
        };
        receiver
            .await
            .unwrap_or_else(|_| sync_error(ResponseError::RebalanceInProgress))
    }

    /// Returns the heartbeat's error, if any.
    pub fn heartbeat(&self, req: &HeartbeatRequest) -> Option<ResponseError> {
        let mut groups = self.groups();
        let Some(group) = groups.get_mut(req.group_id.as_str()) else {
            return Some(ResponseError::UnknownMemberId);
        };
        let (generation, state) = (group.generation, group.state);
        let Some(member) = group.member(&req.member_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        member.last_seen = Instant::now();
        if req.generation_id != generation {
            return Some(ResponseError::IllegalGeneration);
        }
        match state {
            State::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            State::Empty => Some(ResponseError::UnknownMemberId),
            State::CompletingRebalance | State::Stable => None,
        }
    }

    pub fn leave(&self, req: &LeaveGroupRequest) -> LeaveGroupResponse {
        let mut groups = self.groups();
        let Some(group) = groups.get_mut(req.group_id.as_str()) else {
            return LeaveGroupResponse::default()
                .with_error_code(ResponseError::UnknownMemberId.code());
        };
        let leaving: Vec<(String, Option<String>)> = if req.members.is_empty() {
            vec![(req.member_id.to_string(), None)]
        } else {
            req.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.as_ref().map(|s| s.to_string()),
                    )
                })
                .collect()
        };
        let mut responses = Vec::new();
        let mut error = ResponseError::UnknownMemberId.code();
        for (member_id, instance_id) in leaving {
            let found = group
                .members
                .iter()
                .find(|m| {
                    (!member_id.is_empty() && m.id == member_id)
                        || (instance_id.is_some() && m.instance_id == instance_id)
                })
                .map(|m| m.id.clone());
            let code = match found {
                Some(id) => {
                    group.remove_member(&id, self.settings.initial_rebalance_delay);
                    error = 0;
                    0
                }
                None => ResponseError::UnknownMemberId.code(),
            };
            responses.push(
                MemberResponse::default()
                    .with_member_id(str_bytes(&member_id))
                    .with_group_instance_id(instance_id.as_deref().map(str_bytes))
                    .with_error_code(code),
            );
        }
        let top_level = if req.members.is_empty() { error } else { 0 };
        LeaveGroupResponse::default()
            .with_error_code(top_level)
            .with_members(responses)
    }

    /// Validates the committer and stores the offsets; returns the group-level error, if any.
    pub fn commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        offsets: Vec<CommitRequest>,
    ) -> Result<Option<Arc<File>>, ResponseError> {
        let mut groups = self.groups();
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let group = groups
            .entry(group_id.to_string())
            .or_insert_with(Group::new);
        if generation >= 0 || !member_id.is_empty() {
            let (current, state) = (group.generation, group.state);
            let Some(member) = group.member(member_id) else {
                return Err(ResponseError::UnknownMemberId);
            };
            member.last_seen = Instant::now();
            if generation != current {
                return Err(ResponseError::IllegalGeneration);
            }
            if state == State::CompletingRebalance {
                return Err(ResponseError::RebalanceInProgress);
            }
        } else if !group.members.is_empty() {
            return Err(ResponseError::UnknownMemberId);
        }
        let records: Vec<OffsetRecord> = offsets
            .iter()
            .map(|c| OffsetRecord::Commit {
                group: group_id.to_string(),
                topic: c.topic.clone(),
                partition: c.partition,
                committed: c.committed.clone(),
            })
            .collect();
        let file = self.store.append(&records).map_err(|e| {
            tracing::error!("cannot store committed offsets: {e}");
            ResponseError::KafkaStorageError
        })?;
        for c in offsets {
            group.offsets.insert((c.topic, c.partition), c.committed);
        }
        self.maybe_compact(&groups);
        Ok(file)
    }

    /// Committed offsets of a group: for the given partitions, or all of them.
    pub fn committed(
        &self,
        group_id: &str,
        partitions: Option<Vec<(String, i32)>>,
    ) -> Vec<(String, i32, Option<Committed>)> {
        let groups = self.groups();
        let offsets = groups.get(group_id).map(|g| &g.offsets);
        match partitions {
            Some(wanted) => wanted
                .into_iter()
                .map(|(t, p)| {
                    let committed = offsets.and_then(|o| o.get(&(t.clone(), p)).cloned());
                    (t, p, committed)
                })
                .collect(),
            None => offsets
                .into_iter()
                .flatten()
                .map(|((t, p), c)| (t.clone(), *p, Some(c.clone())))
                .collect(),
        }
    }

    pub fn describe(&self, group_id: &GroupId) -> DescribedGroup {
        let groups = self.groups();
        let Some(group) = groups.get(group_id.as_str()).filter(|g| !g.is_dead()) else {
            return DescribedGroup::default()
                .with_group_id(group_id.clone())
                .with_group_state(str_bytes("Dead"));
        };
        let stable = group.state == State::Stable;
        let protocol = group.protocol.clone().unwrap_or_default();
        DescribedGroup::default()
            .with_group_id(group_id.clone())
            .with_group_state(str_bytes(group.state.name()))
            .with_protocol_type(str_bytes(&group.protocol_type))
            .with_protocol_data(str_bytes(&protocol))
            .with_authorized_operations(i32::MIN)
            .with_members(
                group
                    .members
                    .iter()
                    .map(|m| {
                        let metadata = m.metadata_for(&protocol);
                        DescribedGroupMember::default()
                            .with_member_id(str_bytes(&m.id))
                            .with_group_instance_id(m.instance_id.as_deref().map(str_bytes))
                            .with_client_id(str_bytes(&m.client_id))
                            .with_client_host(str_bytes(&m.client_host))
                            .with_member_metadata(metadata)
                            .with_member_assignment(if stable {
                                m.assignment.clone()
                            } else {
                                Bytes::new()
                            })
                    })
                    .collect(),
            )
    }

    pub fn list(&self, states: &[String], types: &[String]) -> Vec<ListedGroup> {
        let groups = self.groups();
        let mut listed: Vec<ListedGroup> = groups
            .iter()
            .filter(|(_, g)| !g.is_dead())
            .filter(|(_, g)| {
                states.is_empty()
                    || states
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(g.state.name()))
            })
            .filter(|_| types.is_empty() || types.iter().any(|t| t.eq_ignore_ascii_case("classic")))
            .map(|(id, g)| {
                ListedGroup::default()
                    .with_group_id(GroupId(str_bytes(id)))
                    .with_protocol_type(str_bytes(if g.protocol_type.is_empty() {
                        "consumer"
                    } else {
                        &g.protocol_type
                    }))
                    .with_group_state(str_bytes(g.state.name()))
                    .with_group_type(str_bytes("classic"))
            })
            .collect();
        listed.sort_by(|a, b| a.group_id.as_str().cmp(b.group_id.as_str()));
        listed
    }

    /// Forgets the committed offsets of a deleted topic in every group.
    pub fn topic_deleted(&self, topic: &str) {
        let mut groups = self.groups();
        if let Err(e) = self.store.append(&[OffsetRecord::DeleteTopic {
            topic: topic.to_string(),
        }]) {
            tracing::error!("cannot record deletion of topic {topic} in the offset store: {e}");
        }
        for group in groups.values_mut() {
            group.offsets.retain(|(t, _), _| t != topic);
        }
        groups.retain(|_, g| !g.is_dead() || !g.members.is_empty());
    }

    /// Expires silent members and finishes rebalances whose time is up.
    pub fn tick(&self) {
        let now = Instant::now();
        let delay = self.settings.initial_rebalance_delay;
        let mut groups = self.groups();
        for group in groups.values_mut() {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|m| {
                    !group.join_waiters.contains_key(&m.id)
                        && now.duration_since(m.last_seen) > m.session_timeout
                })
                .map(|m| m.id.clone())
                .collect();
            for id in expired {
                tracing::info!(member = %id, "session timed out; removing member");
                group.remove_member(&id, delay);
            }
            let force = now >= group.rebalance_deadline;
            group.try_complete_join(force);
        }
    }

    fn maybe_compact(&self, groups: &HashMap<String, Group>) {
        let live: usize = groups.values().map(|g| g.offsets.len()).sum();
        if !self.store.needs_compaction(live) {
            return;
        }
        let records: Vec<OffsetRecord> = groups
            .iter()
            .flat_map(|(group, g)| {
                g.offsets.iter().map(
                    move |((topic, partition), committed)| OffsetRecord::Commit {
                        group: group.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        committed: committed.clone(),
                    },
                )
            })
            .collect();
        if let Err(e) = self.store.rewrite(&records) {
            tracing::warn!("offset store compaction failed, will retry later: {e}");
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum OffsetRecord {
    Commit {
        group: String,
        topic: String,
        partition: i32,
        committed: Committed,
    },
    DeleteTopic {
        topic: String,
    },
}

type OffsetMap = BTreeMap<(String, String, i32), Committed>;

/// Committed offsets as an append-only log of CRC-prefixed JSON lines.
///
/// A line is `crc32c-hex json`; loading stops at the first torn or corrupt line
/// and truncates there (only the tail can be torn). When dead lines outnumber
/// live offsets the file is rewritten to the live set and swapped in atomically:
/// compaction of the broker's own state.
pub struct OffsetStore {
    path: PathBuf,
    inner: Mutex<StoreFile>,
}

struct StoreFile {
    file: Arc<File>,
    lines: usize,
}

fn encode_line(record: &OffsetRecord) -> String {
    let json = serde_json::to_string(record).expect("serialisable");
    format!("{:08x} {json}\n", crc32c::crc32c(json.as_bytes()))
}

impl OffsetStore {
    fn open(path: &Path) -> io::Result<(OffsetStore, OffsetMap)> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let data = fs::read(path).or_else(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Ok(Vec::new())
            } else {
                Err(e)
            }
        })?;
        let mut offsets = OffsetMap::new();
        let mut valid = 0usize;
        let mut lines = 0usize;
        for line in data.split_inclusive(|&b| b == b'\n') {
            let Some(record) = decode_line(line) else {
                break;
            };
            match record {
                OffsetRecord::Commit {
                    group,
                    topic,
                    partition,
                    committed,
                } => {
                    offsets.insert((group, topic, partition), committed);
                }
                OffsetRecord::DeleteTopic { topic } => offsets.retain(|k, _| k.1 != topic),
            }
            valid += line.len();
            lines += 1;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        if valid < data.len() {
            tracing::warn!(path = %path.display(), dropped = data.len() - valid, "truncating torn tail of the offset store");
            file.set_len(valid as u64)?;
            file.sync_all()?;
        }
        let store = OffsetStore {
            path: path.to_path_buf(),
            inner: Mutex::new(StoreFile {
                file: Arc::new(file),
                lines,
            }),
        };
        Ok((store, offsets))
    }

    fn inner(&self) -> MutexGuard<'_, StoreFile> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends records in one write; returns the file for the caller to fsync under its policy.
    fn append(&self, records: &[OffsetRecord]) -> io::Result<Option<Arc<File>>> {
        let text: String = records.iter().map(encode_line).collect();
        let mut inner = self.inner();
        inner.file.as_ref().write_all(text.as_bytes())?;
        inner.lines += records.len();
        Ok(Some(inner.file.clone()))
    }

    fn needs_compaction(&self, live: usize) -> bool {
        let lines = self.inner().lines;
        lines > 1000 && lines > 4 * live
    }

    fn rewrite(&self, records: &[OffsetRecord]) -> io::Result<()> {
        let text: String = records.iter().map(encode_line).collect();
        let mut inner = self.inner();
        write_atomic(&self.path, text.as_bytes())?;
        inner.file = Arc::new(
            OpenOptions::new()
                .append(true)
                .read(true)
                .open(&self.path)?,
        );
        inner.lines = records.len();
        Ok(())
    }
}

fn decode_line(line: &[u8]) -> Option<OffsetRecord> {
    let line = line.strip_suffix(b"\n")?;
    let (crc, json) = (line.get(..8)?, line.get(9..)?);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    (crc32c::crc32c(json) == crc)
        .then(|| serde_json::from_slice(json).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }

    fn committed(offset: i64) -> Committed {
        Committed {
            offset,
            leader_epoch: -1,
            metadata: String::new(),
            commit_time_ms: now_ms(),
        }
    }

    #[test]
    fn offsets_survive_restart_torn_tail_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets.log");
        {
            let (store, _) = OffsetStore::open(&path).unwrap();
            for i in 0..1500 {
                let record = OffsetRecord::Commit {
                    group: "g".into(),
                    topic: "t".into(),
                    partition: 0,
                    committed: committed(i),
                };
                store.append(&[record]).unwrap();
            }
            assert!(store.needs_compaction(1));
            store
                .append(&[OffsetRecord::DeleteTopic {
                    topic: "gone".into(),
                }])
                .unwrap();
        }
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"0badc0de {\"op\":")
            .unwrap();
        let (store, offsets) = OffsetStore::open(&path).unwrap();
        assert_eq!(offsets[&("g".to_string(), "t".to_string(), 0)].offset, 1499);
        let record = OffsetRecord::Commit {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            committed: committed(1499),
        };
        store.rewrite(&[record]).unwrap();
        assert!(fs::metadata(&path).unwrap().len() < 200);
        let (_, offsets) = OffsetStore::open(&path).unwrap();
        assert_eq!(offsets.len(), 1);
    }
}
