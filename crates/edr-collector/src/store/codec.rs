//! Compression of stored event JSON with a zstd dictionary trained on the Collector's traffic.
//!
//! An OCSF event is about a kilobyte of JSON, most of it field names and values that recur in
//! every event of its class. Compressed on its own, an event shrinks by half. With a
//! dictionary of those recurring strings it shrinks about fivefold to eightfold. Compressed
//! together with its neighbours from the same batch, up to [`FRAME_EVENTS`] of them, it
//! shrinks about twentyfold, for less than half the CPU time per event (ADR 0014).
//!
//! Each event keeps a row of its own in `events`, with its indexed columns. Where its JSON is:
//! - `frame_index` set (schema version 7 and later): in the frame `frame_id` of the `frames`
//!   table, at that position. `frames.data` is a zstd frame of the events' JSON back to back,
//!   then where each ends and how many there are (see [`FrameBuilder`]). The row's `json` is an
//!   empty BLOB.
//! - otherwise in `json`: the JSON text (events stored before a dictionary existed, larger
//!   than [`MAX_EVENT_BYTES`], or of schema version 4 and older), or a zstd frame of the one
//!   event (schema versions 5 and 6).
//!
//! Every zstd frame names its dictionary, from the `dictionaries` table, by id and carries a
//! checksum of its content, so a damaged frame is reported rather than read wrongly. Reading
//! one event decompresses its whole frame. Readers keep up to 64 MiB of recently read frames,
//! so a scan in time order decompresses each frame once even while it alternates between the
//! frames of many sensors.
//!
//! A new database has no dictionary. The ingest writer copies the first [`SAMPLE_EVENTS`]
//! stored events into a [`Trainer`], which trains a dictionary of [`DICTIONARY_BYTES`] on a
//! thread of its own. The writer commits the dictionary to `dictionaries` and only then
//! publishes it to the streams, which compress each batch after validating it. An event
//! compressed with a dictionary is therefore never committed before that dictionary is.
//! Readers decompress with [`Dictionaries`], and SQL reads the JSON through the function
//! [`JSON_FUNCTION`], which returns NULL for a row it cannot read.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use prost::bytes::Bytes;
use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use zstd::dict::{DecoderDictionary, EncoderDictionary};
use zstd::zstd_safe::{CDict, DCtx, DDict};

use crate::ingest::{EventBody, Record, ValidBatch};

/// Size of a trained dictionary.
pub(crate) const DICTIONARY_BYTES: usize = 64 * 1024;

/// Events sampled to train a dictionary.
pub(crate) const SAMPLE_EVENTS: usize = 4_000;

/// Sampled bytes after which training starts even with fewer events.
const SAMPLE_BYTES: usize = 16 * 1024 * 1024;

/// Trainings tried before the writer gives up and stores plain JSON until it restarts.
const MAX_ATTEMPTS: u32 = 3;

/// zstd level of stored events. On the recorded sample events, with a trained dictionary,
/// level 1 reached a ratio of 8.0 at 1.6 µs per event and level 3 a ratio of 8.6 at 1.8 µs.
const LEVEL: i32 = 1;

/// Largest event that is compressed; larger ones are stored as text. A stored frame that
/// claims more is treated as damage.
const MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;

/// Largest event copied into the training samples. zstd trains on samples of typical
/// size; a few huge events would make training fail.
const MAX_SAMPLE_EVENT_BYTES: usize = 64 * 1024;

/// Largest decompressed frame: one event of the largest size, and its trailer.
const MAX_FRAME_BYTES: usize = MAX_EVENT_BYTES + 8;

/// SQL function that returns a stored event as JSON text, called on [`STORED_COLUMNS`]:
/// `event_json(json, frame_index, frame data)`.
pub(crate) const JSON_FUNCTION: &str = "event_json";

/// The values of an `events` row that contain its JSON, in the order [`Dictionaries::stored`]
/// and [`JSON_FUNCTION`] take them. A row with a `frame_index` is in the frame `frame_id`.
/// Any other row has its JSON in `json`, as text or as a zstd frame of its own.
/// The values of an `events` row that [`Dictionaries::scanned`] takes. A scan selects the
/// frame's id rather than its data, so that a sort does not carry each row's whole frame.
pub(crate) const SCAN_COLUMNS: &str = "json, frame_index, frame_id";

pub(crate) const STORED_COLUMNS: &str =
    "json, frame_index, (SELECT data FROM frames WHERE frames.id = events.frame_id)";

/// Errors from compressing or reading a stored event.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error(
        "stored event is compressed with dictionary {id}, which is not in the dictionaries table"
    )]
    UnknownDictionary { id: u32 },
    #[error("stored event is compressed with dictionary {id}, which is damaged: {reason}")]
    DamagedDictionary { id: u32, reason: String },
    #[error("stored event is damaged: {0}")]
    Damaged(String),
    #[error("compressing an event failed: {0}")]
    Compress(std::io::Error),
    #[error("the trained dictionary is not valid: {0}")]
    InvalidDictionary(String),
}

/// A dictionary ready for compression.
pub(crate) struct Dictionary {
    id: u32,
    encoder: EncoderDictionary<'static>,
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionary").field("id", &self.id).finish()
    }
}

impl Dictionary {
    /// Prepares `bytes`, a trained zstd dictionary, for compression.
    pub(crate) fn new(bytes: &[u8]) -> Result<Self, CodecError> {
        let id = dictionary_id(bytes)?;
        // `EncoderDictionary::copy` panics on a dictionary zstd rejects; check first.
        if CDict::try_create(bytes, LEVEL).is_none() || DDict::try_create(bytes).is_none() {
            return Err(CodecError::InvalidDictionary(format!(
                "zstd rejects dictionary {id}"
            )));
        }
        Ok(Self {
            id,
            encoder: EncoderDictionary::copy(bytes, LEVEL),
        })
    }

    pub(crate) fn id(&self) -> u32 {
        self.id
    }
}

/// Returns the id a trained dictionary carries in its header; raw content has none.
pub(crate) fn dictionary_id(bytes: &[u8]) -> Result<u32, CodecError> {
    match zstd::zstd_safe::get_dict_id(bytes) {
        Some(id) => Ok(id.get()),
        None => Err(CodecError::InvalidDictionary(
            "it has no zstd dictionary header".into(),
        )),
    }
}

/// The dictionary the streams compress with, once there is one.
#[derive(Debug, Default)]
pub(crate) struct EventCodec {
    current: RwLock<Option<Arc<Dictionary>>>,
}

impl EventCodec {
    /// Makes `dictionary` the one new batches are compressed with. Call only after it is
    /// committed to the `dictionaries` table.
    pub(crate) fn publish(&self, dictionary: Dictionary) {
        if let Ok(mut current) = self.current.write() {
            *current = Some(Arc::new(dictionary));
        }
    }

    pub(crate) fn has_dictionary(&self) -> bool {
        self.current.read().is_ok_and(|current| current.is_some())
    }

