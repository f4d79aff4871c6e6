//! A bounded set of recently seen blob ids, oldest forgotten first.
//!
//! Blobs are immutable, so an id names a change: both the CouchDB relay (a
//! feed that rewinds after a shard moves) and a subscriber rejoining the
//! live ring (a sharded feed that brings changes in another order) drop
//! what they delivered already by remembering ids for a while.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// Remembers at most `capacity` ids.
#[derive(Debug)]
pub struct RecentIds {
    order: VecDeque<Arc<str>>,
    set: HashSet<Arc<str>>,
    capacity: usize,
}

impl RecentIds {
    /// An empty set that keeps the newest `capacity` ids.
    pub fn new(capacity: usize) -> RecentIds {
        RecentIds {
            order: VecDeque::new(),
            set: HashSet::new(),
            capacity: capacity.max(1),
        }
    }

    /// Remembers `id`; false when it was remembered already.
    pub fn insert(&mut self, id: &Arc<str>) -> bool {
        if !self.set.insert(id.clone()) {
            return false;
        }
        self.order.push_back(id.clone());
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.order.clear();
        self.set.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_newest_and_forgets_the_oldest() {
        let mut ids = RecentIds::new(2);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        assert!(ids.insert(&a));
        assert!(!ids.insert(&a), "a second insert is a repeat");
        assert!(ids.insert(&b));
        assert!(ids.insert(&c));
        assert!(!ids.contains("a"), "the oldest went first");
        assert!(ids.contains("b") && ids.contains("c"));
        ids.clear();
        assert!(ids.is_empty());
    }
}
