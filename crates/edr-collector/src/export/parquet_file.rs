//! One Parquet file of a partition: the indexed columns plus the whole OCSF event as a JSON
//! string, zstd-compressed, written in row groups of [`ROW_GROUP_ROWS`] rows.
//!
//! The schema is flat. The OCSF objects are not mapped to nested Parquet groups, because their
//! fields differ by class and by sensor version. The `event` column keeps every field, and the
//! columns beside it are the indexed columns of the store.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use parquet::basic::{Compression, ZstdLevel};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::store::query::EventRow;

/// Parquet schema of an export file; column order matches [`Columns::flush`].
pub(crate) const SCHEMA: &str = "
message ocsf_event {
    REQUIRED INT64 time (TIMESTAMP(MILLIS, true));
    REQUIRED BYTE_ARRAY sensor_id (STRING);
    REQUIRED INT64 seq;
    REQUIRED INT64 class_uid;
    OPTIONAL INT64 activity_id;
    OPTIONAL INT64 severity_id;
    OPTIONAL BYTE_ARRAY process_uid (STRING);
    OPTIONAL BYTE_ARRAY user_name (STRING);
    REQUIRED BYTE_ARRAY event (JSON);
}
";

/// Rows buffered per partition before they are written as one row group. OCSF events from
/// the sample data are about 1 KiB, so a partition buffers some 10 MiB.
const ROW_GROUP_ROWS: usize = 10_000;

/// zstd level: 3 is zstd's own default, a balance of speed and size.
const ZSTD_LEVEL: i32 = 3;

/// An open Parquet file and the rows not yet written to it.
pub(crate) struct ParquetPartition {
    path: PathBuf,
    writer: SerializedFileWriter<File>,
    columns: Columns,
}

impl std::fmt::Debug for ParquetPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetPartition")
            .field("path", &self.path)
            .field("buffered_rows", &self.columns.time.len())
            .finish_non_exhaustive()
    }
}

impl ParquetPartition {
    /// Starts a Parquet file in `file`, created at `path`.
    pub(crate) fn new(path: &Path, file: File) -> anyhow::Result<Self> {
        let schema = Arc::new(parse_message_type(SCHEMA).context("invalid export schema")?);
        let level = ZstdLevel::try_new(ZSTD_LEVEL).context("invalid zstd level")?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_created_by(format!("edr-collector {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = SerializedFileWriter::new(file, schema, Arc::new(properties))
            .with_context(|| format!("failed to start the Parquet file \"{}\"", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            columns: Columns::default(),
        })
    }

    /// Adds one event; writes a row group when [`ROW_GROUP_ROWS`] are buffered.
    pub(crate) fn push(&mut self, event: EventRow) -> anyhow::Result<()> {
        self.columns.push(event);
        if self.columns.time.len() >= ROW_GROUP_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered rows and the footer, then syncs the file to disk.
    pub(crate) fn finish(mut self) -> anyhow::Result<()> {
        self.flush()?;
        let file = self
            .writer
            .into_inner()
            .with_context(|| format!("failed to finish \"{}\"", self.path.display()))?;
        file.sync_all()
            .with_context(|| format!("failed to sync \"{}\"", self.path.display()))
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.columns.time.is_empty() {
            return Ok(());
        }
        let columns = std::mem::take(&mut self.columns);
        columns
            .flush(&mut self.writer)
            .with_context(|| format!("failed to write a row group to \"{}\"", self.path.display()))
    }
}

/// Buffered column values of the rows of the next row group. Optional columns keep only the
/// present values plus one definition level per row (1 present, 0 null), as Parquet stores them.
#[derive(Debug, Default)]
struct Columns {
    time: Vec<i64>,
    sensor_id: Vec<ByteArray>,
    seq: Vec<i64>,
    class_uid: Vec<i64>,
    activity_id: Optional<i64>,
    severity_id: Optional<i64>,
    process_uid: Optional<ByteArray>,
    user_name: Optional<ByteArray>,
    event: Vec<ByteArray>,
}

#[derive(Debug)]
struct Optional<T> {
    values: Vec<T>,
    levels: Vec<i16>,
}

impl<T> Default for Optional<T> {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            levels: Vec::new(),
        }
    }
}

impl<T> Optional<T> {
    fn push(&mut self, value: Option<T>) {
        match value {
            Some(value) => {
                self.values.push(value);
                self.levels.push(1);
            }
            None => self.levels.push(0),
        }
    }
}

impl Columns {
    fn push(&mut self, event: EventRow) {
        let EventRow {
            sensor_id,
            seq,
            time_ms,
            class_uid,
            activity_id,
            severity_id,
            process_uid,
            user_name,
            json,
        } = event;
        self.time.push(time_ms);
        self.sensor_id.push(ByteArray::from(sensor_id.into_bytes()));
        self.seq.push(seq);
        self.class_uid.push(class_uid);
        self.activity_id.push(activity_id);
        self.severity_id.push(severity_id);
        self.process_uid
            .push(process_uid.map(|uid| ByteArray::from(uid.into_bytes())));
        self.user_name
            .push(user_name.map(|name| ByteArray::from(name.into_bytes())));
        self.event.push(ByteArray::from(json.into_bytes()));
    }

    /// Writes the rows as one row group, columns in [`SCHEMA`] order.
    fn flush(self, writer: &mut SerializedFileWriter<File>) -> parquet::errors::Result<()> {
        let mut group = writer.next_row_group()?;
        let mut index = 0;
        while let Some(mut column) = group.next_column()? {
            match index {
                0 => write_required::<Int64Type>(&mut column, &self.time)?,
                1 => write_required::<ByteArrayType>(&mut column, &self.sensor_id)?,
                2 => write_required::<Int64Type>(&mut column, &self.seq)?,
                3 => write_required::<Int64Type>(&mut column, &self.class_uid)?,
                4 => write_optional::<Int64Type>(&mut column, &self.activity_id)?,
                5 => write_optional::<Int64Type>(&mut column, &self.severity_id)?,
                6 => write_optional::<ByteArrayType>(&mut column, &self.process_uid)?,
                7 => write_optional::<ByteArrayType>(&mut column, &self.user_name)?,
                8 => write_required::<ByteArrayType>(&mut column, &self.event)?,
                other => {
                    return Err(parquet::errors::ParquetError::General(format!(
                        "export schema has an unexpected column {other}"
                    )));
                }
            }
            column.close()?;
            index += 1;
        }
        group.close()?;
        Ok(())
    }
}

fn write_required<T: parquet::data_type::DataType>(
    column: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    values: &[T::T],
) -> parquet::errors::Result<()> {
    column.typed::<T>().write_batch(values, None, None)?;
    Ok(())
}

fn write_optional<T: parquet::data_type::DataType>(
    column: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    optional: &Optional<T::T>,
) -> parquet::errors::Result<()> {
    column
        .typed::<T>()
        .write_batch(&optional.values, Some(&optional.levels), None)?;
    Ok(())
}
