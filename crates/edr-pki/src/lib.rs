//! Collector CA, enrollment tokens, CSR signing and rustls configurations.
#![forbid(unsafe_code)]
