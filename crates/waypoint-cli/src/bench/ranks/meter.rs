//! A [`Coordinator`] wrapper that meters one rank's collectives: the bytes it sends and receives,
//! and when each collective began and ended. `bench --ranks` wraps every rank's handle in one to
//! report the bytes exchanged per rank per save and the commit's overhead against the data
//! write, without any hook in the library.
//!
//! It must not change a message: it forwards every operation (gather and scatter included, as
//! the [`Coordinator`] contract asks of wrappers) and only counts.

use std::sync::Mutex;
use std::time::Instant;
use waypoint::dist::{Coordinator, ThreadGroup};

/// One collective as a rank saw it: (began, ended, bytes sent, bytes received).
pub type Call = (Instant, Instant, u64, u64);

/// A metered rank handle.
#[derive(Debug)]
pub struct Metered {
    inner: ThreadGroup,
    calls: Mutex<Vec<Call>>,
}

/// `(bytes, count)` of a list of messages.
fn total(messages: &[Vec<u8>]) -> u64 {
    messages.iter().map(|m| m.len() as u64).sum()
}

impl Metered {
    /// Wraps `inner`.
    pub fn new(inner: ThreadGroup) -> Metered {
        Metered {
            inner,
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Every collective so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record<T>(
        &self,
        sent: u64,
        f: impl FnOnce() -> waypoint::Result<T>,
        received: impl Fn(&T) -> u64,
    ) -> waypoint::Result<T> {
        let began = Instant::now();
        let out = f()?;
        let call = (began, Instant::now(), sent, received(&out));
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
        Ok(out)
    }
}

impl Coordinator for Metered {
    fn rank(&self) -> u64 {
        self.inner.rank()
    }

    fn world_size(&self) -> u64 {
        self.inner.world_size()
    }

    fn all_gather(&self, data: &[u8]) -> waypoint::Result<Vec<Vec<u8>>> {
        let others = |all: &Vec<Vec<u8>>| total(all) - data.len() as u64;
        self.record(data.len() as u64, || self.inner.all_gather(data), others)
    }

    fn broadcast(&self, root: u64, data: &[u8]) -> waypoint::Result<Vec<u8>> {
        let is_root = self.rank() == root;
        let sent = if is_root { data.len() as u64 } else { 0 };
        let received = |m: &Vec<u8>| if is_root { 0 } else { m.len() as u64 };
        self.record(sent, || self.inner.broadcast(root, data), received)
    }

    fn gather(&self, root: u64, data: &[u8]) -> waypoint::Result<Vec<Vec<u8>>> {
        let mine = data.len() as u64;
        let is_root = self.rank() == root;
        let sent = if is_root { 0 } else { mine };
        let received =
            |all: &Vec<Vec<u8>>| total(all).saturating_sub(if is_root { mine } else { 0 });
        self.record(sent, || self.inner.gather(root, data), received)
    }

    fn scatter(&self, root: u64, parts: &[Vec<u8>]) -> waypoint::Result<Vec<u8>> {
        let is_root = self.rank() == root;
        let own = parts
            .get(self.rank() as usize)
            .map_or(0, |p| p.len() as u64);
        let sent = if is_root { total(parts) - own } else { 0 };
        let received = |m: &Vec<u8>| if is_root { 0 } else { m.len() as u64 };
        self.record(sent, || self.inner.scatter(root, parts), received)
    }

    fn duplicate(&self) -> waypoint::Result<Box<dyn Coordinator>> {
        self.inner.duplicate()
    }
}
