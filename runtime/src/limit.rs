//! Rate limits: a token bucket per caller (an address, a node), so a caller that floods
//! gets its share and no more, and the others theirs.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// Above this many callers, full buckets (which are as good as none) are forgotten.
pub const BUCKETS_KEPT: usize = 1024;

/// A token bucket per key: a key may take `burst` at once, then `per_second`.
#[derive(Debug)]
pub struct Buckets<K> {
    burst: f64,
    per_second: f64,
    /// Each key's tokens, as of when they were counted.
    by_key: HashMap<K, (f64, Instant)>,
}

impl<K: Eq + Hash + Clone> Buckets<K> {
    /// Buckets holding `burst` tokens each, refilled at `per_second`.
    pub fn new(burst: u32, per_second: f64) -> Self {
        Self {
            burst: f64::from(burst),
            per_second,
            by_key: HashMap::new(),
        }
    }

    /// A bucket's tokens at `now`.
    fn level(&self, (tokens, at): (f64, Instant), now: Instant) -> f64 {
        let earned = now.saturating_duration_since(at).as_secs_f64() * self.per_second;
        (tokens + earned).min(self.burst)
    }

    /// Takes a token from `key`'s bucket: whether it had one.
    pub fn take(&mut self, key: &K, now: Instant) -> bool {
        if self.by_key.len() >= BUCKETS_KEPT {
            let full: Vec<K> = self
                .by_key
                .iter()
                .filter(|(_, b)| self.level(**b, now) >= self.burst)
                .map(|(k, _)| k.clone())
                .collect();
            for k in full {
                self.by_key.remove(&k);
            }
        }
        let bucket = self.by_key.get(key).copied().unwrap_or((self.burst, now));
        let tokens = self.level(bucket, now);
        let allowed = tokens >= 1.0;
        let left = if allowed { tokens - 1.0 } else { tokens };
        self.by_key.insert(key.clone(), (left, now));
        allowed
    }

    /// How many keys have a bucket.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no key has a bucket.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_its_rate() {
        let mut b = Buckets::new(3, 2.0);
        let t0 = Instant::now();
        assert!((0..3).all(|_| b.take(&"a", t0)), "the burst");
        assert!(!b.take(&"a", t0), "then nothing");
        // Two per second: after half a second, one more; not two.
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take(&"a", t1));
        assert!(!b.take(&"a", t1));
        // Never more than the burst, however long the wait.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.take(&"a", t2)).count(), 3);
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let mut b = Buckets::new(1, 0.0);
        let t0 = Instant::now();
        assert!(b.take(&"flooder", t0));
        assert!(!b.take(&"flooder", t0));
        assert!(b.take(&"other", t0));
    }

    #[test]
    fn full_buckets_are_forgotten_when_many() {
        let mut b = Buckets::new(2, 1.0);
        let t0 = Instant::now();
        for i in 0..BUCKETS_KEPT {
            b.take(&i, t0);
        }
        assert_eq!(b.len(), BUCKETS_KEPT);
        // Two seconds later every bucket is full again: all forgotten but the new one.
        b.take(&usize::MAX, t0 + Duration::from_secs(2));
        assert_eq!(b.len(), 1);
    }
}