    /// Compresses the JSON of the events in `batch` into frames if there is a dictionary;
    /// otherwise leaves the batch as it is. On failure the batch is left as it is too.
    ///
    /// Consecutive events share a frame, up to [`FRAME_EVENTS`] of them or [`FRAME_BYTES`] of
    /// JSON. The compressed frames are slices of one buffer, which is freed with the last of
    /// them.
    pub(crate) fn compress(&self, batch: &mut ValidBatch) -> Result<(), CodecError> {
        let Some(dictionary) = self.current.read().ok().and_then(|current| current.clone()) else {
            return Ok(());
        };
        let mut compressor = zstd::bulk::Compressor::with_prepared_dictionary(&dictionary.encoder)
            .map_err(CodecError::Compress)?;
        compressor
            .include_checksum(true)
            .map_err(CodecError::Compress)?;
        let mut content = FrameBuilder::default();
        let mut scratch = Vec::new();
        let mut frames = Vec::with_capacity(batch.event_bytes / 8);
        // Where each compressed frame ends in `frames`.
        let mut frame_ends = Vec::new();
        let mut seal = |content: &mut FrameBuilder| -> Result<(), CodecError> {
            if content.is_empty() {
                return Ok(());
            }
            let raw = content.finish();
            scratch.clear();
            scratch.reserve(zstd::zstd_safe::compress_bound(raw.len()));
            compressor
                .compress_to_buffer(raw, &mut scratch)
                .map_err(CodecError::Compress)?;
            frames.extend_from_slice(&scratch);
            frame_ends.push(frames.len());
            content.clear();
            Ok(())
        };
        // Where each compressed event goes: its record, frame and position in the frame. The
        // records change only once every frame is built, so a failure leaves them as text.
        let mut placed = Vec::with_capacity(batch.records.len());
        let mut frame = 0;
        for (position, record) in batch.records.iter().enumerate() {
            if let Record::Event {
                body: EventBody::Json(json),
                ..
            } = record
                && json.len() <= MAX_EVENT_BYTES
            {
                if !content.has_room_for(json.len()) {
                    seal(&mut content)?;
                    frame += 1;
                }
                placed.push((position, frame, content.count()));
                content.push(json);
            }
        }
        seal(&mut content)?;

        let frames = Bytes::from(frames);
        let mut start = 0;
        batch.frames = frame_ends
            .iter()
            .map(|&end| {
                let frame = frames.slice(start..end);
                start = end;
                frame
            })
            .collect();
        for (position, frame, index) in placed {
            if let Record::Event { body, .. } = &mut batch.records[position] {
                *body = EventBody::Framed { frame, index };
            }
        }
        Ok(())
    }
}

/// Maximum number of events in one stored frame. Reading one event decompresses its whole
/// frame, so this bounds what a lookup of a single event costs. In a trial on the recorded
/// sample events, frames of 64 events compressed with the dictionary took less than half the
/// CPU time per event that one frame per event took, at four to five times the ratio.
pub(crate) const FRAME_EVENTS: u32 = 64;

/// JSON bytes after which a frame takes no further event. A larger event gets a frame of its
/// own.
pub(crate) const FRAME_BYTES: usize = 64 * 1024;

/// The uncompressed content of a frame being built: the JSON of its events back to back,
/// then, when finished, where each event ends (`u32`, little-endian) and the number of
/// events (`u32`, little-endian). [`FrameContent`] reads it back.
#[derive(Debug, Default)]
struct FrameBuilder {
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl FrameBuilder {
    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn count(&self) -> u32 {
        self.ends.len() as u32
    }

    fn has_room_for(&self, json_len: usize) -> bool {
        self.is_empty()
            || (self.count() < FRAME_EVENTS && self.bytes.len() + json_len <= FRAME_BYTES)
    }

    fn push(&mut self, json: &[u8]) {
        self.bytes.extend_from_slice(json);
        // An event is at most `MAX_EVENT_BYTES` and a frame of several at most `FRAME_BYTES`.
        self.ends.push(self.bytes.len() as u32);
    }

    /// Appends the trailer and returns the content.
    fn finish(&mut self) -> &[u8] {
        for end in &self.ends {
            self.bytes.extend_from_slice(&end.to_le_bytes());
        }
        self.bytes.extend_from_slice(&self.count().to_le_bytes());
        &self.bytes
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// Returns event `index` of a frame as JSON text on one line.
fn framed_event(content: &FrameContent, index: i64) -> Result<String, CodecError> {
    let json = std::str::from_utf8(content.event(index)?)
        .map_err(|_| CodecError::Damaged("the JSON text is not UTF-8".into()))?;
    if !json.trim_ascii_start().starts_with('{') {
        return Err(CodecError::Damaged(
            "the stored JSON text is not an object".into(),
        ));
    }
    well_formed(json.to_owned())
}

/// Decompressed bytes that [`FrameCache`] keeps at most, unless one frame alone is larger.
const FRAME_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Decompressed frames by key, each with bytes that confirm a hit. The least recently used go
/// first once they exceed [`FRAME_CACHE_BYTES`].
#[derive(Debug)]
struct FrameCache<K> {
    entries: HashMap<K, CachedFrame>,
    bytes: usize,
    clock: u64,
}

impl<K> Default for FrameCache<K> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            clock: 0,
        }
    }
}

#[derive(Debug)]
struct CachedFrame {
    compressed: Vec<u8>,
    content: Arc<FrameContent>,
    used: u64,
}

/// Returns the key of a frame in a cache looked up by compressed bytes: the length and the
/// last eight bytes, which end with zstd's checksum of the content.
fn frame_key(frame: &[u8]) -> (usize, [u8; 8]) {
    let mut tail = [0; 8];
    let start = frame.len().saturating_sub(8);
    tail[..frame.len() - start].copy_from_slice(&frame[start..]);
    (frame.len(), tail)
}

impl<K: std::hash::Hash + Eq + Clone> FrameCache<K> {
    /// Returns the frame of `key` if its confirming bytes are `compressed`.
    fn get(&mut self, key: &K, compressed: &[u8]) -> Option<Arc<FrameContent>> {
        self.clock += 1;
        let entry = self.entries.get_mut(key)?;
        if entry.compressed != compressed {
            return None;
        }
        entry.used = self.clock;
        Some(Arc::clone(&entry.content))
    }

    fn insert(&mut self, key: K, compressed: &[u8], content: Arc<FrameContent>) {
        self.clock += 1;
        let size = compressed.len() + content.bytes.len();
        let entry = CachedFrame {
            compressed: compressed.to_vec(),
            content,
            used: self.clock,
        };
        if let Some(old) = self.entries.insert(key, entry) {
            self.bytes -= old.compressed.len() + old.content.bytes.len();
        }
        self.bytes += size;
        while self.bytes > FRAME_CACHE_BYTES && self.entries.len() > 1 {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(key, _)| key.clone());
            if let Some(old) = oldest.and_then(|key| self.entries.remove(&key)) {
                self.bytes -= old.compressed.len() + old.content.bytes.len();
            }
        }
    }
}

/// A decompressed frame, checked: the JSON of its events and where each ends.
#[derive(Debug)]
pub(crate) struct FrameContent {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl FrameContent {
    /// Splits decompressed frame content as [`FrameBuilder`] wrote it.
    fn parse(mut bytes: Vec<u8>) -> Result<Self, CodecError> {
        let damaged = |what: &str| CodecError::Damaged(format!("the event frame {what}"));
        let word = |at: usize, bytes: &[u8]| {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        let count = bytes
            .len()
            .checked_sub(4)
            .and_then(|at| word(at, &bytes))
            .ok_or_else(|| damaged("is shorter than its trailer"))?;
        let json_len = count
            .checked_mul(4)
            .and_then(|trailer| bytes.len().checked_sub(trailer + 4))
            .filter(|_| count > 0)
            .ok_or_else(|| damaged("counts more events than it has room for"))?;
        let mut ends = Vec::with_capacity(count);
        let mut previous = 0;
        for i in 0..count {
            let end = word(json_len + 4 * i, &bytes).unwrap_or(usize::MAX);
            if end <= previous || end > json_len {
                return Err(damaged("has event bounds out of order"));
            }
            ends.push(end);
            previous = end;
        }
        if previous != json_len {
            return Err(damaged("has bytes after its last event"));
        }
        bytes.truncate(json_len);
        Ok(Self { bytes, ends })
    }

    /// Returns the JSON of event `index`.
    fn event(&self, index: i64) -> Result<&[u8], CodecError> {
        let at = usize::try_from(index)
            .ok()
            .filter(|at| *at < self.ends.len())
            .ok_or_else(|| {
                CodecError::Damaged(format!(
                    "the row points at event {index} of a frame of {} events",
                    self.ends.len()
                ))
            })?;
        let start = if at == 0 { 0 } else { self.ends[at - 1] };
        Ok(&self.bytes[start..self.ends[at]])
    }
}

/// Collects sample events and trains a dictionary from them on a thread of its own.
#[derive(Debug, Default)]
pub(crate) struct Trainer {
    samples: Vec<u8>,
    sizes: Vec<usize>,
    attempts: u32,
    /// Events the running training samples.
    sampled: usize,
    training: Option<std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>>,
}

impl Trainer {
    /// Copies the plain JSON events of `batch` into the samples, and starts training once
    /// enough are collected. Does nothing while a training runs or after the last attempt.
    pub(crate) fn observe(&mut self, batch: &ValidBatch) {
        if self.training.is_some() || self.attempts >= MAX_ATTEMPTS {
            return;
        }
        for record in &batch.records {
            if let Record::Event {
                body: EventBody::Json(json),
                ..
            } = record
            {
                if self.sizes.len() >= SAMPLE_EVENTS || self.samples.len() >= SAMPLE_BYTES {
                    break;
                }
                if json.len() > MAX_SAMPLE_EVENT_BYTES {
                    continue;
                }
                self.samples.extend_from_slice(json);
                self.sizes.push(json.len());
            }
        }
        if self.sizes.len() >= SAMPLE_EVENTS || self.samples.len() >= SAMPLE_BYTES {
            self.start();
        }
    }

