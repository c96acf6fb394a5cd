//! [`ThreadGroup`]: ranks as threads of one process, exchanging messages through shared memory.
//! A rank whose handle is dropped (its thread ended, returned early or panicked) has *left*: a
//! collective it never joined fails on the other ranks instead of waiting forever, which is how
//! the in-process tests model a killed rank.

use super::Coordinator;
use crate::error::{Error, Result};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One rank's handle on an in-process group. Create all handles at once with
/// [`ThreadGroup::new`] and move one into each rank's thread.
///
/// ```
/// use waypoint::dist::{Coordinator, ThreadGroup};
/// let handles = ThreadGroup::new(3);
/// let gathered: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
///     let joins: Vec<_> = handles
///         .iter()
///         .map(|g| s.spawn(move || g.all_gather(&[g.rank() as u8]).unwrap()))
///         .collect();
///     joins.into_iter().map(|j| j.join().unwrap()).collect()
/// });
/// assert!(gathered.iter().all(|g| *g == vec![vec![0], vec![1], vec![2]]));
/// ```
pub struct ThreadGroup {
    hub: Arc<Hub>,
    channel: u64,
    rank: u64,
    /// Collectives this handle has started on its channel.
    seq: AtomicU64,
    /// Duplicates this handle has made.
    duplicates: AtomicU64,
}

struct Hub {
    world: u64,
    timeout: Option<Duration>,
    state: Mutex<HubState>,
    changed: Condvar,
}

#[derive(Default)]
struct HubState {
    /// Collectives in progress, by (channel, sequence number).
    slots: HashMap<(u64, u64), Slot>,
    /// Ranks whose handle on a channel was dropped.
    left: BTreeSet<(u64, u64)>,
    /// Channel ids of duplicates, by (parent channel, index of the duplicate).
    children: HashMap<(u64, u64), u64>,
    next_channel: u64,
}

struct Slot {
    data: Vec<Option<Vec<u8>>>,
    /// Ranks that have put their contribution in.
    arrived: usize,
    /// A scatter's parts, put in by its root.
    parts: Vec<Vec<u8>>,
    readers_left: u64,
}

/// What a rank takes out of a complete collective.
#[derive(Clone, Copy)]
enum Take {
    /// Everyone's contribution (all-gather).
    All,
    /// Everyone's contribution on the root, nothing elsewhere (gather).
    OnRoot(u64),
    /// The root's contribution (broadcast).
    Root(u64),
    /// This rank's part of the root's parts (scatter).
    Part,
}

impl ThreadGroup {
    /// The handles of a new group of `world_size` ranks, indexed by rank. Collectives wait as
    /// long as it takes, unless a rank leaves.
    pub fn new(world_size: u64) -> Vec<ThreadGroup> {
        Self::build(world_size, None)
    }

    /// Like [`ThreadGroup::new`], but a collective fails after waiting `timeout` for the others.
    pub fn with_timeout(world_size: u64, timeout: Duration) -> Vec<ThreadGroup> {
        Self::build(world_size, Some(timeout))
    }

