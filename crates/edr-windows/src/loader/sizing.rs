//! Turns a session's configured sizing into `EVENT_TRACE_PROPERTIES` values for this machine.
//!
//! The minimum buffer count scales with the number of logical processors because ETW keeps
//! per-processor buffers: a burst on every processor at once needs a free buffer on each. The
//! maximum is raised to twice the scaled minimum when the configured value is lower, so a large
//! machine still has room to absorb a burst while the consumer catches up.

use std::time::Duration;

use super::controller::SessionProperties;
use crate::config::SessionSizingConfig;

/// The result of sizing one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPlan {
    pub properties: SessionProperties,
    /// Interval of the loader's explicit `EVENT_TRACE_CONTROL_FLUSH`, if any.
    pub flush_interval: Option<Duration>,
    /// Whether `maximum_buffers` was raised above the configured value.
    pub maximum_raised: bool,
}

/// Computes a session's properties for a machine with `processor_count` logical processors.
pub fn plan_session(config: &SessionSizingConfig, processor_count: u32) -> SessionPlan {
    let processors = processor_count.max(1);
    let minimum_buffers = config.minimum_buffers_per_cpu.saturating_mul(processors);
    let floor = minimum_buffers.saturating_mul(2);
    let maximum_raised = config.maximum_buffers < floor;
    let maximum_buffers = config.maximum_buffers.max(floor);

    let flush_interval = match config.flush_interval_ms {
        0 => None,
        ms => Some(Duration::from_millis(u64::from(ms))),
    };

    SessionPlan {
        properties: SessionProperties {
            buffer_size_kb: config.buffer_size_kb,
            minimum_buffers,
            maximum_buffers,
            flush_timer_secs: config.flush_timer_secs.max(1),
        },
        flush_interval,
        maximum_raised,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_scales_with_processors() {
        let config = SessionSizingConfig::process_default();
        assert_eq!(plan_session(&config, 1).properties.minimum_buffers, 4);
        assert_eq!(plan_session(&config, 16).properties.minimum_buffers, 64);
    }

    #[test]
    fn maximum_raised_to_twice_minimum() {
        let config = SessionSizingConfig {
            maximum_buffers: 10,
            ..SessionSizingConfig::process_default()
        };
        let plan = plan_session(&config, 8);
        assert_eq!(plan.properties.minimum_buffers, 32);
        assert_eq!(plan.properties.maximum_buffers, 64);
        assert!(plan.maximum_raised);
    }

    #[test]
    fn configured_maximum_kept_when_large_enough() {
        let plan = plan_session(&SessionSizingConfig::bulk_default(), 4);
        assert_eq!(plan.properties.maximum_buffers, 1024);
        assert!(!plan.maximum_raised);
        assert_eq!(plan.properties.max_memory_kb(), 64 * 1024);
    }

    #[test]
    fn zero_processors_treated_as_one() {
        let plan = plan_session(&SessionSizingConfig::bulk_default(), 0);
        assert_eq!(plan.properties.minimum_buffers, 4);
    }

    #[test]
    fn flush_interval_zero_means_off() {
        assert_eq!(
            plan_session(&SessionSizingConfig::bulk_default(), 2).flush_interval,
            None
        );
        assert_eq!(
            plan_session(&SessionSizingConfig::process_default(), 2).flush_interval,
            Some(Duration::from_millis(5))
        );
    }

    #[test]
    fn process_session_buffers_smaller_than_bulk() {
        let process = plan_session(&SessionSizingConfig::process_default(), 4).properties;
        let bulk = plan_session(&SessionSizingConfig::bulk_default(), 4).properties;
        assert!(process.buffer_size_kb < bulk.buffer_size_kb);
    }
}