    fn start(&mut self) {
        self.attempts += 1;
        let samples = std::mem::take(&mut self.samples);
        let sizes = std::mem::take(&mut self.sizes);
        self.sampled = sizes.len();
        let (done, training) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("dictionary-trainer".into())
            .spawn(move || {
                let _ = done.send(zstd::dict::from_continuous(
                    &samples,
                    &sizes,
                    DICTIONARY_BYTES,
                ));
            });
        match spawned {
            Ok(_) => self.training = Some(training),
            Err(err) => {
                tracing::warn!(error = %err, "could not start the dictionary trainer; events stay uncompressed");
            }
        }
    }

    /// Returns the trained dictionary and the number of events it was trained on, once
    /// training has finished, without waiting.
    pub(crate) fn poll(&mut self) -> Option<(Vec<u8>, usize)> {
        let outcome = self.training.as_ref()?.try_recv();
        match outcome {
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.training = None;
                tracing::warn!("the dictionary trainer stopped without a result; sampling again");
                None
            }
            Ok(result) => {
                self.training = None;
                match result {
                    Ok(bytes) => Some((bytes, self.sampled)),
                    Err(err) if self.attempts < MAX_ATTEMPTS => {
                        tracing::warn!(attempt = self.attempts, error = %err, "training a compression dictionary failed; sampling again");
                        None
                    }
                    Err(err) => {
                        tracing::warn!(attempt = self.attempts, error = %err, "training a compression dictionary failed for the last time; events stay uncompressed until the Collector restarts");
                        None
                    }
                }
            }
        }
    }

    /// Waits for a running training and returns its dictionary; for tests and benchmarks.
    pub(crate) fn wait(&mut self) -> Option<(Vec<u8>, usize)> {
        let result = self.training.take()?.recv().ok()?;
        result.ok().map(|bytes| (bytes, self.sampled))
    }
}

/// Returns `json` on one line if it is valid JSON. Ingest parses every event, so only a row
/// edited by another program is invalid. Without this check, `events --where` would stop at
/// such a row in `json_extract`.
///
/// Ingest stores an event as the sensor sent it, possibly over several lines. JSON forbids raw
/// line breaks inside strings, so each CR or LF is between tokens and becomes a space.
fn well_formed(json: String) -> Result<String, CodecError> {
    if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&json) {
        return Err(CodecError::Damaged(format!(
            "the stored JSON is not valid: {err}"
        )));
    }
    let trimmed = json.trim_ascii();
    if trimmed.len() == json.len() && !json.contains(['\n', '\r']) {
        return Ok(json);
    }
    Ok(trimmed.replace(['\n', '\r'], " "))
}

/// Decoder dictionaries by id, loaded from the `dictionaries` table, and one decompression
/// context reused for every event read.
#[derive(Default)]
pub(crate) struct Dictionaries {
    by_id: HashMap<u32, DecoderDictionary<'static>>,
    /// Rows that cannot be used, with the reason; only events compressed with them fail.
    damaged: HashMap<u32, String>,
    context: Mutex<Option<DCtx<'static>>>,
    /// Frames read recently by [`Self::stored`], by compressed bytes. A scan in time order over
    /// many sensors visits the frames of all of them in turn, so one cached frame would be
    /// decompressed again for nearly every row.
    frames: Mutex<FrameCache<(usize, [u8; 8])>>,
    /// Frames read recently by [`Self::scanned`], by frame id.
    scanned_frames: Mutex<FrameCache<i64>>,
}

