//! The Windows sensor.
//!
//! Everything here compiles on Linux; only the OS bindings under `sys` are gated on
//! `cfg(windows)`.
#![deny(unsafe_code)]

pub mod capabilities;
pub mod config;
pub mod loader;
pub mod logging;
pub mod service;
pub mod sys;
