//! A small bounded cache with a time-to-live: insertion order eviction, no background task.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// At most `capacity` entries, each valid for `ttl`; the oldest insertion goes first when full.
#[derive(Debug)]
pub(crate) struct BoundedCache<K, V> {
    map: HashMap<K, (Instant, V)>,
    order: VecDeque<K>,
    capacity: usize,
    ttl: Duration,
}

impl<K: Hash + Eq + Clone, V: Clone> BoundedCache<K, V> {
    /// A cache of `capacity` entries (0 disables it).
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            ttl,
        }
    }

    /// The value for `key` if present and younger than the TTL.
    pub(crate) fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        match self.map.get(key) {
            Some((at, v)) if now.saturating_duration_since(*at) < self.ttl => Some(v.clone()),
            _ => None,
        }
    }

    /// Stores `value`, evicting the oldest entries beyond the capacity.
    pub(crate) fn insert(&mut self, key: K, value: V, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        if let Some(slot) = self.map.get_mut(&key) {
            *slot = (now, value);
            return;
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.order.push_back(key.clone());
        self.map.insert(key, (now, value));
    }

    /// Number of entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expiring() {
        let t0 = Instant::now();
        let mut c = BoundedCache::new(2, Duration::from_secs(10));
        c.insert(1, "a", t0);
        c.insert(2, "b", t0);
        c.insert(3, "c", t0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&1, t0), None);
        assert_eq!(c.get(&3, t0), Some("c"));
        assert_eq!(c.get(&3, t0 + Duration::from_secs(11)), None);
        let mut off = BoundedCache::new(0, Duration::from_secs(10));
        off.insert(1, "a", t0);
        assert_eq!(off.get(&1, t0), None);
    }
}
