//! The capability manifest: what this sensor build can collect and do.
