//! Interned metric names: the training thread turns a name into a [`MetricId`] once, and sends
//! only the id afterwards, so that logging allocates no `String` per metric.
//!
//! The table is append-only and shared: the caller's [`Interner`] adds a name (under a lock,
//! once per new name) before it sends the id, and the writer's [`Names`] copies the names it
//! does not know yet from the shared table, so it always finds an id it receives.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

/// A metric name interned by one [`Loggers`](super::Loggers) (see
/// [`Loggers::metric_id`](super::Loggers::metric_id)). Meaningful only to the `Loggers` that made
/// it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricId(u32);

impl MetricId {
    /// The index of the name in the table.
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// The names, in id order.
pub(super) type SharedNames = Arc<Mutex<Vec<Arc<str>>>>;

/// FNV-1a: metric names are short, and SipHash costs several times more per lookup on the
/// training thread. Names come from the program, not from an adversary.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The caller's side: name → id.
#[derive(Debug, Default)]
pub(super) struct Interner {
    ids: HashMap<Box<str>, MetricId, BuildHasherDefault<Fnv>>,
    shared: SharedNames,
}

impl Interner {
    /// A new, empty table; the writer reads `shared()`.
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// The table the writer's [`Names`] reads.
    pub(super) fn shared(&self) -> SharedNames {
        Arc::clone(&self.shared)
    }

    /// The id of `name`, added to the table the first time.
    pub(super) fn id(&mut self, name: &str) -> MetricId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let mut names = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        // More than 2^32 distinct names cannot be held in memory anyway; saturate rather than wrap.
        let id = MetricId(u32::try_from(names.len()).unwrap_or(u32::MAX));
        names.push(Arc::from(name));
        drop(names);
        self.ids.insert(Box::from(name), id);
        id
    }
}

/// The writer's side: id → name, a local copy of the shared table.
#[derive(Debug)]
pub(super) struct Names {
    local: Vec<Arc<str>>,
    shared: SharedNames,
}

impl Names {
    /// Reads names from `shared`.
    pub(super) fn new(shared: SharedNames) -> Self {
        Names {
            local: Vec::new(),
            shared,
        }
    }

    /// Makes every id below `end` known locally, copying new names from the shared table.
    pub(super) fn refresh_to(&mut self, end: usize) {
        if end <= self.local.len() {
            return;
        }
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(new) = shared.get(self.local.len()..) {
            self.local.extend(new.iter().cloned());
        }
    }

    /// The name of `id`, if the table has it (call [`refresh_to`](Self::refresh_to) first).
    pub(super) fn get(&self, id: MetricId) -> Option<&str> {
        self.local.get(id.index()).map(|s| &**s)
    }

    /// One past the largest index among `ids`.
    pub(super) fn end_of(ids: impl Iterator<Item = MetricId>) -> usize {
        ids.map(|id| id.index() + 1).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_resolve_on_the_writer_side() {
        let mut interner = Interner::new();
        let mut names = Names::new(interner.shared());
        let loss = interner.id("loss");
        let lr = interner.id("lr");
        assert_eq!(interner.id("loss"), loss);
        assert_ne!(loss, lr);
        assert_eq!(names.get(lr), None);
        names.refresh_to(Names::end_of([loss, lr].into_iter()));
        assert_eq!((names.get(loss), names.get(lr)), (Some("loss"), Some("lr")));
        let acc = interner.id("acc");
        names.refresh_to(Names::end_of(std::iter::once(acc)));
        assert_eq!(names.get(acc), Some("acc"));
    }
}