    fn build(world_size: u64, timeout: Option<Duration>) -> Vec<ThreadGroup> {
        let hub = Arc::new(Hub {
            world: world_size.max(1),
            timeout,
            state: Mutex::new(HubState {
                next_channel: 1,
                ..HubState::default()
            }),
            changed: Condvar::new(),
        });
        (0..world_size.max(1))
            .map(|rank| ThreadGroup {
                hub: hub.clone(),
                channel: 0,
                rank,
                seq: AtomicU64::new(0),
                duplicates: AtomicU64::new(0),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.hub.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One collective: puts in `data` (and, for a scatter's root, `parts`), waits until every
    /// rank has, and takes out what `take` says. Waiters are woken once, when the last rank
    /// arrives (or a rank leaves), so a collective of N ranks costs O(N) work, not O(N²).
    fn exchange(
        &self,
        op: &'static str,
        data: &[u8],
        parts: Option<&[Vec<u8>]>,
        take: Take,
    ) -> Result<Vec<Vec<u8>>> {
        let world = self.hub.world as usize;
        let key = (self.channel, self.seq.fetch_add(1, Ordering::Relaxed));
        let deadline = self.hub.timeout.map(|t| Instant::now() + t);
        let mut state = self.lock();
        let slot = state.slots.entry(key).or_insert_with(|| Slot {
            data: vec![None; world],
            arrived: 0,
            parts: Vec::new(),
            readers_left: world as u64,
        });
        slot.data[self.rank as usize] = Some(data.to_vec());
        slot.arrived += 1;
        if let Some(parts) = parts {
            slot.parts = parts.to_vec();
        }
        if slot.arrived == world {
            self.hub.changed.notify_all();
        }
        loop {
            let Some(slot) = state.slots.get(&key) else {
                return Err(self.failure(op, "the collective vanished".into()));
            };
            if slot.arrived == world {
                break;
            }
            let missing: Vec<u64> = (0..world as u64)
                .filter(|&r| slot.data[r as usize].is_none())
                .collect();
            if let Some(gone) = missing
                .iter()
                .find(|&&r| state.left.contains(&(self.channel, r)))
            {
                return Err(self.failure(op, format!("rank {gone} left the group before joining")));
            }
            state = match deadline {
                None => self
                    .hub
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(self.failure(
                            op,
                            format!("ranks {missing:?} did not join within the timeout"),
                        ));
                    }
                    self.hub
                        .changed
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        let slot = state
            .slots
            .get_mut(&key)
            .ok_or_else(|| self.failure(op, "the collective vanished".into()))?;
        let rank = self.rank as usize;
        let out: Vec<Vec<u8>> = match take {
            Take::All => slot
                .data
                .iter()
                .map(|d| d.clone().unwrap_or_default())
                .collect(),
            Take::OnRoot(root) if root == self.rank => slot
                .data
                .iter_mut()
                .map(|d| d.take().unwrap_or_default())
                .collect(),
            Take::OnRoot(_) => Vec::new(),
            Take::Root(root) => vec![
                slot.data
                    .get(root as usize)
                    .cloned()
                    .flatten()
                    .unwrap_or_default(),
            ],
            Take::Part => {
                let Some(part) = slot.parts.get_mut(rank) else {
                    return Err(self.failure(
                        op,
                        format!(
                            "the root gave {} parts, none for this rank",
                            slot.parts.len()
                        ),
                    ));
                };
                vec![std::mem::take(part)]
            }
        };
        slot.readers_left -= 1;
        if slot.readers_left == 0 {
            state.slots.remove(&key);
        }
        Ok(out)
    }

    /// Refuses a root outside the group.
    fn check_root(&self, root: u64) -> Result<()> {
        if root >= self.hub.world {
            return Err(Error::InvalidArgument {
                name: "root",
                reason: format!(
                    "rank {root} does not exist in a group of {}",
                    self.hub.world
                ),
            });
        }
        Ok(())
    }

    fn failure(&self, op: &'static str, reason: String) -> Error {
        Error::Collective {
            op,
            rank: self.rank,
            reason,
        }
    }
}

impl Coordinator for ThreadGroup {
    fn rank(&self) -> u64 {
        self.rank
    }

    fn world_size(&self) -> u64 {
        self.hub.world
    }

    fn barrier(&self) -> Result<()> {
        self.exchange("barrier", &[], None, Take::Root(0))
            .map(|_| ())
    }

    fn all_gather(&self, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.exchange("all-gather", data, None, Take::All)
    }

    fn broadcast(&self, root: u64, data: &[u8]) -> Result<Vec<u8>> {
        self.check_root(root)?;
        let mine = if self.rank == root { data } else { &[] };
        let mut all = self.exchange("broadcast", mine, None, Take::Root(root))?;
        Ok(all.pop().unwrap_or_default())
    }

    fn gather(&self, root: u64, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.check_root(root)?;
        self.exchange("gather", data, None, Take::OnRoot(root))
    }

    fn scatter(&self, root: u64, parts: &[Vec<u8>]) -> Result<Vec<u8>> {
        self.check_root(root)?;
        if self.rank == root && parts.len() as u64 != self.hub.world {
            return Err(Error::InvalidArgument {
                name: "parts",
                reason: format!(
                    "{} parts for a group of {} ranks",
                    parts.len(),
                    self.hub.world
                ),
            });
        }
        let mine = (self.rank == root).then_some(parts);
        let mut own = self.exchange("scatter", &[], mine, Take::Part)?;
        Ok(own.pop().unwrap_or_default())
    }

    fn duplicate(&self) -> Result<Box<dyn Coordinator>> {
        let index = self.duplicates.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        let next = state.next_channel;
        let channel = *state.children.entry((self.channel, index)).or_insert(next);
        if channel == next {
            state.next_channel += 1;
        }
        drop(state);
        Ok(Box::new(ThreadGroup {
            hub: self.hub.clone(),
            channel,
            rank: self.rank,
            seq: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }))
    }
}

impl Drop for ThreadGroup {
    fn drop(&mut self) {
        let mut state = self.lock();
        state.left.insert((self.channel, self.rank));
        drop(state);
        self.hub.changed.notify_all();
    }
}

impl fmt::Debug for ThreadGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.hub.world)
            .field("channel", &self.channel)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn on_all<T: Send>(handles: Vec<ThreadGroup>, f: impl Fn(ThreadGroup) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let joins: Vec<_> = handles.into_iter().map(|g| s.spawn(|| f(g))).collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        })
    }

    #[test]
    fn collectives_agree_across_ranks_and_repeat() {
        let results = on_all(ThreadGroup::new(4), |g| {
            let mut seen = Vec::new();
            for round in 0..50u8 {
                let all = g.all_gather(&[g.rank() as u8, round]).unwrap();
                seen.push(all);
                let b = g
                    .broadcast(u64::from(round) % 4, &[round, g.rank() as u8])
                    .unwrap();
                assert_eq!(b, vec![round, round % 4]);
                g.barrier().unwrap();
            }
            seen
        });
        for seen in &results {
            assert_eq!(seen, &results[0]);
            assert_eq!(
                seen[7],
                vec![vec![0, 7], vec![1, 7], vec![2, 7], vec![3, 7]]
            );
        }
    }

    #[test]
    fn duplicates_are_independent_channels() {
        let results = on_all(ThreadGroup::new(3), |g| {
            let dup = g.duplicate().unwrap();
            // The duplicate's traffic, on another thread, never mixes with the parent's.
            std::thread::scope(|s| {
                let background = s.spawn(|| {
                    (0..20u8)
                        .map(|i| dup.broadcast(0, &[100 + i]).unwrap()[0])
                        .collect::<Vec<u8>>()
                });
                let foreground: Vec<u8> = (0..20u8)
                    .map(|i| g.broadcast(2, &[i]).unwrap()[0])
                    .collect();
                (foreground, background.join().unwrap())
            })
        });
        for (fg, bg) in results {
            assert_eq!(fg, (0..20).collect::<Vec<u8>>());
            assert_eq!(bg, (100..120).collect::<Vec<u8>>());
        }
    }

    #[test]
    fn a_rank_that_left_fails_the_collective_on_the_others() {
        let results = on_all(ThreadGroup::new(3), |g| {
            if g.rank() == 1 {
                drop(g);
                return None;
            }
            Some(g.all_gather(b"x").unwrap_err().to_string())
        });
        for message in results.into_iter().flatten() {
            assert!(message.contains("rank 1 left the group"), "{message}");
        }
    }

    #[test]
    fn a_timeout_names_the_missing_ranks() {
        let handles = ThreadGroup::with_timeout(2, Duration::from_millis(50));
        let err = handles[0].barrier().unwrap_err().to_string();
        assert!(err.contains("[1]") && err.contains("timeout"), "{err}");
    }

    #[test]
    fn gather_reaches_only_the_root_and_scatter_gives_each_rank_its_part() {
        let results = on_all(ThreadGroup::new(4), |g| {
            let rank = g.rank() as u8;
            let gathered = g.gather(2, &[rank; 3]).unwrap();
            let parts: Vec<Vec<u8>> = (0..4u8).map(|r| vec![r + 10; r as usize]).collect();
            let mine = g.scatter(1, if rank == 1 { &parts } else { &[] }).unwrap();
            // The default implementations (through all-gather and broadcast) agree.
            let gathered_default = gather_by_default(&g, 2, &[rank; 3]);
            (gathered, gathered_default, mine)
        });
        for (rank, (gathered, gathered_default, mine)) in results.into_iter().enumerate() {
            let want: Vec<Vec<u8>> = if rank == 2 {
                (0..4u8).map(|r| vec![r; 3]).collect()
            } else {
                Vec::new()
            };
            assert_eq!(gathered, want, "rank {rank}");
            assert_eq!(gathered_default, want, "rank {rank}");
            assert_eq!(mine, vec![rank as u8 + 10; rank], "rank {rank}");
        }
    }

    /// The trait's default gather, called on a group that overrides it.
    fn gather_by_default(g: &ThreadGroup, root: u64, data: &[u8]) -> Vec<Vec<u8>> {
        #[derive(Debug)]
        struct Plain<'a>(&'a ThreadGroup);
        impl Coordinator for Plain<'_> {
            fn rank(&self) -> u64 {
                self.0.rank()
            }
            fn world_size(&self) -> u64 {
                self.0.world_size()
            }
            fn all_gather(&self, data: &[u8]) -> Result<Vec<Vec<u8>>> {
                self.0.all_gather(data)
            }
            fn broadcast(&self, root: u64, data: &[u8]) -> Result<Vec<u8>> {
                self.0.broadcast(root, data)
            }
            fn duplicate(&self) -> Result<Box<dyn Coordinator>> {
                self.0.duplicate()
            }
        }
        let plain = Plain(g);
        let parts: Vec<Vec<u8>> = (0..g.world_size()).map(|r| vec![r as u8]).collect();
        let own = plain.scatter(3, &parts).unwrap();
        assert_eq!(own, vec![g.rank() as u8]);
        plain.gather(root, data).unwrap()
    }

    #[test]
    fn broadcast_from_a_rank_outside_the_group_is_refused() {
        let handles = ThreadGroup::new(2);
        let err = handles[0].broadcast(2, b"x").unwrap_err().to_string();
        assert!(err.contains("rank 2 does not exist"), "{err}");
    }
}
