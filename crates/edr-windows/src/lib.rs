//! The Windows sensor.
//!
//! Everything here compiles on Linux; only the OS bindings in `sys` are gated on
//! `cfg(windows)`, and `sys` is the only module allowed to use `unsafe`.
#![deny(unsafe_code)]

pub mod capabilities;
pub mod config;
pub mod enrollment;
pub mod events;
pub mod loader;
pub mod logging;
pub mod ocsf;
pub mod pipeline;
pub mod service;
pub mod sys;

/// Default capacity of the on-disk ring buffer reported in the capability manifest.
pub const DEFAULT_BUFFER_CAPACITY_BYTES: u64 = edr_sensor::buffer::DEFAULT_CAPACITY_BYTES;
