//! A bounded map whose entries expire: the per-worker credential caches.
//!
//! Entries expire at their own deadline (a verified JWT at its `exp`, a key digest after the
//! configured TTL). When the map is full, the oldest insertion is evicted first, whether it
//! has expired or not, so memory stays bounded whatever a client sends.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::SystemTime;

pub struct BoundedCache<K, V> {
    capacity: usize,
    entries: HashMap<K, Slot<V>>,
    /// Insertion sequence -> key, oldest first.
    order: BTreeMap<u64, K>,
    next_seq: u64,
}

struct Slot<V> {
    seq: u64,
    expires: SystemTime,
    value: V,
}

impl<K: Eq + Hash + Clone, V> BoundedCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        BoundedCache {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// The live entry for `key`; an expired one is removed.
    pub fn get(&mut self, key: &K, now: SystemTime) -> Option<&V> {
        let expired = self.entries.get(key)?.expires <= now;
        if expired {
            self.remove(key);
            return None;
        }
        self.entries.get(key).map(|s| &s.value)
    }

    /// Inserts or replaces `key`, live until `expires`.
    pub fn insert(&mut self, key: K, value: V, expires: SystemTime) {
        self.remove(&key);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.order.insert(seq, key.clone());
        self.entries.insert(
            key,
            Slot {
                seq,
                expires,
                value,
            },
        );
    }

    pub fn remove(&mut self, key: &K) {
        if let Some(slot) = self.entries.remove(key) {
            self.order.remove(&slot.seq);
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn expires_and_evicts_oldest() {
        let mut c = BoundedCache::new(2);
        c.insert("a", 1, at(10));
        c.insert("b", 2, at(20));
        assert_eq!(c.get(&"a", at(5)), Some(&1));
        assert_eq!(c.get(&"a", at(10)), None, "expired at its deadline");
        c.insert("a", 1, at(30));
        c.insert("c", 3, at(30));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&"b", at(5)), None, "the oldest insertion went first");
        // Re-inserting moves a key to the back.
        c.insert("a", 4, at(30));
        c.insert("d", 5, at(30));
        assert_eq!(c.get(&"c", at(5)), None);
        assert_eq!(c.get(&"a", at(5)), Some(&4));
        assert_eq!(c.order.len(), c.entries.len());
    }
}
