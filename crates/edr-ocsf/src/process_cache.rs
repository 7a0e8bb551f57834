//! A process cache that any source uses to give events their process and a stable `process.uid`.
//!
//! Invariants and limits:
//! - Each process gets one `uid` for its life. Sysmon's `ProcessGuid` is used where the source
//!   has one; otherwise [`derive_process_uid`] builds a UUID (version 5) from the host key (a boot
//!   id or host name), the pid and the start time, so two sources that see the same process
//!   derive the same `uid`, and a reused pid with a later start time gets a different one.
//! - Windows reuses pids. The cache keeps several generations per pid; [`ProcessCache::lookup`]
//!   picks the one whose life span contains the event time. A start for a pid whose previous
//!   generation has no exit closes that generation at the new start time.
//! - The cache holds at most `capacity` processes. When full it evicts exited processes first,
//!   oldest exit first, then the oldest start; [`ProcessCache::evicted`] counts evictions.
//! - Events that arrive before their process start (ETW buffers of different CPUs are flushed
//!   out of order) wait in a [`PendingEvents`] queue keyed by pid, bounded by count and age; the
//!   caller releases them when the start arrives, or unenriched when they expire.

use std::collections::{HashMap, VecDeque};

use uuid::Uuid;

use crate::model::{File, Process, User};

/// Namespace of the version-5 UUIDs that [`derive_process_uid`] builds.
const PROCESS_UID_NAMESPACE: Uuid = Uuid::from_u128(0x5c1f_3b7e_8a2d_4e61_9f0a_6b4c_2d8e_7a13);

/// Derives the stable `process.uid` of a process that has no source-given id.
///
/// `host_key` is the boot id where the source has one (it changes at every boot, so pids and
/// start times from different boots never collide), else the host name. `start_time_ms` is the
/// process start time in ms since the Unix epoch.
pub fn derive_process_uid(host_key: &str, pid: u32, start_time_ms: i64) -> String {
    let name = format!("{host_key}|{pid}|{start_time_ms}");
    Uuid::new_v5(&PROCESS_UID_NAMESPACE, name.as_bytes()).to_string()
}

/// Cache entry for one process.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProcessInfo {
    pub pid: u32,
    pub uid: String,
    pub image: Option<String>,
    pub cmd_line: Option<String>,
    pub user: Option<User>,
    pub parent_pid: Option<u32>,
    pub parent_uid: Option<String>,
    /// Start time in ms since the Unix epoch; `None` when only seen through other events.
    pub start_time: Option<i64>,
    /// Exit time in ms since the Unix epoch.
    pub exit_time: Option<i64>,
}

impl ProcessInfo {
    /// The OCSF `process` object without its parent.
    pub fn to_process(&self) -> Process {
        let file = self.image.as_deref().map(File::from_path);
        Process {
            pid: Some(self.pid),
            uid: Some(self.uid.clone()),
            name: file.as_ref().map(|f| f.name.clone()),
            path: self.image.clone(),
            cmd_line: self.cmd_line.clone(),
            file,
            user: self.user.clone(),
            created_time: self.start_time,
            terminated_time: self.exit_time,
            ..Process::default()
        }
    }
}

/// Processes by pid and by uid, with pid reuse handled by generations.
#[derive(Debug)]
pub struct ProcessCache {
    by_pid: HashMap<u32, Vec<ProcessInfo>>,
    /// The pid of each held process by uid, so uid lookups need not scan.
    pid_by_uid: HashMap<String, u32>,
    capacity: usize,
    len: usize,
    evicted: u64,
}

impl ProcessCache {
    /// An empty cache that holds at most `capacity` processes (at least 1).
    pub fn new(capacity: usize) -> ProcessCache {
        ProcessCache {
            by_pid: HashMap::new(),
            pid_by_uid: HashMap::new(),
            capacity: capacity.max(1),
            len: 0,
            evicted: 0,
        }
    }

    /// Number of processes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache holds no process.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of processes evicted because the cache was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Records a process start. A live generation of the same pid that started earlier is
    /// closed at this start time (pid reuse); a generation with the same uid is replaced.
    pub fn insert(&mut self, info: ProcessInfo) {
        if self.len >= self.capacity {
            self.evict_one();
        }
        // A uid seen before under another pid: drop the stale entry first.
        if let Some(old_pid) = self.pid_by_uid.get(&info.uid).copied()
            && old_pid != info.pid
        {
            self.remove(old_pid, &info.uid.clone());
        }
        let generations = self.by_pid.entry(info.pid).or_default();
        if let Some(existing) = generations.iter_mut().find(|g| g.uid == info.uid) {
            *existing = info;
            return;
        }
        self.pid_by_uid.insert(info.uid.clone(), info.pid);
        if let Some(start) = info.start_time {
            for previous in generations.iter_mut() {
                if previous.exit_time.is_none() && previous.start_time.is_some_and(|s| s <= start) {
                    previous.exit_time = Some(start);
                }
            }
        }
        generations.push(info);
        generations.sort_by_key(|g| g.start_time.unwrap_or(i64::MIN));
        self.len += 1;
    }

