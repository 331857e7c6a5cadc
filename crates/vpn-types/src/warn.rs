//! Warnings a peer can cause, written at most once every few seconds per peer and a few a
//! second in all, and the peer's own text in them made harmless ([`PeerText`]).

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one warning line per key through every `every` and counts the ones held back, so a
/// peer that keeps misbehaving costs a summary line every few seconds, not a line per act.
/// It tracks at most `capacity` keys; when all are recent, a new key's line is held back.
/// Over all keys at most `per_second` lines pass each second: many peers (or one with
/// many peer IDs) cost a few lines a second, not one each.
#[derive(Debug)]
pub struct WarnGate<K> {
    every: Duration,
    capacity: usize,
    per_second: u32,
    state: Mutex<State<K>>,
}

#[derive(Debug)]
struct State<K> {
    /// Per key: when its last line was let through, and lines held back since.
    keys: HashMap<K, (Instant, u64)>,
    /// The current second over all keys: when it began and the lines it let through.
    second: (Instant, u32),
    /// Lines of keys not tracked yet held back by the limit over all keys; told with the
    /// next line that passes.
    untracked: u64,
}

impl<K: Hash + Eq> WarnGate<K> {
    /// One line per key every `every`, for at most `capacity` keys at once, and at most
    /// `per_second` lines a second in all.
    pub fn new(every: Duration, capacity: usize, per_second: u32) -> Self {
        let state = State { keys: HashMap::new(), second: (Instant::now(), 0), untracked: 0 };
        Self {
            every,
            capacity: capacity.max(1),
            per_second: per_second.max(1),
            state: Mutex::new(state),
        }
    }

    /// The gate used for peers' misdeeds: one line per peer every 5 s, 1 024 peers, five
    /// lines a second in all.
    pub fn per_peer() -> Self {
        Self::new(Duration::from_secs(5), 1024, 5)
    }

    /// `Some(held_back)` when a line for `key` may be written now, with the number of lines
    /// held back since the last one; `None` when this one is held back.
    pub fn admit(&self, key: K) -> Option<u64> {
        self.admit_at(key, Instant::now())
    }

    /// [`admit`](Self::admit) at `now`. The count returned includes lines of peers not
    /// tracked that the limit over all keys held back.
    pub fn admit_at(&self, key: K, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let state = &mut *state;
        if now.saturating_duration_since(state.second.0) >= Duration::from_secs(1) {
            state.second = (now, 0);
        }
        let full = state.second.1 >= self.per_second;
        if let Some((last, held)) = state.keys.get_mut(&key) {
            if full || now.saturating_duration_since(*last) < self.every {
                *held += 1;
                return None;
            }
            let held_back = std::mem::take(held) + std::mem::take(&mut state.untracked);
            *last = now;
            state.second.1 += 1;
            return Some(held_back);
        }
        if full {
            state.untracked += 1;
            return None;
        }
        if state.keys.len() >= self.capacity {
            let every = self.every;
            state.keys.retain(|_, (last, _)| now.saturating_duration_since(*last) < every);
            if state.keys.len() >= self.capacity {
                state.untracked += 1;
                return None;
            }
        }
        state.keys.insert(key, (now, 0));
        state.second.1 += 1;
        Some(std::mem::take(&mut state.untracked))
    }
}

/// Text a peer chose (a reason it gave, an address in its certificate), as a log line or
/// an error may show it: control characters and quotes escaped (no line of ours can be
/// forged or broken by it) and cut after [`PeerText::MAX`] characters, saying how many
/// more there were.
#[derive(Debug, Clone, Copy)]
pub struct PeerText<'a>(pub &'a str);

impl PeerText<'_> {
    /// Characters shown at most.
    pub const MAX: usize = 48;
}

impl fmt::Display for PeerText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(Self::MAX) {
            fmt::Display::fmt(&c.escape_debug(), f)?;
        }
        let rest = chars.count();
        if rest > 0 {
            write!(f, "... ({rest} more characters)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_period_with_a_count_of_the_rest() {
        let gate = WarnGate::new(Duration::from_secs(5), 16, 100);
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
        let gate = WarnGate::new(Duration::from_secs(5), 4, 100);
        let start = Instant::now();
        for key in 0..4 {
            assert_eq!(gate.admit_at(key, start), Some(0));
        }
        assert_eq!(gate.admit_at(4, start), None, "all four are recent");
        let later = start + Duration::from_secs(5);
        assert_eq!(
            gate.admit_at(5, later),
            Some(1),
            "stale keys make room; key 4's line is counted"
        );
        assert!(gate.state.lock().unwrap().keys.len() <= 4);
    }

    #[test]
    fn new_keys_share_a_few_lines_a_second() {
        let gate = WarnGate::new(Duration::from_secs(5), 1024, 3);
        let start = Instant::now();
        let passed = (0..1000).filter(|key| gate.admit_at(*key, start).is_some()).count();
        assert_eq!(passed, 3, "a thousand new peers in one second cost three lines");
        let next = start + Duration::from_secs(1);
        assert_eq!(gate.admit_at(1000, next), Some(997), "the next line counts the rest");
        // A tracked key past its period waits for room too, and keeps its count.
        for key in 1001..1003 {
            assert_eq!(gate.admit_at(key, next), Some(0));
        }
        assert_eq!(gate.admit_at(0, start + Duration::from_secs(5)), Some(0));
        let later = start + Duration::from_millis(5500);
        for key in 2000..2002 {
            assert_eq!(gate.admit_at(key, later), Some(0));
        }
        assert_eq!(gate.admit_at(1, later), None, "the second is full");
        assert_eq!(gate.admit_at(1, start + Duration::from_secs(7)), Some(1));
    }

    #[test]
    fn peer_text_is_escaped_and_cut() {
        let forged = "bad\nWARN forged line\r\u{1b}[31m\"";
        let shown = PeerText(forged).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.contains("\\n") && shown.contains("\\\""), "{shown}");
        let long = "x".repeat(8000);
        let shown = PeerText(&long).to_string();
        assert!(shown.len() < 80, "{} characters", shown.len());
        assert!(shown.ends_with("(7952 more characters)"), "{shown}");
        assert_eq!(PeerText("fine text").to_string(), "fine text");
    }
}
