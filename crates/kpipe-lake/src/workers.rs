//! Parsing and file writing off the polling thread.
//!
//! The sink's main thread only reads blocks of messages; a small pool of
//! workers turns them into rows and, at a flush, into Parquet files in the
//! lake. A partition always goes to the same worker, so its rows
//! stay in offset order, and every job reaches a worker in the order the main
//! thread sent it: a flush covers exactly the messages sent before it, and a
//! revocation is acknowledged only after the worker has finished everything
//! sent before it (including a flush that is still writing).

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};
use futures_util::{StreamExt, TryStreamExt};
use kpipe_kafka::feed::MessageBlock;
use kpipe_kafka::sink::{DeadLetters, Origin};

use crate::file::{Codec, PartitionBuffer, PartitionBy, TimeSource};
use crate::store::Lake;

/// What every worker needs: where and how to write, and the dead-letter topic.
pub(crate) struct Shared {
    pub topic: String,
    pub lake: Lake,
    pub runtime: tokio::runtime::Handle,
    pub partition_by: PartitionBy,
    pub time: TimeSource,
    pub codec: Codec,
    pub dead_letters: Mutex<DeadLetters>,
}

/// What a worker wrote for one flush.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Written {
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
    pub dead_lettered: u64,
}

pub(crate) struct Flushed {
    pub epoch: u64,
    pub result: Result<Written>,
}

enum Job {
    Rows(MessageBlock),
    Flush {
        epoch: u64,
    },
    Revoke {
        partitions: Vec<i32>,
        done: SyncSender<()>,
    },
}

/// The pool; dropping it lets the workers finish their queues and exit.
pub(crate) struct Workers {
    jobs: Vec<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    flushed: Mutex<Receiver<Flushed>>,
}

/// Blocks a worker may have queued before the main thread waits for it: each
/// holds up to a partition's share of a fetch (`max.partition.fetch.bytes`).
const QUEUED_BLOCKS: usize = 8;