    /// Records a process exit at `time`; returns the process that exited, if known.
    pub fn exit(&mut self, pid: u32, time: i64) -> Option<ProcessInfo> {
        let generation = self
            .by_pid
            .get_mut(&pid)?
            .iter_mut()
            .rev()
            .find(|g| g.start_time.is_none_or(|s| s <= time) && g.exit_time.is_none())?;
        generation.exit_time = Some(time);
        Some(generation.clone())
    }

    /// Returns the generation of `pid` that exited within `window_ms` of `time`, if any. A
    /// second provider that reports the same exit (a kernel trace often has both the NT Kernel
    /// Logger and Microsoft-Windows-Kernel-Process) finds the process the first report closed.
    pub fn exited_near(&self, pid: u32, time: i64, window_ms: i64) -> Option<ProcessInfo> {
        self.by_pid
            .get(&pid)?
            .iter()
            .rev()
            .find(|g| g.exit_time.is_some_and(|e| (e - time).abs() <= window_ms))
            .cloned()
    }

    /// The generation of `pid` alive at `time`: started at or before it and not exited before
    /// it. A generation without a start time matches any time before the next generation.
    pub fn lookup(&self, pid: u32, time: i64) -> Option<&ProcessInfo> {
        self.by_pid.get(&pid)?.iter().rev().find(|g| {
            g.start_time.is_none_or(|s| s <= time) && g.exit_time.is_none_or(|e| e >= time)
        })
    }

    /// The process with `uid`, if held.
    pub fn lookup_uid(&self, uid: &str) -> Option<&ProcessInfo> {
        let pid = self.pid_by_uid.get(uid)?;
        self.by_pid.get(pid)?.iter().find(|g| g.uid == uid)
    }

    /// The OCSF `process` for `pid` at `time` with its parent, or `None` when unknown.
    pub fn process_at(&self, pid: u32, time: i64) -> Option<Process> {
        let info = self.lookup(pid, time)?;
        Some(self.with_parent(info))
    }

    /// The OCSF `process` for `info`, with the parent filled from the cache where it is held.
    pub fn with_parent(&self, info: &ProcessInfo) -> Process {
        let mut process = info.to_process();
        let parent = match (&info.parent_uid, info.parent_pid) {
            (Some(uid), _) => self.lookup_uid(uid),
            (None, Some(pid)) => info.start_time.and_then(|t| self.lookup(pid, t)),
            (None, None) => None,
        };
        process.parent_process = match parent {
            Some(parent) => Some(Box::new(parent.to_process())),
            None if info.parent_pid.is_some() || info.parent_uid.is_some() => {
                Some(Box::new(Process {
                    pid: info.parent_pid,
                    uid: info.parent_uid.clone(),
                    ..Process::default()
                }))
            }
            None => None,
        };
        process
    }

    // NOTE: eviction scans every held process, so a cache kept full costs O(capacity) per
    // insert; a live sensor with a small capacity should keep an exit-ordered index instead.
    fn evict_one(&mut self) {
        // Exited processes go first, oldest exit first; then the oldest start.
        let victim = self
            .by_pid
            .values()
            .flatten()
            .min_by_key(|g| {
                (
                    g.exit_time.is_none(),
                    g.exit_time.or(g.start_time).unwrap_or(i64::MIN),
                )
            })
            .map(|g| (g.pid, g.uid.clone()));
        let Some((pid, uid)) = victim else { return };
        self.remove(pid, &uid);
        self.evicted += 1;
    }

    fn remove(&mut self, pid: u32, uid: &str) {
        let Some(generations) = self.by_pid.get_mut(&pid) else {
            return;
        };
        let before = generations.len();
        generations.retain(|g| g.uid != uid);
        self.len -= before - generations.len();
        if generations.is_empty() {
            self.by_pid.remove(&pid);
        }
        self.pid_by_uid.remove(uid);
    }
}

/// Events waiting for the start of their process, bounded by count and age.
#[derive(Debug)]
pub struct PendingEvents<T> {
    queue: VecDeque<(u32, i64, T)>,
    max_events: usize,
    max_age_ms: i64,
}

impl<T> PendingEvents<T> {
    /// A queue holding at most `max_events` events for at most `max_age_ms` each.
    pub fn new(max_events: usize, max_age_ms: i64) -> PendingEvents<T> {
        PendingEvents {
            queue: VecDeque::new(),
            max_events: max_events.max(1),
            max_age_ms,
        }
    }

    /// Number of waiting events.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Holds `event` of `pid` seen at `time`; returns the oldest event when the queue overflows,
    /// which the caller emits without its process.
    pub fn hold(&mut self, pid: u32, time: i64, event: T) -> Option<T> {
        self.queue.push_back((pid, time, event));
        if self.queue.len() > self.max_events {
            return self.queue.pop_front().map(|(_, _, event)| event);
        }
        None
    }

