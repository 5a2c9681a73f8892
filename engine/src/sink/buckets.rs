//! The file sink's open buckets by id, with the last one used at hand.
//!
//! Consecutive records mostly go to the bucket of the record before (a date-time bucket holds
//! a minute or an hour of a stream in time order), and hashing and comparing the bucket id of
//! every record was a visible share of the sink's cost. So the table keeps its buckets in a
//! `Vec`, finds them by id through an index, and checks the last bucket used before the index:
//! a record for the same bucket costs one comparison of a few bytes.

use std::collections::HashMap;

/// Buckets of type `B` by id. Iteration follows insertion order.
pub(super) struct Buckets<B> {
    slots: Vec<(String, B)>,
    /// Position in `slots` of every id. Bucket ids come from the job's own records, so a fast
    /// hash is enough: a flood of colliding ids would only slow down the job that made them.
    index: HashMap<String, usize, foldhash::fast::RandomState>,
    /// Position of the bucket returned last (may be out of range after a removal).
    last: usize,
}

impl<B> Default for Buckets<B> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            index: HashMap::default(),
            last: 0,
        }
    }
}

impl<B> Buckets<B> {
    /// The bucket `id`, made by `new` when there is none.
    pub(super) fn get_or_insert_with(&mut self, id: &str, new: impl FnOnce() -> B) -> &mut B {
        let hit = self
            .slots
            .get(self.last)
            .is_some_and(|(last, _)| last == id);
        if !hit {
            self.last = match self.index.get(id) {
                Some(&at) => at,
                None => {
                    self.slots.push((id.to_string(), new()));
                    self.index.insert(id.to_string(), self.slots.len() - 1);
                    self.slots.len() - 1
                }
            };
        }
        &mut self.slots[self.last].1
    }

    pub(super) fn get_mut(&mut self, id: &str) -> Option<&mut B> {
        let at = *self.index.get(id)?;
        self.slots.get_mut(at).map(|(_, bucket)| bucket)
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Adds bucket `id`, replacing any bucket with that id.
    pub(super) fn insert(&mut self, id: String, bucket: B) {
        match self.index.get(&id) {
            Some(&at) => self.slots[at].1 = bucket,
            None => {
                self.index.insert(id.clone(), self.slots.len());
                self.slots.push((id, bucket));
            }
        }
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut B)> {
        self.slots
            .iter_mut()
            .map(|(id, bucket)| (id.as_str(), bucket))
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut B> {
        self.slots.iter_mut().map(|(_, bucket)| bucket)
    }

    /// Keeps the buckets `keep` says yes to. Rebuilds the index: called per tick and per
    /// checkpoint, never per record.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&B) -> bool) {
        let before = self.slots.len();
        self.slots.retain(|(_, bucket)| keep(bucket));
        if self.slots.len() != before {
            self.index.clear();
            for (at, (id, _)) in self.slots.iter().enumerate() {
                self.index.insert(id.clone(), at);
            }
        }
    }

    pub(super) fn clear(&mut self) {
        self.slots.clear();
        self.index.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_found_by_id_after_inserts_and_removals() {
        let mut buckets = Buckets::default();
        *buckets.get_or_insert_with("a", || 0) += 1;
        *buckets.get_or_insert_with("b", || 10) += 1;
        *buckets.get_or_insert_with("a", || 100) += 1;
        *buckets.get_or_insert_with("a", || 100) += 1;
        assert_eq!(buckets.get_mut("a").copied(), Some(3));
        assert_eq!(buckets.get_mut("b").copied(), Some(11));

        // Removing "a" moves "b" in the slots: lookups, including of the last bucket used,
        // must still find the right one.
        buckets.retain(|v| *v > 10);
        assert!(!buckets.contains("a"));
        assert_eq!(*buckets.get_or_insert_with("b", || 0), 11);
        assert_eq!(*buckets.get_or_insert_with("a", || 7), 7);
        buckets.insert("b".into(), 20);
        assert_eq!(buckets.get_mut("b").copied(), Some(20));
        let ids: Vec<_> = buckets
            .iter_mut()
            .map(|(id, v)| (id.to_string(), *v))
            .collect();
        assert_eq!(ids, [("b".to_string(), 20), ("a".to_string(), 7)]);

        buckets.clear();
        assert!(buckets.get_mut("b").is_none());
        assert_eq!(*buckets.get_or_insert_with("b", || 1), 1);
    }
}
