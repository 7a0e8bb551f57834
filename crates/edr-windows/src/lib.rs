//! The Windows sensor.
//!
//! Everything here compiles on Linux; only the OS bindings under `sys` are gated on
//! `cfg(windows)`.
#![deny(unsafe_code)]

pub mod capabilities;
pub mod events;
