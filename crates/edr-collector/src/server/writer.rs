//! The ingest writer: one thread that stores validated batches with group commit.
//!
//! Streams validate their batches in parallel and queue them here. The thread takes every
//! queued batch (up to [`MAX_GROUP_BATCHES`] batches or [`MAX_GROUP_RECORDS`] records),
//! stores them in one transaction and answers each stream after the commit. With `--sync
//! full` one fsync then covers every stream that was waiting, instead of one per batch. If
//! the transaction fails, every batch of the group gets the error and none is acked.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::Shared;
use crate::ingest::ValidBatch;
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
    pub(crate) reply: oneshot::Sender<Result<IngestOutcome, String>>,
}

/// Starts the writer thread; it ends when every sender is dropped.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<IngestRequest>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ingest-writer".into())
        .spawn(move || {
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
                store_group(&shared, group);
            }
            tracing::info!("ingest writer stopped");
        })
}

fn store_group(shared: &Shared, group: Vec<IngestRequest>) {
    let (items, replies): (Vec<_>, Vec<_>) = group
        .into_iter()
        .map(|request| ((request.sensor_id, request.batch), request.reply))
        .unzip();
    let started = Instant::now();
    let result = match shared.ingest.lock() {
        Ok(mut store) => store
            .ingest_group(&items, time::OffsetDateTime::now_utc())
            .map_err(|err| err.to_string()),
        Err(_) => Err("database lock poisoned".to_string()),
    };
    shared.metrics.observe_store_latency(started.elapsed());

    match result {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A stream that ended meanwhile no longer needs its ack.
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(err) => {
            tracing::error!(batches = items.len(), error = %err, "failed to store a group of batches; the sensors resend them");
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}