impl std::fmt::Debug for Dictionaries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionaries")
            .field("ids", &self.by_id.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Dictionaries {
    /// Loads every dictionary of the database. A row that is not a dictionary zstd accepts is
    /// kept aside with the reason, so that only the events compressed with it fail to read.
    pub(crate) fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let mut stmt = conn.prepare("SELECT id, dict FROM dictionaries")?;
        let mut rows = stmt.query([])?;
        let mut by_id = HashMap::new();
        let mut damaged = HashMap::new();
        while let Some(row) = rows.next()? {
            let Ok(id) = u32::try_from(row.get::<_, i64>(0)?) else {
                continue;
            };
            match row.get_ref(1)? {
                ValueRef::Blob(bytes) if DDict::try_create(bytes).is_some() => {
                    by_id.insert(id, DecoderDictionary::copy(bytes));
                }
                ValueRef::Blob(_) => {
                    damaged.insert(id, "zstd rejects it".to_string());
                }
                other => {
                    damaged.insert(
                        id,
                        format!("it is a {} value, not a BLOB", other.data_type()),
                    );
                }
            }
        }
        Ok(Self {
            by_id,
            damaged,
            context: Mutex::new(None),
            frames: Mutex::new(FrameCache::default()),
            scanned_frames: Mutex::new(FrameCache::default()),
        })
    }

    /// Returns the JSON text of a stored event, from its row's values as [`STORED_COLUMNS`]
    /// selects them: `json`, `frame_index` and the data of its frame.
    pub(crate) fn stored(
        &self,
        json: ValueRef<'_>,
        frame_index: ValueRef<'_>,
        frame: ValueRef<'_>,
    ) -> Result<String, CodecError> {
        let index = match frame_index {
            ValueRef::Null => return self.json(json),
            ValueRef::Integer(index) => index,
            other => {
                return Err(CodecError::Damaged(format!(
                    "invalid frame_index column: it contains a {} value, expected an integer",
                    other.data_type()
                )));
            }
        };
        let frame = match frame {
            ValueRef::Blob(frame) => frame,
            ValueRef::Null => {
                return Err(CodecError::Damaged(
                    "its frame is missing from the frames table".into(),
                ));
            }
            other => {
                return Err(CodecError::Damaged(format!(
                    "its frame is a {} value, not a BLOB",
                    other.data_type()
                )));
            }
        };
        let content = self.frame(frame)?;
        framed_event(&content, index)
    }

    /// Returns the JSON text of a stored event from its row's `json`, `frame_index` and
    /// `frame_id`, as [`SCAN_COLUMNS`] selects them. `fetch` reads a frame's data by id; it is
    /// called only for frames that are not among those read last.
    pub(crate) fn scanned(
        &self,
        json: ValueRef<'_>,
        frame_index: ValueRef<'_>,
        frame_id: ValueRef<'_>,
        fetch: impl FnOnce(i64) -> rusqlite::Result<Option<rusqlite::types::Value>>,
    ) -> Result<Result<String, CodecError>, rusqlite::Error> {
        let (ValueRef::Integer(index), ValueRef::Integer(id)) = (frame_index, frame_id) else {
            if frame_index != ValueRef::Null && !matches!(frame_id, ValueRef::Integer(_)) {
                return Ok(Err(CodecError::Damaged(format!(
                    "invalid frame_id column: it contains a {} value, expected an integer",
                    frame_id.data_type()
                ))));
            }
            return Ok(self.stored(json, frame_index, ValueRef::Null));
        };
        let cached = self
            .scanned_frames
            .lock()
            .ok()
            .and_then(|mut cache| cache.get(&id, &[]));
        if let Some(content) = cached {
            return Ok(framed_event(&content, index));
        }
        let data = fetch(id)?;
        let frame = match &data {
            Some(rusqlite::types::Value::Blob(frame)) => frame,
            _ => {
                let value = data.as_ref().map_or(ValueRef::Null, ValueRef::from);
                return Ok(self.stored(json, frame_index, value));
            }
        };
        let content = match self
            .decompress(frame, MAX_FRAME_BYTES)
            .and_then(FrameContent::parse)
        {
            Ok(content) => Arc::new(content),
            Err(err) => return Ok(Err(err)),
        };
        if let Ok(mut cache) = self.scanned_frames.lock() {
            cache.insert(id, &[], Arc::clone(&content));
        }
        Ok(framed_event(&content, index))
    }

    /// Decompresses and checks a frame, or returns it from the cache of recent frames.
    fn frame(&self, frame: &[u8]) -> Result<Arc<FrameContent>, CodecError> {
        let poisoned = || CodecError::Damaged("the frame cache is poisoned".into());
        let key = frame_key(frame);
        if let Some(content) = self.frames.lock().map_err(|_| poisoned())?.get(&key, frame) {
            return Ok(content);
        }
        let content = Arc::new(FrameContent::parse(
            self.decompress(frame, MAX_FRAME_BYTES)?,
        )?);
        self.frames
            .lock()
            .map_err(|_| poisoned())?
            .insert(key, frame, Arc::clone(&content));
        Ok(content)
    }

    /// Returns the JSON text of an `events.json` value.
    pub(crate) fn json(&self, value: ValueRef<'_>) -> Result<String, CodecError> {
        match value {
            // Ingest stores only JSON objects; anything else was written by another program.
            ValueRef::Text(text) if !text.trim_ascii_start().starts_with(b"{") => Err(
                CodecError::Damaged("the stored JSON text is not an object".into()),
            ),
            ValueRef::Text(text) => String::from_utf8(text.to_vec())
                .map_err(|_| CodecError::Damaged("the JSON text is not UTF-8".into()))
                .and_then(well_formed),
            ValueRef::Blob(frame) => self
                .decompress(frame, MAX_EVENT_BYTES)
                .and_then(|bytes| {
                    String::from_utf8(bytes)
                        .map_err(|_| CodecError::Damaged("the JSON text is not UTF-8".into()))
                })
                .and_then(well_formed),
            other => Err(CodecError::Damaged(format!(
                "invalid json column: it contains a {} value, expected JSON text or a zstd frame",
                other.data_type()
            ))),
        }
    }

    /// Decompresses a zstd frame of at most `max` bytes with the dictionary it names.
    fn decompress(&self, frame: &[u8], max: usize) -> Result<Vec<u8>, CodecError> {
        let damaged = |what: &str| CodecError::Damaged(what.to_string());
        let id = zstd::zstd_safe::get_dict_id_from_frame(frame)
            .ok_or_else(|| damaged("the zstd frame names no dictionary"))?
            .get();
        let Some(dictionary) = self.by_id.get(&id) else {
            return Err(match self.damaged.get(&id) {
                Some(reason) => CodecError::DamagedDictionary {
                    id,
                    reason: reason.clone(),
                },
                None => CodecError::UnknownDictionary { id },
            });
        };
        let capacity = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(size)) => usize::try_from(size)
                .ok()
                .filter(|size| *size <= max)
                .ok_or_else(|| {
                    CodecError::Damaged(format!(
                        "the zstd frame claims {size} bytes, more than the {max} it may hold"
                    ))
                })?,
            _ => return Err(damaged("the zstd frame has no valid content size")),
        };
        let mut bytes = Vec::with_capacity(capacity);
        let mut context = self
            .context
            .lock()
            .map_err(|_| damaged("the decompression context is poisoned"))?;
        context
            .get_or_insert_with(DCtx::create)
            .decompress_using_ddict(&mut bytes, frame, dictionary.as_ddict())
            .map_err(|code| {
                CodecError::Damaged(zstd::zstd_safe::get_error_name(code).to_string())
            })?;
        if bytes.len() != capacity {
            return Err(damaged("the zstd frame is shorter than its content size"));
        }
        Ok(bytes)
    }

    /// Registers [`JSON_FUNCTION`] on `conn`, reading frames with these dictionaries. It takes
    /// the values [`STORED_COLUMNS`] selects. The function returns NULL for a row that
    /// [`Self::stored`] rejects, so that one damaged row does not fail a whole statement. The
    /// caller reads such a row itself and reports it.
    pub(crate) fn register(self, conn: &Connection) -> rusqlite::Result<()> {
        // A `--where` condition calls the function twice per row, and each further condition
        // again. The last row's frame bytes, frame index and JSON are kept, so the calls for
        // one row share one read.
        type Last = (Vec<u8>, Option<i64>, Option<String>);
        let last: RefCell<Option<Last>> = RefCell::new(None);
        conn.create_scalar_function(
            JSON_FUNCTION,
            3,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            move |ctx| {
                let (json, frame_index, frame) = (ctx.get_raw(0), ctx.get_raw(1), ctx.get_raw(2));
                let key = match (json, frame_index, frame) {
                    (_, ValueRef::Integer(index), ValueRef::Blob(frame)) => (frame, Some(index)),
                    (ValueRef::Blob(frame), ValueRef::Null, _) => (frame, None),
                    _ => return Ok(self.stored(json, frame_index, frame).ok()),
                };
                let mut last = last.borrow_mut();
                if let Some((bytes, index, json)) = last.as_ref()
                    && (bytes.as_slice(), *index) == key
                {
                    return Ok(json.clone());
                }
                let json = self.stored(json, frame_index, frame).ok();
                *last = Some((key.0.to_vec(), key.1, json.clone()));
                Ok(json)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use edr_proto::v1::{BufferedRecord, EventBatch, buffered_record};
    use time::OffsetDateTime;

    use super::*;
    use crate::ingest::validate;
    use crate::store::Store;
    use crate::store::query::{EventFilter, EventScan};

    /// Builds an OCSF-like event whose values vary with `n`, so that a dictionary can be trained.
    fn event_json(n: u64) -> String {
        let class = [1007, 4001, 1001, 201_004][(n % 4) as usize];
        format!(
            r#"{{"class_uid":{class},"activity_id":{},"time":{},"severity_id":{},"metadata":{{"product":{{"name":"edr","vendor_name":"example"}},"version":"1.8.0","uid":"{n:016x}"}},"process":{{"uid":"proc-{}","pid":{},"file":{{"name":"tool{}.exe","path":"C:\\Tools\\tool{}.exe"}},"cmd_line":"tool{} --run {n}"}},"actor":{{"user":{{"name":"user{}"}}}},"device":{{"hostname":"host-{}"}}}}"#,
            n % 3,
            1_700_000_000_000 + n * 17,
            1 + n % 5,
            n % 97,
            4_000 + n % 500,
            n % 13,
            n % 13,
            n % 13,
            n % 7,
            n % 11,
        )
    }

    fn batch(first: u64, count: u64) -> EventBatch {
        let records: Vec<_> = (first..first + count)
            .map(|seq| BufferedRecord {
                seq,
                kind: Some(buffered_record::Kind::OcsfEventJson(
                    event_json(seq).into_bytes().into(),
                )),
            })
            .collect();
        EventBatch {
            first_seq: first,
            last_seq: first + count - 1,
            records,
        }
    }

    fn trained() -> (Vec<u8>, usize) {
        let mut trainer = Trainer::default();
        trainer.observe(&validate(batch(1, SAMPLE_EVENTS as u64), usize::MAX).unwrap());
        trainer.wait().expect("a dictionary is trained")
    }

    /// Returns event 1 compressed with `dictionary` in a zstd frame of its own, as schema
    /// versions 5 and 6 stored each event.
    fn compressed_event(dictionary: Dictionary) -> Vec<u8> {
        let mut compressor =
            zstd::bulk::Compressor::with_prepared_dictionary(&dictionary.encoder).unwrap();
        compressor.include_checksum(true).unwrap();
        compressor.compress(event_json(1).as_bytes()).unwrap()
    }

    /// Decompresses frame `frame` of `batch` with the dictionary `bytes`.
    fn frame_content(bytes: &[u8], batch: &ValidBatch, frame: usize) -> FrameContent {
        let decoder = DecoderDictionary::copy(bytes);
        let mut decompressor =
            zstd::bulk::Decompressor::with_prepared_dictionary(&decoder).unwrap();
        FrameContent::parse(
            decompressor
                .decompress(&batch.frames[frame], 1 << 20)
                .unwrap(),
        )
        .unwrap()
    }

    /// Consecutive events share a frame, up to `FRAME_EVENTS` of them. Records that are not
    /// events, and an event too large to compress, sit between them and are left out.
    #[test]
    fn events_fill_frames_in_order() {
        let (bytes, _) = trained();
        let codec = EventCodec::default();
        codec.publish(Dictionary::new(&bytes).unwrap());

        let huge = format!(
            r#"{{"class_uid":1007,"padding":"{}"}}"#,
            "x".repeat(MAX_EVENT_BYTES)
        );
        let mut records = batch(1, 150).records;
        records[1].kind = Some(buffered_record::Kind::Gap(edr_proto::v1::Gap {
            first_seq: 1,
            last_seq: 1,
            ..Default::default()
        }));
        records[3].kind = Some(buffered_record::Kind::OcsfEventJson(
            huge.clone().into_bytes().into(),
        ));
        let mut valid = validate(
            EventBatch {
                first_seq: 1,
                last_seq: 150,
                records,
            },
            usize::MAX,
        )
        .unwrap();
        codec.compress(&mut valid).unwrap();

        // 148 events: frames of 64, 64 and 20.
        assert_eq!(valid.frames.len(), 3);
        let contents: Vec<FrameContent> = (0..3)
            .map(|frame| frame_content(&bytes, &valid, frame))
            .collect();
        let mut expected = (0, 0);
        for record in &valid.records {
            match record {
                Record::Event {
                    seq: 4,
                    body: EventBody::Json(json),
                    ..
                } => assert_eq!(json.as_ref(), huge.as_bytes()),
                Record::Event {
                    seq,
                    body: EventBody::Framed { frame, index },
                    ..
                } => {
                    assert_eq!((*frame, *index), expected, "seq {seq}");
                    let json = contents[*frame].event(i64::from(*index)).unwrap();
                    assert_eq!(json, event_json(*seq).as_bytes(), "seq {seq}");
                    expected = if *index + 1 == FRAME_EVENTS {
                        (frame + 1, 0)
                    } else {
                        (*frame, index + 1)
                    };
                }
                Record::Gap { seq: 2, .. } => {}
                other => panic!("unexpected record: {other:?}"),
            }
        }
        assert_eq!(expected, (2, 20));
        assert!(contents[2].event(20).is_err());
        assert!(contents[2].event(-1).is_err());
    }

    /// A frame takes no event that would bring it past `FRAME_BYTES`, except its first.
    #[test]
    fn large_events_close_frames_early() {
        let (bytes, _) = trained();
        let codec = EventCodec::default();
        codec.publish(Dictionary::new(&bytes).unwrap());
        let sizes = [30_000, 30_000, 30_000, 100_000, 10, 10];

        let records = sizes
            .iter()
            .zip(1u64..)
            .map(|(size, seq)| BufferedRecord {
                seq,
                kind: Some(buffered_record::Kind::OcsfEventJson(
                    format!(r#"{{"class_uid":1,"pad":"{}"}}"#, "y".repeat(*size))
                        .into_bytes()
                        .into(),
                )),
            })
            .collect();
        let mut valid = validate(
            EventBatch {
                first_seq: 1,
                last_seq: 6,
                records,
            },
            usize::MAX,
        )
        .unwrap();
        codec.compress(&mut valid).unwrap();

        let placed: Vec<(usize, u32)> = valid
            .records
            .iter()
            .map(|record| match record {
                Record::Event {
                    body: EventBody::Framed { frame, index },
                    ..
                } => (*frame, *index),
                other => panic!("not framed: {other:?}"),
            })
            .collect();
        assert_eq!(placed, [(0, 0), (0, 1), (1, 0), (2, 0), (3, 0), (3, 1)]);
        assert_eq!(valid.frames.len(), 4);
        let content = frame_content(&bytes, &valid, 2);
        assert_eq!(content.event(0).unwrap().len(), 100_000 + 24);
    }

    /// Frame content that does not split into its events is damage, not a panic.
    #[test]
    fn malformed_frame_content_is_damage() {
        let mut builder = FrameBuilder::default();
        builder.push(b"{\"a\":1}");
        builder.push(b"{\"b\":2}");
        let good = builder.finish().to_vec();
        let content = FrameContent::parse(good.clone()).unwrap();
        assert_eq!(content.event(1).unwrap(), b"{\"b\":2}");

        let mut cases: Vec<Vec<u8>> = vec![vec![], vec![1, 0, 0], good[..good.len() - 1].to_vec()];
        for count in [0u32, 3, u32::MAX] {
            let mut bad = good.clone();
            let at = bad.len() - 4;
            bad[at..].copy_from_slice(&count.to_le_bytes());
            cases.push(bad);
        }
        // Ends out of order, past the JSON, and short of it.
        for (first, second) in [(7u32, 6u32), (7, 15), (7, 13)] {
            let mut bad = good.clone();
            bad[14..18].copy_from_slice(&first.to_le_bytes());
            bad[18..22].copy_from_slice(&second.to_le_bytes());
            cases.push(bad);
        }
        for case in cases {
            assert!(
                matches!(
                    FrameContent::parse(case.clone()),
                    Err(CodecError::Damaged(_))
                ),
                "{case:?}"
            );
        }
    }

    #[test]
    fn trainer_waits_for_enough_samples() {
        let mut trainer = Trainer::default();
        trainer.observe(&validate(batch(1, 100), usize::MAX).unwrap());
        assert!(trainer.training.is_none());
        assert!(trainer.poll().is_none());
        let (bytes, samples) = trained();
        assert_eq!(samples, SAMPLE_EVENTS);
        assert!(bytes.len() <= DICTIONARY_BYTES);
        assert!(dictionary_id(&bytes).is_ok());
    }

    #[test]
    fn compressed_events_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        // A batch stored before the dictionary exists stays text.
        let plain = validate(batch(1, 50), usize::MAX).unwrap();
        store
            .ingest_group(&[("sensor-a".to_string(), plain)], now)
            .unwrap();

        let (bytes, samples) = trained();
        let codec = EventCodec::default();
        codec.publish(store.insert_dictionary(&bytes, samples, now).unwrap());
        let mut compressed = validate(batch(51, 950), usize::MAX).unwrap();
        let raw: usize = compressed.event_bytes;
        codec.compress(&mut compressed).unwrap();
        assert!(compressed.records.iter().all(|record| matches!(
            record,
            Record::Event {
                body: EventBody::Framed { .. },
                ..
            }
        )));
        let stored: usize = compressed.frames.iter().map(|frame| frame.len()).sum();
        assert!(stored * 10 < raw, "{stored} compressed bytes of {raw}");
        store
            .ingest_group(&[("sensor-a".to_string(), compressed)], now)
            .unwrap();

        let mut seen = Vec::new();
        store
            .for_each_event(
                &EventFilter::default(),
                |row| {
                    assert_eq!(row.json, event_json(u64::try_from(row.seq).unwrap()));
                    seen.push(row.seq);
                    Ok(())
                },
                |damaged| panic!("{damaged}"),
            )
            .unwrap();
        seen.sort_unstable();
        assert_eq!(seen, (1..=1000).collect::<Vec<_>>());

        // `--where` reads compressed and plain rows alike, through an indexed column or not.
        let matches = |json: &str, path: &str, value: &str| {
            let event: serde_json::Value = serde_json::from_str(json).unwrap();
            let found = &event.pointer(&path.trim_start_matches('$').replace('.', "/"));
            found.is_some_and(|found| {
                found.as_str() == Some(value)
                    || found.as_i64().is_some_and(|n| value.parse() == Ok(n))
            })
        };
        for (path, value) in [
            ("$.process.file.name", "tool3.exe"),
            ("$.process.uid", "proc-5"),
            ("$.device.hostname", "host-4"),
            ("$.severity_id", "2"),
            // Informational events are not in the severity index (schema version 6).
            ("$.severity_id", "1"),
        ] {
            let filter = EventFilter {
                conditions: vec![(path.to_string(), value.to_string())],
                ..EventFilter::default()
            };
            let mut found = Vec::new();
            store
                .for_each_event(
                    &filter,
                    |row| {
                        assert!(matches(&row.json, path, value), "{path} in {}", row.json);
                        found.push(row.seq);
                        Ok(())
                    },
                    |damaged| panic!("{damaged}"),
                )
                .unwrap();
            let expected: Vec<i64> = (1..=1000)
                .filter(|n| matches(&event_json(*n), path, value))
                .map(|n| i64::try_from(n).unwrap())
                .collect();
            assert!(
                expected.iter().any(|seq| *seq <= 50),
                "{path}: no plain row"
            );
            assert!(
                expected.iter().any(|seq| *seq > 50),
                "{path}: no compressed row"
            );
            found.sort_unstable();
            assert_eq!(found, expected, "{path} = {value}");
        }
    }

    #[test]
    fn damaged_and_orphaned_frames_are_reported() {
        let (bytes, samples) = trained();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let dictionary = store
            .insert_dictionary(&bytes, samples, OffsetDateTime::now_utc())
            .unwrap();
        let frame = &compressed_event(dictionary);

        let dictionaries = Dictionaries::load(&store.conn).unwrap();
        assert_eq!(
            dictionaries.json(ValueRef::Blob(frame)).unwrap(),
            event_json(1)
        );
        let mut damaged = frame.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0x55;
        assert!(matches!(
            dictionaries.json(ValueRef::Blob(&damaged)),
            Err(CodecError::Damaged(_))
        ));
        assert!(matches!(
            Dictionaries::default().json(ValueRef::Blob(frame)),
            Err(CodecError::UnknownDictionary { id }) if id == dictionary_id(&bytes).unwrap()
        ));
        assert!(matches!(
            dictionaries.json(ValueRef::Integer(7)),
            Err(CodecError::Damaged(_))
        ));
        assert!(matches!(
            dictionaries.json(ValueRef::Text(b"7")),
            Err(CodecError::Damaged(_))
        ));
    }

    #[test]
    fn damaged_dictionary_rows_are_set_aside() {
        let (bytes, samples) = trained();
        let id = dictionary_id(&bytes).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        let frame = &compressed_event(store.insert_dictionary(&bytes, samples, now).unwrap());

        // A header that names a dictionary, followed by bytes zstd rejects.
        let mut garbage = bytes[..8].to_vec();
        garbage[4..8].copy_from_slice(&777_u32.to_le_bytes());
        garbage.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert!(matches!(
            Dictionary::new(&garbage),
            Err(CodecError::InvalidDictionary(_))
        ));
        // Newer rows that cannot be used: one zstd rejects, one stored as text.
        let later = now.unix_timestamp() + 60;
        store
            .conn
            .execute(
                "INSERT INTO dictionaries VALUES (777, ?1, 1, ?2), (778, ?1, 1, 'text')",
                rusqlite::params![later, garbage],
            )
            .unwrap();

        let newest = store
            .newest_dictionary()
            .unwrap()
            .expect("a usable dictionary");
        assert_eq!(newest.id(), id);
        let dictionaries = Dictionaries::load(&store.conn).unwrap();
        assert_eq!(
            dictionaries.json(ValueRef::Blob(frame)).unwrap(),
            event_json(1)
        );
        let mut orphan = frame.clone();
        // The dictionary id sits after the magic number and the frame header descriptor.
        let at = orphan
            .windows(4)
            .position(|w| w == id.to_le_bytes())
            .unwrap();
        orphan[at..at + 4].copy_from_slice(&777_u32.to_le_bytes());
        assert!(matches!(
            dictionaries.json(ValueRef::Blob(&orphan)),
            Err(CodecError::DamagedDictionary { id: 777, .. })
        ));

        // Training again on the same events gives the same id; the stored row is reused.
        assert_eq!(
            store.insert_dictionary(&bytes, samples, now).unwrap().id(),
            id
        );
    }

    #[test]
    fn retrained_dictionary_replaces_its_damaged_row() {
        let (bytes, samples) = trained();
        let id = dictionary_id(&bytes).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        let frame = compressed_event(store.insert_dictionary(&bytes, samples, now).unwrap());
        for damage in [
            rusqlite::types::Value::Blob(vec![0x37, 0xa4, 0x30, 0xec, 1, 2, 3, 4]),
            rusqlite::types::Value::Text("text".into()),
        ] {
            store
                .conn
                .execute(
                    "UPDATE dictionaries SET dict = ?2 WHERE id = ?1",
                    rusqlite::params![id, damage],
                )
                .unwrap();
            assert!(
                Dictionaries::load(&store.conn)
                    .unwrap()
                    .json(ValueRef::Blob(&frame))
                    .is_err()
            );

            // Training again on the same events gives the same dictionary, which takes the
            // damaged row's place and reads the old events again.
            assert_eq!(
                store.insert_dictionary(&bytes, samples, now).unwrap().id(),
                id
            );
            assert_eq!(
                Dictionaries::load(&store.conn)
                    .unwrap()
                    .json(ValueRef::Blob(&frame))
                    .unwrap(),
                event_json(1)
            );
        }
    }

    /// Stores events 1..=200 of `sensor-a` compressed with a trained dictionary, then damages
    /// the rows of `damaged` by pointing each past the end of its frame.
    fn store_with_damaged_rows(dir: &std::path::Path, damaged: &[i64]) -> Store {
        let mut store = Store::create(dir).unwrap();
        let now = OffsetDateTime::now_utc();
        let (bytes, samples) = trained();
        let codec = EventCodec::default();
        codec.publish(store.insert_dictionary(&bytes, samples, now).unwrap());
        let mut valid = validate(batch(1, 200), usize::MAX).unwrap();
        codec.compress(&mut valid).unwrap();
        store
            .ingest_group(&[("sensor-a".to_string(), valid)], now)
            .unwrap();
        for seq in damaged {
            store
                .conn
                .execute("UPDATE events SET frame_index = 1000 WHERE seq = ?1", [seq])
                .unwrap();
        }
        store
    }

    /// Runs `filter` and returns the seqs read, the seqs reported as damaged and the counts.
    fn scan(store: &Store, filter: &EventFilter) -> (Vec<i64>, Vec<i64>, EventScan) {
        let mut read = Vec::new();
        let mut damaged = Vec::new();
        let counts = store
            .for_each_event(
                filter,
                |row| {
                    assert_eq!(row.json, event_json(u64::try_from(row.seq).unwrap()));
                    read.push(row.seq);
                    Ok(())
                },
                |event| {
                    assert_eq!(event.sensor_id, "sensor-a");
                    assert!(
                        matches!(event.source, CodecError::Damaged(_)),
                        "{}",
                        event.source
                    );
                    damaged.push(event.seq.parse::<i64>().unwrap());
                },
            )
            .unwrap();
        (read, damaged, counts)
    }

    /// A database of schema version 6 contains each event's JSON in its own row, as text or as a
    /// zstd frame of its own. After the upgrade those rows read as before, next to framed ones.
    #[test]
    fn version_6_rows_read_after_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, samples) = trained();
        let now = OffsetDateTime::now_utc();
        {
            let store = Store::create(dir.path()).unwrap();
            let dictionary = store.insert_dictionary(&bytes, samples, now).unwrap();
            let frame = compressed_event(dictionary);
            store
                .conn
                .execute_batch(crate::store::UNDO_SCHEMA_V7)
                .unwrap();
            store.conn.pragma_update(None, "user_version", 6).unwrap();
            let insert = "INSERT INTO events (sensor_id, seq, time, received_at, class_uid, json)
                          VALUES ('sensor-a', ?1, ?2, 0, 1007, ?3)";
            store
                .conn
                .execute(insert, rusqlite::params![1, 1_700_000_000_017_i64, frame])
                .unwrap();
            store
                .conn
                .execute(
                    insert,
                    rusqlite::params![2, 1_700_000_000_034_i64, event_json(2)],
                )
                .unwrap();
        }
        let mut store = Store::open(dir.path()).unwrap();
        let codec = EventCodec::default();
        codec.publish(store.newest_dictionary().unwrap().unwrap());
        let mut valid = validate(batch(3, 98), usize::MAX).unwrap();
        codec.compress(&mut valid).unwrap();
        store
            .ingest_group(&[("sensor-a".to_string(), valid)], now)
            .unwrap();

        let (read, damaged, _) = scan(&store, &EventFilter::default());
        assert_eq!(read, (1..=100).collect::<Vec<_>>());
        assert!(damaged.is_empty());
        // Event 1 is the only one with this command line; 2 and 3 are in the other forms.
        for (command, seq) in [
            ("tool1 --run 1", 1),
            ("tool2 --run 2", 2),
            ("tool3 --run 3", 3),
        ] {
            let filter = EventFilter {
                conditions: vec![("$.process.cmd_line".into(), command.into())],
                ..EventFilter::default()
            };
            assert_eq!(scan(&store, &filter).0, [seq]);
        }
    }

    /// A scan in time order alternates between the frames of two sensors and reads every event.
    #[test]
    fn interleaved_sensors_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with_damaged_rows(dir.path(), &[]);
        let codec = EventCodec::default();
        codec.publish(store.newest_dictionary().unwrap().unwrap());
        let mut valid = validate(batch(1, 200), usize::MAX).unwrap();
        codec.compress(&mut valid).unwrap();
        store
            .ingest_group(
                &[("sensor-b".to_string(), valid)],
                OffsetDateTime::now_utc(),
            )
            .unwrap();

        let mut read = Vec::new();
        store
            .for_each_event(
                &EventFilter::default(),
                |row| {
                    assert_eq!(row.json, event_json(u64::try_from(row.seq).unwrap()));
                    read.push((row.seq, row.sensor_id));
                    Ok(())
                },
                |damaged| panic!("{damaged}"),
            )
            .unwrap();
        let expected: Vec<(i64, String)> = (1..=200)
            .flat_map(|seq| [(seq, "sensor-a".to_string()), (seq, "sensor-b".to_string())])
            .collect();
        assert_eq!(read, expected);
    }

    /// The frame cache drops the least recently used frames past its size.
    #[test]
    fn frame_cache_evicts_least_recently_used() {
        let mut cache = FrameCache::default();
        let quarter = FRAME_CACHE_BYTES / 4;
        let frame = |n: u8| vec![n; 16];
        let content = || {
            Arc::new(FrameContent {
                bytes: vec![0; quarter],
                ends: vec![quarter],
            })
        };
        for n in 0..3 {
            cache.insert(n, &frame(n), content());
        }
        assert!(cache.get(&0, &frame(0)).is_some());
        // Frames 0 to 4 do not fit together: 1 and 2, the least recently used, go.
        cache.insert(3, &frame(3), content());
        cache.insert(4, &frame(4), content());
        assert!(cache.get(&1, &frame(1)).is_none());
        assert!(cache.get(&2, &frame(2)).is_none());
        assert!(cache.get(&0, &frame(0)).is_some());
        assert!(cache.get(&4, &frame(4)).is_some());
        assert!(cache.bytes <= FRAME_CACHE_BYTES, "{} bytes", cache.bytes);
        // The same key with other confirming bytes is not a hit.
        let mut other = frame(4);
        other[0] = 9;
        assert!(cache.get(&4, &other).is_none());
    }

    /// A flipped byte in a frame, as a bad disk sector would leave, damages every event of
    /// that frame and no other.
    #[test]
    fn damaged_frame_reports_each_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_damaged_rows(dir.path(), &[]);
        let (id, mut data): (i64, Vec<u8>) = store
            .conn
            .query_row(
                "SELECT id, data FROM frames WHERE id = (SELECT frame_id FROM events WHERE seq = 70)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        let middle = data.len() / 2;
        data[middle] ^= 0x55;
        store
            .conn
            .execute(
                "UPDATE frames SET data = ?2 WHERE id = ?1",
                rusqlite::params![id, data],
            )
            .unwrap();
        // Events 65..=128 are the second frame of the batch.
        let (read, damaged, _) = scan(&store, &EventFilter::default());
        assert_eq!(damaged, (65..=128).collect::<Vec<_>>());
        assert_eq!(read.len(), 200 - 64);

        // A frame that is gone altogether is reported the same way.
        store
            .conn
            .execute("DELETE FROM frames WHERE id = ?1", [id])
            .unwrap();
        let (_, damaged, _) = scan(&store, &EventFilter::default());
        assert_eq!(damaged, (65..=128).collect::<Vec<_>>());
    }

    /// Retention deletes a frame with the last of its events, whichever way they go, also when
    /// a later frame contains older events.
    #[test]
    fn retention_deletes_emptied_frames() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with_damaged_rows(dir.path(), &[]);
        let now = OffsetDateTime::now_utc();
        let codec = EventCodec::default();
        codec.publish(store.newest_dictionary().unwrap().unwrap());
        let frames = |store: &Store| -> i64 {
            store
                .conn
                .query_row("SELECT COUNT(*) FROM frames", [], |row| row.get(0))
                .unwrap()
        };
        // Events 1..=200 of sensor-a are in frames of 64, 64, 64 and 8. Sensor-b then sends
        // events with the times of sensor-a's first ten, and 150..=249 of sensor-a come again:
        // its frames of 64 and 36 contain 51 duplicates, which are not counted.
        let mut late = validate(batch(1, 10), usize::MAX).unwrap();
        codec.compress(&mut late).unwrap();
        let mut again = validate(batch(150, 100), usize::MAX).unwrap();
        codec.compress(&mut again).unwrap();
        store
            .ingest_group(
                &[
                    ("sensor-b".to_string(), late),
                    ("sensor-a".to_string(), again),
                ],
                now,
            )
            .unwrap();
        assert_eq!(frames(&store), 7);

        // By age: events 1..=100 of sensor-a and all of sensor-b are older than the cutoff,
        // which empties sensor-a's first frame and sensor-b's only one.
        let cutoff =
            OffsetDateTime::from_unix_timestamp_nanos((1_700_000_000_000 + 101 * 17) * 1_000_000)
                .unwrap();
        let max_age = now - cutoff;
        assert_eq!(store.delete_older_than(max_age, now).unwrap(), 110);
        assert_eq!(frames(&store), 5);
        let (read, damaged, _) = scan(&store, &EventFilter::default());
        assert_eq!(read, (101..=249).collect::<Vec<_>>());
        assert!(damaged.is_empty());

        // By size: one chunk deletes every event left, and with them every frame.
        assert_eq!(store.delete_oldest_chunk().unwrap(), 149);
        assert_eq!(frames(&store), 0);

        // Frame ids may start again; new events read back.
        let mut valid = validate(batch(250, 10), usize::MAX).unwrap();
        codec.compress(&mut valid).unwrap();
        store
            .ingest_group(&[("sensor-a".to_string(), valid)], now)
            .unwrap();
        assert_eq!(
            scan(&store, &EventFilter::default()).0,
            (250..=259).collect::<Vec<_>>()
        );
    }

    /// A resent batch whose events are all stored already adds no frame.
    #[test]
    fn duplicate_events_store_no_frame() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store_with_damaged_rows(dir.path(), &[]);
        let codec = EventCodec::default();
        codec.publish(store.newest_dictionary().unwrap().unwrap());
        let mut valid = validate(batch(101, 100), usize::MAX).unwrap();
        codec.compress(&mut valid).unwrap();
        let outcomes = store
            .ingest_group(
                &[("sensor-a".to_string(), valid)],
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        assert_eq!(outcomes[0].duplicates, 100);
        let frames: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM frames", [], |row| row.get(0))
            .unwrap();
        assert_eq!(frames, 4);
    }

    #[test]
    fn damaged_rows_are_skipped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_damaged_rows(dir.path(), &[10, 11, 150]);

        let (read, damaged, counts) = scan(&store, &EventFilter::default());
        let expected: Vec<i64> = (1..=200)
            .filter(|seq| ![10, 11, 150].contains(seq))
            .collect();
        assert_eq!(read, expected);
        assert_eq!(damaged, [10, 11, 150]);
        assert_eq!(
            counts,
            EventScan {
                read: 197,
                damaged: 3
            }
        );
    }

    #[test]
    fn limit_counts_only_readable_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_damaged_rows(dir.path(), &[10, 11, 150]);
        let limited = |limit| EventFilter {
            limit: Some(limit),
            ..EventFilter::default()
        };

        // The first pass stops at the damaged seq 10, the next ones fetch one row each.
        let (read, damaged, counts) = scan(&store, &limited(10));
        assert_eq!(read, [1, 2, 3, 4, 5, 6, 7, 8, 9, 12]);
        assert_eq!(damaged, [10, 11]);
        assert_eq!(
            counts,
            EventScan {
                read: 10,
                damaged: 2
            }
        );

        let (read, damaged, _) = scan(&store, &limited(9));
        assert_eq!(read, (1..=9).collect::<Vec<_>>());
        assert!(damaged.is_empty(), "{damaged:?}");

        // Fewer readable events than the limit: every row is read once.
        let (read, damaged, _) = scan(&store, &limited(500));
        assert_eq!(read.len(), 197);
        assert_eq!(damaged, [10, 11, 150]);
    }

    #[test]
    fn invalid_json_text_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_damaged_rows(dir.path(), &[]);
        // Another program replaced seq 14 with JSON text cut off midway.
        store
            .conn
            .execute(
                "UPDATE events SET json = ?1, frame_id = NULL, frame_index = NULL WHERE seq = 14",
                [r#"{"class_uid":1007,"device":{"hostname":"host-3""#],
            )
            .unwrap();
        let everything = EventFilter::default();
        let (read, damaged, _) = scan(&store, &everything);
        assert_eq!(read.len(), 199);
        assert_eq!(damaged, [14]);

        let hostname = EventFilter {
            conditions: vec![("$.device.hostname".to_string(), "host-3".to_string())],
            ..EventFilter::default()
        };
        let (read, damaged, _) = scan(&store, &hostname);
        let expected: Vec<i64> = (1..=200)
            .filter(|seq| seq % 11 == 3 && *seq != 14)
            .collect();
        assert_eq!(read, expected);
        assert_eq!(damaged, [14]);
    }

    #[test]
    fn multi_line_json_reads_as_one_line() {
        let spread = "  \r\n{\"class_uid\": 1007,\n \"note\": \"a\\nb\"}\n";
        let json = Dictionaries::default()
            .json(ValueRef::Text(spread.as_bytes()))
            .unwrap();
        assert_eq!(json, r#"{"class_uid": 1007,  "note": "a\nb"}"#);
        let compact = r#"{"class_uid":1007}"#;
        assert_eq!(
            Dictionaries::default()
                .json(ValueRef::Text(compact.as_bytes()))
                .unwrap(),
            compact
        );
    }

    #[test]
    fn wrongly_typed_columns_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_damaged_rows(dir.path(), &[]);
        // Another program wrote text where numbers belong, in a plain column and in the
        // columns the scan sorts and pages by.
        store
            .conn
            .execute_batch(
                "UPDATE events SET severity_id = 'bad' WHERE seq = 20;
                 UPDATE events SET time = 'late' WHERE seq = 30;
                 UPDATE events SET seq = 'forty' WHERE seq = 40;
                 UPDATE events SET time = 9223372036854775807 WHERE seq = 50;",
            )
            .unwrap();
        for limit in [None, Some(25), Some(197), Some(500)] {
            let filter = EventFilter {
                limit,
                ..EventFilter::default()
            };
            let mut read = Vec::new();
            let mut damaged = Vec::new();
            store
                .for_each_event(
                    &filter,
                    |row| {
                        read.push(row.seq);
                        Ok(())
                    },
                    |event| damaged.push((event.seq, event.source.to_string())),
                )
                .unwrap();
            let readable: Vec<i64> = (1..=200)
                .filter(|seq| ![20, 30, 40, 50].contains(seq))
                .collect();
            let expected = limit.map_or(readable.len(), |limit| readable.len().min(limit as usize));
            assert_eq!(read, readable[..expected], "limit {limit:?}");
            if limit.is_none() || limit == Some(500) {
                let seqs: Vec<&str> = damaged.iter().map(|(seq, _)| seq.as_str()).collect();
                assert_eq!(seqs, ["20", "forty", "50", "30"], "limit {limit:?}");
                assert!(
                    damaged[0].1.contains("severity_id") && damaged[0].1.contains("\"bad\""),
                    "{}",
                    damaged[0].1
                );
            }
        }
    }

    #[test]
    fn where_reports_damaged_rows_it_cannot_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_damaged_rows(dir.path(), &[10, 11, 150]);
        let condition = |path: &str, value: &str| EventFilter {
            conditions: vec![(path.to_string(), value.to_string())],
            ..EventFilter::default()
        };

        // The indexed column selects seqs 10 and 107; seq 10 cannot be checked further.
        let (read, damaged, _) = scan(&store, &condition("$.process.uid", "proc-10"));
        assert_eq!(read, [107]);
        assert_eq!(damaged, [10]);

        // A field outside the indexes is read from the JSON of every row.
        let (read, damaged, _) = scan(&store, &condition("$.device.hostname", "host-3"));
        let expected: Vec<i64> = (1..=200)
            .filter(|seq| seq % 11 == 3 && ![10, 11, 150].contains(seq))
            .collect();
        assert_eq!(read, expected);
        assert_eq!(damaged, [10, 11, 150]);
    }

    #[test]
    fn oversized_events_skip_compression_and_samples() {
        let (bytes, _) = trained();
        let codec = EventCodec::default();
        codec.publish(Dictionary::new(&bytes).unwrap());
        let event = |json: String| Record::Event {
            seq: 1,
            fields: crate::ingest::IndexedFields {
                time: None,
                class_uid: 0,
                activity_id: None,
                severity_id: None,
                process_uid: None,
                user_name: None,
            },
            body: EventBody::Json(json.into()),
        };
        let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_EVENT_BYTES));
        let mut batch = ValidBatch {
            last_seq: 1,
            records: vec![event(huge)],
            event_bytes: 0,
            frames: Vec::new(),
        };
        codec.compress(&mut batch).unwrap();
        assert!(matches!(
            &batch.records[0],
            Record::Event {
                body: EventBody::Json(_),
                ..
            }
        ));

        let large = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_SAMPLE_EVENT_BYTES));
        let mut trainer = Trainer::default();
        trainer.observe(&ValidBatch {
            last_seq: 1,
            records: vec![event(large)],
            event_bytes: 0,
            frames: Vec::new(),
        });
        assert!(trainer.sizes.is_empty());
    }
}
