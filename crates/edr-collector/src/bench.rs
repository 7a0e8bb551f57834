//! Entry points for the benchmarks under `benches/`: the ingest path from a decoded batch to
//! a committed SQLite transaction, without gRPC or TLS. Not a stable API.

use std::path::Path;

use edr_proto::v1::EventBatch;

use crate::ingest::{ValidBatch, validate};
use crate::store::codec::{EventCodec, Trainer};
use crate::store::{Store, SyncMode};

/// Largest batch the benchmarks validate, as `serve --max-records-per-batch` allows by default.
const MAX_RECORDS: usize = 50_000;

/// A Collector database opened the way `serve` opens it for ingest.
#[derive(Debug)]
pub struct IngestStore {
    store: Store,
    codec: EventCodec,
}

impl IngestStore {
    /// Creates the database in `data_dir`, with `synchronous=FULL` when `full_sync` is set and
    /// `NORMAL` otherwise.
    pub fn create(data_dir: &Path, full_sync: bool) -> anyhow::Result<Self> {
        let store = Store::create(data_dir)?;
        store.configure_for_ingest(if full_sync {
            SyncMode::Full
        } else {
            SyncMode::Normal
        })?;
        Ok(Self {
            store,
            codec: EventCodec::default(),
        })
    }

    /// Trains a compression dictionary from `batches`, stores it and compresses every later
    /// batch with it, as `serve` does after its first events. Returns the dictionary id.
    pub fn train(&mut self, batches: Vec<EventBatch>) -> anyhow::Result<u32> {
        let mut trainer = Trainer::default();
        for batch in batches {
            trainer.observe(&validate_batch(batch)?);
        }
        let (bytes, samples) = trainer
            .wait()
            .ok_or_else(|| anyhow::anyhow!("too few events to train a dictionary"))?;
        let dictionary =
            self.store
                .insert_dictionary(&bytes, samples, time::OffsetDateTime::now_utc())?;
        let id = dictionary.id();
        self.codec.publish(dictionary);
        Ok(id)
    }

    /// Validates and compresses `batches` of `sensor_id` as the streams do, then stores them in
    /// one transaction as the ingest writer stores a group. Returns the number of events
    /// inserted.
    pub fn ingest(&mut self, sensor_id: &str, batches: Vec<EventBatch>) -> anyhow::Result<u64> {
        let group = self.prepare(sensor_id, batches)?;
        self.commit(group)
    }

    /// Validates and compresses `batches` of `sensor_id` as the streams do, without storing
    /// them.
    pub fn prepare(&self, sensor_id: &str, batches: Vec<EventBatch>) -> anyhow::Result<Group> {
        let batches = batches
            .into_iter()
            .map(|batch| {
                let mut valid = validate_batch(batch)?;
                self.codec.compress(&mut valid)?;
                Ok((sensor_id.to_string(), valid))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Group(batches))
    }

    /// Stores a prepared group in one transaction, as the ingest writer does. Returns the
    /// number of events inserted.
    pub fn commit(&mut self, group: Group) -> anyhow::Result<u64> {
        let outcomes = self
            .store
            .ingest_group(&group.0, time::OffsetDateTime::now_utc())?;
        Ok(outcomes.iter().map(|outcome| outcome.events).sum())
    }
}

/// Validated and compressed batches, ready for [`IngestStore::commit`].
#[derive(Debug)]
pub struct Group(Vec<(String, ValidBatch)>);

/// Validates `batch` as the Telemetry service does; returns the number of records.
pub fn validate_only(batch: EventBatch) -> anyhow::Result<usize> {
    Ok(validate_batch(batch)?.records.len())
}

fn validate_batch(batch: EventBatch) -> anyhow::Result<ValidBatch> {
    Ok(validate(batch, MAX_RECORDS)?)
}
