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
use crate::store::codec::Trainer;
use crate::store::ingest::IngestOutcome;

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
                store_group(&shared, group, &mut trainer);
            }
            tracing::info!("ingest writer stopped");
        })
}

fn store_group(shared: &Shared, group: Vec<IngestRequest>, trainer: &mut Trainer) {
    let (items, replies): (Vec<_>, Vec<_>) = group
        .into_iter()
        .map(|request| ((request.sensor_id, request.batch), request.reply))
        .unzip();
    let started = Instant::now();
    let result: Vec<Result<IngestOutcome, String>> = match shared.ingest.lock() {
        Ok(mut store) => {
            let now = time::OffsetDateTime::now_utc();
            match store.ingest_group(&items, now) {
                Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                // Store each batch alone, so that a batch that cannot be stored fails only
                // its own stream.
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
