//! Wire contracts shared by the sensor and the Collector.
#![forbid(unsafe_code)]
