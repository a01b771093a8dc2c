//! The running broker: listener, connections, and background housekeeping.
//!
//! Each connection handles its requests one at a time, in order, as Kafka does
//! (a client pipelines; the broker answers in sequence). Requests are split by
//! `tokio_util`'s length-delimited codec and decoded by `kafka-protocol`, which
//! also encodes the answers, except fetch answers: those are written by hand
//! around the record sets read from the log and sent with vectored writes
//! (`api::frame`).

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use crate::api::Reply;
use crate::config::{BrokerConfig, FsyncPolicy};
use crate::groups::{GroupCoordinator, GroupSettings};
use crate::producer_ids::ProducerIds;
use crate::storage::write_atomic;
use crate::topics::TopicRegistry;

/// Largest request accepted, as Kafka's `socket.request.max.bytes`.
const MAX_REQUEST_BYTES: usize = 100 * 1024 * 1024;

/// State shared by every connection.
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub host: String,
    pub port: i32,
    pub cluster_id: String,
    pub topics: TopicRegistry,
    pub groups: GroupCoordinator,
    pub producer_ids: ProducerIds,
    /// Bumped after every append so that long-polling fetches wake up.
    pub appended: watch::Sender<u64>,
}

impl Shared {
    pub fn notify_appended(&self) {
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Makes `file` durable if the fsync policy says acknowledgements wait for disk.
    pub async fn sync_if_required(&self, files: Vec<Arc<File>>) -> std::io::Result<()> {
        if self.config.fsync != FsyncPolicy::Always || files.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || files.iter().try_for_each(|f| f.sync_data()))
            .await
            .map_err(std::io::Error::other)?
    }

    fn sync_all(&self) {
        for topic in self.topics.list() {
            for partition in topic.partitions() {
                if let Err(e) = partition.log().sync() {
                    tracing::error!(topic = %topic.name, partition = partition.index, "fsync failed: {e}");
                }
            }
        }
    }
}

/// A running broker. Dropping it without [`Broker::shutdown`] stops the tasks
/// abruptly, which the storage survives like any crash.
pub struct Broker {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    _lock: File,
}

impl Broker {
    /// Opens (or creates) the data directory, recovers it, and starts listening.
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Broker> {
        fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        let lock = File::create(config.data_dir.join(".lock"))?;
        lock.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "data directory {} is in use by another kpipe broker",
                config.data_dir.display()
            )
        })?;
        let state_dir = config.data_dir.join("state");
        fs::create_dir_all(&state_dir)?;
        let cluster_id = cluster_id(&state_dir)?;
        let topics = TopicRegistry::open(&config.data_dir)?;
        let groups = GroupCoordinator::open(
            &state_dir,
            GroupSettings {
                initial_rebalance_delay: config.group_initial_rebalance_delay,
                min_session_timeout_ms: config.group_min_session_timeout_ms,
                max_session_timeout_ms: config.group_max_session_timeout_ms,
            },
        )?;
        let producer_ids = ProducerIds::open(&state_dir)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let host = config
            .advertised_host
            .clone()
            .unwrap_or_else(|| local_addr.ip().to_string());
        let shared = Arc::new(Shared {
            host,
            port: local_addr.port() as i32,
            cluster_id,
            topics,
            groups,
            producer_ids,
            appended: watch::channel(0).0,
            config,
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, shared.clone(), stopped.clone()));
        tasks.spawn(housekeeping(shared.clone(), stopped));
        tracing::debug!(%local_addr, data = %shared.config.data_dir.display(), fsync = %shared.config.fsync, "broker started");
        Ok(Broker {
            shared,
            local_addr,
            stop,
            tasks,
            _lock: lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The `bootstrap.servers` string for clients.
    pub fn bootstrap(&self) -> String {
        format!("{}:{}", self.shared.host, self.shared.port)
    }

    /// Stops accepting, lets each connection finish its current request, and
    /// flushes every log to disk.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("connections did not finish within 10 s; closing them");
            self.tasks.abort_all();
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.sync_all()).await?;
        tracing::debug!("broker stopped");
        Ok(())
    }
}

fn cluster_id(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join("cluster-id");
    if let Ok(id) = fs::read_to_string(&path) {
        return Ok(id.trim().to_string());
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..22].to_string();
    write_atomic(&path, id.as_bytes())?;
    Ok(id)
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve(stream, peer, shared.clone(), stopped.clone()));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_REQUEST_BYTES)
        .new_codec();
    let (requests, mut replies) = stream.into_split();
    let mut framed = FramedRead::new(requests, codec);
    let client_host = format!("/{}", peer.ip());
    loop {
        let frame = tokio::select! {
            frame = framed.next() => frame,
            _ = stopped.changed() => break,
        };
        let frame = match frame {
            Some(Ok(frame)) => frame.freeze(),
            Some(Err(e)) => {
                tracing::debug!(%peer, "closing connection: {e}");
                break;
            }
            None => break,
        };
        match crate::api::handle(&shared, frame, &client_host).await {
            Reply::Send(mut response) => {
                if let Err(e) = replies.write_all_buf(&mut response).await {
                    tracing::debug!(%peer, "closing connection: {e}");
                    break;
                }
            }
            Reply::Silent => {}
            Reply::Close => break,
        }
    }
}

/// Retention, group session expiry, and the interval fsync policy.
async fn housekeeping(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut groups_tick = tokio::time::interval(Duration::from_millis(100));
    let mut retention_tick = tokio::time::interval(shared.config.housekeeping_interval);
    let fsync_every = match shared.config.fsync {
        FsyncPolicy::Interval(every) => every,
        _ => Duration::from_secs(3600),
    };
    let mut fsync_tick = tokio::time::interval(fsync_every);
    loop {
        tokio::select! {
            _ = groups_tick.tick() => shared.groups.tick(),
            _ = retention_tick.tick() => {
                let shared = shared.clone();
                let _ = tokio::task::spawn_blocking(move || enforce_retention(&shared)).await;
            }
            _ = fsync_tick.tick(), if matches!(shared.config.fsync, FsyncPolicy::Interval(_)) => {
                let shared = shared.clone();
                let _ = tokio::task::spawn_blocking(move || shared.sync_all()).await;
            }
            _ = stopped.changed() => break,
        }
    }
}

fn enforce_retention(shared: &Shared) {
    for topic in shared.topics.list() {
        let config = topic.log_config();
        for partition in topic.partitions() {
            match partition.log().enforce_retention(&config) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(topic = %topic.name, partition = partition.index, segments = n, "retention deleted segments")
                }
                Err(e) => {
                    tracing::error!(topic = %topic.name, partition = partition.index, "retention failed: {e}")
                }
            }
        }
    }
}
