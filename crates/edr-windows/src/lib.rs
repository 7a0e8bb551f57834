//! The Windows sensor.
//!
//! Everything here compiles on Linux; only the OS bindings in `sys` are gated on
//! `cfg(windows)`, and `sys` is the only module allowed to use `unsafe`.
#![deny(unsafe_code)]

pub mod capabilities;
pub mod enrollment;
#[cfg(windows)]
#[allow(
    unsafe_code,
    reason = "the Win32 wrapper module; every block has a SAFETY comment"
)]
mod sys;

/// Default capacity of the on-disk ring buffer reported in the capability manifest.
pub const DEFAULT_BUFFER_CAPACITY_BYTES: u64 = 1 << 30;
