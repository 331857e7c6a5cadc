//! Warnings a peer can cause, written at most once every few seconds per peer.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one warning line per key through every `every` and counts the ones held back, so a
/// peer that keeps misbehaving costs a summary line every few seconds, not a line per act.
/// It tracks at most `capacity` keys; when all are recent, a new key's line is held back.
#[derive(Debug)]
pub struct WarnGate<K> {
    every: Duration,
    capacity: usize,
    /// Per key: when its last line was let through, and lines held back since.
    keys: Mutex<HashMap<K, (Instant, u64)>>,
}

impl<K: Hash + Eq> WarnGate<K> {
    /// One line per key every `every`, for at most `capacity` keys at once.
    pub fn new(every: Duration, capacity: usize) -> Self {
        Self { every, capacity: capacity.max(1), keys: Mutex::new(HashMap::new()) }
    }

    /// The gate used for peers' misdeeds: one line per peer every 5 s, 1 024 peers.
    pub fn per_peer() -> Self {
        Self::new(Duration::from_secs(5), 1024)
    }

    /// `Some(held_back)` when a line for `key` may be written now, with the number of lines
    /// held back since the last one; `None` when this one is held back.
    pub fn admit(&self, key: K) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    /// [`admit`](Self::admit) at `now`.
    pub fn admit_at(&self, key: K, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((last, held)) = keys.get_mut(&key) {
            if now.saturating_duration_since(*last) < self.every {
                *held += 1;
                return None;
            }
            let held_back = std::mem::take(held);
            *last = now;
            return Some(held_back);
        }
        if keys.len() >= self.capacity {
            let every = self.every;
            keys.retain(|_, (last, _)| now.saturating_duration_since(*last) < every);
            if keys.len() >= self.capacity {
                return None;
            }
        }
        keys.insert(key, (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_period_with_a_count_of_the_rest() {
        let gate = WarnGate::new(Duration::from_secs(5), 16);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(gate.admit_at("a", at(0)), Some(0));
        for ms in 1..100 {
            assert_eq!(gate.admit_at("a", at(ms * 10)), None);
        }
        assert_eq!(gate.admit_at("b", at(500)), Some(0), "another key has its own period");
        assert_eq!(gate.admit_at("a", at(5_000)), Some(99), "the summary counts what was held");
        assert_eq!(gate.admit_at("a", at(5_001)), None);
        assert_eq!(gate.admit_at("a", at(10_000)), Some(1));
    }

    #[test]
    fn it_tracks_at_most_its_capacity_of_keys() {
        let gate = WarnGate::new(Duration::from_secs(5), 4);
        let start = Instant::now();
        for key in 0..4 {
            assert_eq!(gate.admit_at(key, start), Some(0));
        }
        assert_eq!(gate.admit_at(4, start), None, "all four are recent");
        let later = start + Duration::from_secs(5);
        assert_eq!(gate.admit_at(5, later), Some(0), "stale keys make room");
        assert!(gate.keys.lock().unwrap().len() <= 4);
    }
}
