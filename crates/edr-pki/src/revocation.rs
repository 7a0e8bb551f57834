//! The revocation list: certificates the Collector no longer accepts although they are
//! signed by its CA and still within their validity.
//!
//! [`RevocationList`] is shared between the TLS server configuration, which consults it on
//! every handshake, and whoever maintains it at runtime (the Collector reloads it from its
//! database). Replacing the set is a pointer swap under a lock; a handshake never waits for
//! a reload.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use crate::SensorId;

/// Revoked certificate serials and sensor ids. Revoking a sensor id rejects every certificate
/// issued to that sensor, including renewed ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationSet {
    serials: HashSet<Vec<u8>>,
    sensor_ids: HashSet<SensorId>,
}

impl RevocationSet {
    /// Adds a certificate serial (big-endian bytes, leading zeros stripped).
    pub fn revoke_serial(&mut self, serial: &[u8]) {
        self.serials.insert(strip_leading_zeros(serial).to_vec());
    }

    pub fn revoke_sensor(&mut self, sensor_id: SensorId) {
        self.sensor_ids.insert(sensor_id);
    }

    /// Returns whether a certificate with `serial` issued to `sensor_id` is revoked.
    pub fn is_revoked(&self, serial: &[u8], sensor_id: Option<SensorId>) -> bool {
        self.serials.contains(strip_leading_zeros(serial))
            || sensor_id.is_some_and(|id| self.sensor_ids.contains(&id))
    }

    pub fn len(&self) -> usize {
        self.serials.len() + self.sensor_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The current revocation set, replaceable at runtime.
#[derive(Debug, Default)]
pub struct RevocationList {
    current: RwLock<Arc<RevocationSet>>,
}

impl RevocationList {
    pub fn new(set: RevocationSet) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(set)),
        })
    }

    /// Replaces the set; returns whether it changed.
    pub fn replace(&self, set: RevocationSet) -> bool {
        let mut current = match self.current.write() {
            Ok(guard) => guard,
            // A panic while holding the lock cannot leave the Arc half-written.
            Err(poisoned) => poisoned.into_inner(),
        };
        if **current == set {
            return false;
        }
        *current = Arc::new(set);
        true
    }

    /// The set in force now.
    pub fn snapshot(&self) -> Arc<RevocationSet> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

fn strip_leading_zeros(serial: &[u8]) -> &[u8] {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    &serial[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_by_serial_or_sensor() {
        let sensor = uuid::Uuid::new_v4();
        let mut set = RevocationSet::default();
        set.revoke_serial(&[0, 1, 2]);
        set.revoke_sensor(sensor);
        assert!(set.is_revoked(&[1, 2], None));
        assert!(set.is_revoked(&[9], Some(sensor)));
        assert!(!set.is_revoked(&[9], Some(uuid::Uuid::new_v4())));
    }

    #[test]
    fn replace_reports_change() {
        let list = RevocationList::new(RevocationSet::default());
        let mut set = RevocationSet::default();
        set.revoke_serial(&[1]);
        assert!(list.replace(set.clone()));
        assert!(!list.replace(set));
        assert!(list.snapshot().is_revoked(&[1], None));
    }
}
