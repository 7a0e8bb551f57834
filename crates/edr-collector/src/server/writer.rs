//! The ingest writer: one thread that stores validated batches with group commit.
//!
//! Streams validate their batches in parallel and queue them here. The thread takes every
//! queued batch (up to [`MAX_GROUP_BATCHES`] batches or [`MAX_GROUP_RECORDS`] records),
//! stores them in one transaction and replies to each stream after the commit. With `--sync
//! full` one fsync then covers every stream that was waiting, instead of one per batch. If
//! the group's transaction fails, the writer stores each batch of the group in a transaction
//! of its own, so a batch that cannot be stored fails only its own stream. Until the database
//! has a compression dictionary, the writer also samples the events it stores and trains one
//! (see [`crate::store::codec`]).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::Shared;
use crate::ingest::ValidBatch;
use crate::store::Store;
use crate::store::codec::Trainer;
use crate::store::ingest::{IngestOutcome, WalState};

/// Most batches stored in one transaction.
const MAX_GROUP_BATCHES: usize = 512;

/// Records after which a group takes no further batch.
const MAX_GROUP_RECORDS: usize = 100_000;

/// Batches waiting for the writer; senders wait when it is full.
pub(crate) const QUEUE_CAPACITY: usize = 1024;

/// One batch for the writer and the channel for its outcome.
#[derive(Debug)]
pub(crate) struct IngestRequest {
    pub(crate) sensor_id: String,
    pub(crate) batch: ValidBatch,
    pub(crate) reply: oneshot::Sender<Stored>,
}

/// The writer's reply: the outcome, and the batch handed back so that the stream's task, not
/// the single writer thread, spends the time to free it.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) outcome: Result<IngestOutcome, String>,
    pub(crate) batch: ValidBatch,
}

/// Starts the writer thread; it ends when every sender is dropped.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<IngestRequest>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ingest-writer".into())
        .spawn(move || {
            let mut trainer = Trainer::default();
            let mut wal_deleted = false;
            let mut last_wal_warning = None;
            while let Some(first) = queue.blocking_recv() {
                let mut records = first.batch.records.len();
                let mut group = vec![first];
                while group.len() < MAX_GROUP_BATCHES && records < MAX_GROUP_RECORDS {
                    match queue.try_recv() {
                        Ok(request) => {
                            records += request.batch.records.len();
                            group.push(request);
                        }
                        Err(_) => break,
                    }
                }
                store_group(
                    &shared,
                    group,
                    &mut trainer,
                    &mut wal_deleted,
                    &mut last_wal_warning,
                );
            }
            tracing::info!("ingest writer stopped");
        })
}

/// WAL size above which the writer warns that checkpoints do not keep up: four times the
/// 64 MiB at which the ingest connection checkpoints. SQLite's automatic checkpoints fail
/// without an error, for example while the database file is not writable. A reader that keeps
/// an old snapshot open for a long time also delays them.
const WAL_WARNING_BYTES: u64 = 256 * 1024 * 1024;

/// Minimum time between two warnings about the WAL size.
const WAL_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Logs that the WAL has grown to `bytes`, unless the last such warning, recorded in
/// `last_warning`, is more recent than [`WAL_WARNING_INTERVAL`].
fn warn_large_wal(bytes: u64, last_warning: &mut Option<Instant>) {
    if last_warning.is_some_and(|at| at.elapsed() < WAL_WARNING_INTERVAL) {
        return;
    }
    *last_warning = Some(Instant::now());
    tracing::warn!(
        wal_mib = bytes / (1024 * 1024),
        "collector.db-wal has grown far beyond the 64 MiB at which serve checkpoints, so checkpoints are failing or held back: check that collector.db is writable and that no reader, such as a long export, keeps the database open; the WAL keeps growing until then"
    );
}

/// Reason given for every batch once the WAL file was deleted under `serve`.
const WAL_DELETED: &str = "the Collector's database file collector.db-wal was deleted while serve ran, so it stores nothing more: restart serve";