    /// Removes and returns the events of `pid`, in arrival order.
    pub fn release(&mut self, pid: u32) -> Vec<T> {
        let mut released = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for (event_pid, time, event) in self.queue.drain(..) {
            if event_pid == pid {
                released.push(event);
            } else {
                kept.push_back((event_pid, time, event));
            }
        }
        self.queue = kept;
        released
    }

    /// Removes and returns the events older than the maximum age at `now`.
    pub fn expire(&mut self, now: i64) -> Vec<T> {
        let mut expired = Vec::new();
        while let Some((_, time, _)) = self.queue.front() {
            if now - *time <= self.max_age_ms {
                break;
            }
            if let Some((_, _, event)) = self.queue.pop_front() {
                expired.push(event);
            }
        }
        expired
    }

    /// Removes and returns every waiting event, for the end of a stream.
    pub fn drain(&mut self) -> Vec<T> {
        self.queue.drain(..).map(|(_, _, event)| event).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: u32, start: i64, image: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            uid: derive_process_uid("boot-1", pid, start),
            image: Some(image.to_owned()),
            start_time: Some(start),
            ..ProcessInfo::default()
        }
    }

    #[test]
    fn derived_uid_is_stable_and_distinct() {
        assert_eq!(
            derive_process_uid("h", 4, 10),
            derive_process_uid("h", 4, 10)
        );
        assert_ne!(
            derive_process_uid("h", 4, 10),
            derive_process_uid("h", 4, 11)
        );
        assert_ne!(
            derive_process_uid("h", 4, 10),
            derive_process_uid("g", 4, 10)
        );
    }

    #[test]
    fn pid_reuse_picks_generation_by_time() {
        let mut cache = ProcessCache::new(16);
        cache.insert(info(100, 1_000, r"C:\a.exe"));
        cache.insert(info(100, 5_000, r"C:\b.exe"));
        assert_eq!(
            cache
                .lookup(100, 2_000)
                .and_then(|p| p.image.clone())
                .as_deref(),
            Some(r"C:\a.exe")
        );
        assert_eq!(
            cache
                .lookup(100, 6_000)
                .and_then(|p| p.image.clone())
                .as_deref(),
            Some(r"C:\b.exe")
        );
        assert!(cache.lookup(100, 500).is_none());
    }

    #[test]
    fn exit_closes_generation() {
        let mut cache = ProcessCache::new(16);
        cache.insert(info(7, 1_000, r"C:\a.exe"));
        assert!(cache.exit(7, 2_000).is_some());
        assert!(cache.lookup(7, 1_500).is_some());
        assert!(cache.lookup(7, 2_500).is_none());
    }

    #[test]
    fn parent_filled_from_cache() {
        let mut cache = ProcessCache::new(16);
        let parent = info(1, 100, r"C:\Windows\explorer.exe");
        let mut child = info(2, 200, r"C:\Windows\cmd.exe");
        child.parent_pid = Some(1);
        cache.insert(parent);
        cache.insert(child);
        let process = cache.process_at(2, 300).expect("child is cached");
        let parent = process.parent_process.expect("parent is cached");
        assert_eq!(parent.name.as_deref(), Some("explorer.exe"));
        assert_eq!(parent.pid, Some(1));
    }

    #[test]
    fn full_cache_evicts_exited_first() {
        let mut cache = ProcessCache::new(2);
        cache.insert(info(1, 100, "a"));
        cache.insert(info(2, 200, "b"));
        cache.exit(2, 300);
        cache.insert(info(3, 400, "c"));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.evicted(), 1);
        assert!(cache.lookup(1, 500).is_some());
        assert!(cache.lookup(2, 250).is_none());
    }

    #[test]
    fn uid_lookup_follows_reinsert() {
        let mut cache = ProcessCache::new(16);
        let mut first = info(5, 100, "a");
        first.uid = "guid-1".to_owned();
        cache.insert(first.clone());
        assert_eq!(cache.lookup_uid("guid-1").map(|p| p.pid), Some(5));
        first.pid = 6;
        cache.insert(first);
        assert_eq!(cache.lookup_uid("guid-1").map(|p| p.pid), Some(6));
        assert_eq!(cache.len(), 1);
        assert!(cache.lookup(5, 200).is_none());
    }

    #[test]
    fn pending_events_release_and_expire() {
        let mut pending = PendingEvents::new(3, 1_000);
        assert!(pending.hold(9, 0, "a").is_none());
        assert!(pending.hold(8, 10, "b").is_none());
        assert!(pending.hold(9, 20, "c").is_none());
        assert_eq!(pending.hold(8, 30, "d"), Some("a"));
        assert_eq!(pending.release(9), vec!["c"]);
        assert_eq!(pending.expire(1_015), vec!["b"]);
        assert_eq!(pending.drain(), vec!["d"]);
    }
}
