//! A map of bounded size that forgets its least recently used entry first.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// At most `capacity` entries; reading or writing an entry makes it the most recently used.
pub(crate) struct Lru<K, V> {
    capacity: usize,
    /// Stamp of the last use, rising with every use.
    clock: u64,
    entries: HashMap<K, (V, u64)>,
    /// Keys by the stamp of their last use, oldest first.
    order: BTreeMap<u64, K>,
}

impl<K: Hash + Eq + Copy, V> Lru<K, V> {
    /// An empty map holding at most `capacity` entries (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            clock: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn touch(&mut self, key: K, stamp: &mut u64) {
        self.clock += 1;
        self.order.remove(stamp);
        *stamp = self.clock;
        self.order.insert(self.clock, key);
    }

    /// The entry for `key`, now the most recently used.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let (_, stamp) = self.entries.get(key)?;
        let mut stamp = *stamp;
        self.touch(*key, &mut stamp);
        let (value, old) = self.entries.get_mut(key)?;
        *old = stamp;
        Some(value)
    }

    /// Sets the entry for `key`; returns how many entries were forgotten to make room.
    pub(crate) fn insert(&mut self, key: K, value: V) -> usize {
        let mut forgotten = 0;
        if !self.entries.contains_key(&key) {
            while self.entries.len() >= self.capacity {
                let Some((_, oldest)) = self.order.pop_first() else { break };
                self.entries.remove(&oldest);
                forgotten += 1;
            }
        }
        let mut stamp = self.entries.get(&key).map_or(0, |(_, stamp)| *stamp);
        self.touch(key, &mut stamp);
        self.entries.insert(key, (value, stamp));
        forgotten
    }

    /// Forgets every entry.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// Entries held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let mut lru = Lru::new(3);
        for key in 1..=3 {
            assert_eq!(lru.insert(key, key * 10), 0);
        }
        // 1 is used again, so 2 is now the oldest.
        assert_eq!(lru.get_mut(&1).copied(), Some(10));
        assert_eq!(lru.insert(4, 40), 1);
        assert_eq!(lru.get_mut(&2), None);
        assert_eq!(lru.insert(3, 31), 0, "replacing an entry forgets nothing");
        assert_eq!(lru.len(), 3);
        assert_eq!(lru.insert(5, 50), 1);
        assert_eq!(lru.get_mut(&1), None, "1 was the oldest after 3 and 4 were written");
        assert_eq!(lru.get_mut(&3).copied(), Some(31));
        lru.clear();
        assert_eq!(lru.len(), 0);
    }

    #[test]
    fn it_never_holds_more_than_its_capacity() {
        let mut lru = Lru::new(100);
        let mut forgotten = 0;
        for key in 0..10_000u32 {
            forgotten += lru.insert(key, ());
            if key % 3 == 0 {
                let _ = lru.get_mut(&(key / 2));
            }
            assert!(lru.len() <= 100);
        }
        assert_eq!(forgotten, 10_000 - 100);
        assert_eq!(lru.order.len(), lru.entries.len());
    }
}