impl Workers {
    pub fn start(count: usize, shared: Arc<Shared>) -> Result<Workers> {
        let (flushed_tx, flushed) = mpsc::channel();
        let mut jobs = Vec::new();
        let mut threads = Vec::new();
        for i in 0..count.max(1) {
            let (tx, rx) = mpsc::sync_channel(QUEUED_BLOCKS);
            let shared = shared.clone();
            let flushed_tx = flushed_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("lake-worker-{i}"))
                    .spawn(move || work(&rx, &flushed_tx, &shared))?,
            );
            jobs.push(tx);
        }
        Ok(Workers {
            jobs,
            threads,
            flushed: Mutex::new(flushed),
        })
    }

    pub fn count(&self) -> usize {
        self.jobs.len()
    }

    fn send(&self, worker: usize, job: Job) -> Result<()> {
        self.jobs[worker]
            .send(job)
            .map_err(|_| anyhow!("a lake worker stopped unexpectedly"))
    }

    /// Queues a block for parsing (waits while that worker is far behind).
    pub fn rows(&self, block: MessageBlock) -> Result<()> {
        self.send(block.partition as usize % self.count(), Job::Rows(block))
    }

    /// Asks every worker to write what it has; each answers once with `epoch`.
    pub fn flush(&self, epoch: u64) -> Result<()> {
        (0..self.count()).try_for_each(|w| self.send(w, Job::Flush { epoch }))
    }

    /// Drops the rows of revoked partitions, after whatever the workers are doing.
    pub fn revoke(&self, partitions: &[i32]) {
        let (done_tx, done) = mpsc::sync_channel(self.count());
        let mut asked = 0;
        for w in 0..self.count() {
            let job = Job::Revoke {
                partitions: partitions.to_vec(),
                done: done_tx.clone(),
            };
            asked += usize::from(self.send(w, job).is_ok());
        }
        drop(done_tx);
        for _ in 0..asked {
            if done.recv().is_err() {
                break;
            }
        }
    }

    /// The next flush answer, waiting up to `timeout`.
    pub fn next_flushed(&self, timeout: std::time::Duration) -> Result<Option<Flushed>> {
        let flushed = self.flushed.lock().map_err(|_| anyhow!("poisoned"))?;
        let stopped = || anyhow!("the lake workers stopped unexpectedly");
        // The polling thread asks with no wait after every message: try_recv reads no clock.
        if timeout.is_zero() {
            return match flushed.try_recv() {
                Ok(f) => Ok(Some(f)),
                Err(mpsc::TryRecvError::Empty) => Ok(None),
                Err(mpsc::TryRecvError::Disconnected) => Err(stopped()),
            };
        }
        match flushed.recv_timeout(timeout) {
            Ok(f) => Ok(Some(f)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(stopped()),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.jobs.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn work(jobs: &Receiver<Job>, flushed: &Sender<Flushed>, shared: &Shared) {
    let mut buffers: BTreeMap<i32, PartitionBuffer> = BTreeMap::new();
    // Rows per partition at the last flush: the next buffer's size, give or take.
    let mut last_rows: BTreeMap<i32, usize> = BTreeMap::new();
    let mut dead_lettered = 0u64;
    // A dead letter that could not be sent fails the next flush, so nothing is committed past it.
    let mut failure: Option<anyhow::Error> = None;
    for job in jobs {
        match job {
            Job::Rows(block) => {
                let buffer = buffers.entry(block.partition).or_insert_with(|| {
                    PartitionBuffer::with_capacity(
                        last_rows.get(&block.partition).copied().unwrap_or_default(),
                    )
                });
                for m in &block.messages {
                    let payload = block.payload(m);
                    let timestamp = (m.timestamp >= 0).then_some(m.timestamp);
                    if let Err(e) = buffer.push(payload, m.offset, timestamp, &shared.time) {
                        dead_lettered += 1;
                        let sent = shared
                            .dead_letters
                            .lock()
                            .map_err(|_| anyhow!("poisoned"))
                            .and_then(|mut d| {
                                let origin = Origin {
                                    topic: &shared.topic,
                                    partition: block.partition,
                                    offset: m.offset,
                                    key: block.key(m),
                                    payload,
                                    headers: block.headers(m),
                                };
                                d.send(&origin, &e.0)
                            });
                        if let Err(e) = sent {
                            failure.get_or_insert(e);
                        }
                    }
                }
            }
            Job::Flush { epoch } => {
                let result = match failure.take() {
                    Some(e) => Err(e),
                    None => {
                        last_rows.extend(buffers.iter().map(|(p, b)| (*p, b.rows())));
                        write(shared, std::mem::take(&mut buffers))
                    }
                    .map(|mut w| {
                        w.dead_lettered = std::mem::take(&mut dead_lettered);
                        w
                    }),
                };
                if flushed.send(Flushed { epoch, result }).is_err() {
                    return;
                }
            }
            Job::Revoke { partitions, done } => {
                for p in partitions {
                    buffers.remove(&p);
                    last_rows.remove(&p);
                }
                let _ = done.send(());
            }
        }
    }
}

/// Encodes every buffered partition and writes its files, several uploads at a time.
fn write(shared: &Shared, buffers: BTreeMap<i32, PartitionBuffer>) -> Result<Written> {
    let mut files = Vec::new();
    for (partition, buffer) in buffers {
        files.extend(buffer.into_files(
            &shared.topic,
            partition,
            shared.partition_by,
            shared.codec,
        )?);
    }
    let lake = &shared.lake;
    let written: Vec<(usize, u64)> = shared.runtime.block_on(async {
        futures_util::stream::iter(files)
            .map(|(name, bytes, rows)| async move {
                let size = bytes.len() as u64;
                lake.put(&name.relative(), bytes).await?;
                Ok::<_, anyhow::Error>((rows, size))
            })
            .buffer_unordered(8)
            .try_collect()
            .await
    })?;
    Ok(Written {
        rows: written.iter().map(|w| w.0 as u64).sum(),
        files: written.len() as u64,
        bytes: written.iter().map(|w| w.1).sum(),
        dead_lettered: 0,
    })
}