fn store_group(
    shared: &Shared,
    group: Vec<IngestRequest>,
    trainer: &mut Trainer,
    wal_deleted: &mut bool,
    last_wal_warning: &mut Option<Instant>,
) {
    let (items, replies): (Vec<_>, Vec<_>) = group
        .into_iter()
        .map(|request| ((request.sensor_id, request.batch), request.reply))
        .unzip();
    let started = Instant::now();
    let result = match shared.ingest.lock() {
        Ok(_) if *wal_deleted => vec![Err(WAL_DELETED.to_string()); items.len()],
        Ok(mut store) => {
            let result = store_batches(&mut store, &items);
            // Checked after the commit: a commit that went into a deleted WAL must not be
            // acknowledged.
            match store.wal_state() {
                WalState::Deleted => {
                    *wal_deleted = true;
                    rescue_deleted_wal(&store);
                    vec![Err(WAL_DELETED.to_string()); items.len()]
                }
                WalState::Bytes(bytes) if bytes > WAL_WARNING_BYTES => {
                    warn_large_wal(bytes, last_wal_warning);
                    result
                }
                _ => result,
            }
        }
        Err(_) => vec![Err("database lock poisoned".to_string()); items.len()],
    };
    shared.metrics.observe_store_latency(started.elapsed());

    for ((sensor_id, batch), (reply, outcome)) in
        items.into_iter().zip(replies.into_iter().zip(result))
    {
        if let Err(err) = &outcome {
            tracing::error!(%sensor_id, last_seq = batch.last_seq, error = %err, "failed to store a batch; the sensor resends it");
        }
        if outcome.is_ok() && !shared.codec.has_dictionary() {
            trainer.observe(&batch);
        }
        // A stream that ended meanwhile no longer needs its ack.
        let _ = reply.send(Stored { outcome, batch });
    }
    if let Some((bytes, samples)) = trainer.poll() {
        adopt_dictionary(shared, &bytes, samples);
    }
}

/// Stores `items` in one transaction or, when that fails, each batch in a transaction of its
/// own, so that a batch that cannot be stored fails only its own stream.
fn store_batches(
    store: &mut Store,
    items: &[(String, ValidBatch)],
) -> Vec<Result<IngestOutcome, String>> {
    let now = time::OffsetDateTime::now_utc();
    match store.ingest_group(items, now) {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(err) if items.len() > 1 => {
            tracing::warn!(batches = items.len(), error = %err, "failed to store a group of batches; storing them one by one");
            items
                .iter()
                .map(|item| {
                    store
                        .ingest_group(std::slice::from_ref(item), now)
                        .map_err(|err| err.to_string())
                        .and_then(|mut outcomes| {
                            outcomes.pop().ok_or_else(|| "no outcome".to_string())
                        })
                })
                .collect()
        }
        Err(err) => vec![Err(err.to_string())],
    }
}

/// Copies into the database file the commits that are only in a WAL file deleted by another
/// program, while `serve` still has it open, and logs the result. The caller acknowledges
/// nothing more: a sensor resends after `serve` restarts, and the high-water mark drops what
/// the checkpoint saved.
fn rescue_deleted_wal(store: &Store) {
    match store.checkpoint_full() {
        Ok(true) => tracing::error!(
            "collector.db-wal was deleted while serve ran; the commits it contained were copied into collector.db, and serve stores nothing more until it restarts"
        ),
        Ok(false) => tracing::error!(
            "collector.db-wal was deleted while serve ran; readers kept some of the commits it contained from being copied into collector.db, and serve stores nothing more until it restarts"
        ),
        Err(err) => tracing::error!(
            error = %err,
            "collector.db-wal was deleted while serve ran, and copying the commits it contained into collector.db failed; serve stores nothing more until it restarts"
        ),
    }
}

/// Commits a trained dictionary and then hands it to the streams, so that no event compressed
/// with it is committed before it is.
fn adopt_dictionary(shared: &Shared, bytes: &[u8], samples: usize) {
    let stored = match shared.ingest.lock() {
        Ok(store) => store.insert_dictionary(bytes, samples, time::OffsetDateTime::now_utc()),
        Err(_) => return,
    };
    match stored {
        Ok(dictionary) => {
            tracing::info!(
                dictionary_id = dictionary.id(),
                samples,
                bytes = bytes.len(),
                "trained a compression dictionary; new events are stored compressed"
            );
            shared.codec.publish(dictionary);
        }
        Err(err) => {
            tracing::warn!(error = %err, "could not store the compression dictionary; events stay uncompressed");
        }
    }
}
