//! OCSF 1.8.0 for the EDR: a typed event model, the schema validator and a process cache.
//!
//! - [`class`]: the event classes emitted, with their ids, names and activity captions.
//! - [`model`]: [`Event`] and the objects it carries, serialised to the schema's JSON with each
//!   enum name beside its id, `type_uid = class_uid * 100 + activity_id` and `time` in ms.
//! - [`validate`]: [`Schema`], loaded from a checkout of the official schema (core tree plus
//!   extensions), which checks a serialised event attribute by attribute.
//! - [`process_cache`]: processes by pid and time with stable `process.uid`s, shared by every
//!   source that needs to attach a process to file, network, registry or module events.
//!
//! The crate has no I/O beyond reading the schema directory, so both the sensor and the
//! Collector can depend on it.
#![forbid(unsafe_code)]

pub mod class;
pub mod model;
pub mod process_cache;
pub mod validate;

pub use class::{Class, Severity};
pub use model::{Event, Metadata, OCSF_VERSION, Product};
pub use validate::{Schema, SchemaError, ValidationError, Violation};

/// The directory of the OCSF schema inside a data directory: `<data dir>/ocsf-schema`.
pub fn schema_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("ocsf-schema")
}
