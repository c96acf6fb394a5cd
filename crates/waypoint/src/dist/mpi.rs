//! [`MpiCoordinator`]: the [`Coordinator`] for processes started by `mpirun` (or `srun` with an
//! MPI build), over the system MPI library through rsmpi. Owns MPI's lifetime in the process
//! (initialisation with `MPI_THREAD_MULTIPLE`, finalisation when the last handle is dropped) and
//! maps every MPI failure to [`Error::Collective`].
//!
//! It must not make collectives of its own that the other coordinators would not make: the
//! engine's rank protocols are written and tested against [`super::ThreadGroup`], and this type
//! only carries the same messages over MPI.

mod comm;
mod layout;

use super::{Coordinator, RankInfo, RankSource};
use crate::error::{Error, Result};
use comm::Comm;
use mpi::Threading;
use std::fmt;
use std::os::raw::c_int;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// One rank's handle on the processes of an MPI job (a duplicate of `MPI_COMM_WORLD`), or on a
/// further duplicate of it.
///
/// # Lifetime
/// MPI can be initialised once per process and finalised once. The first
/// [`MpiCoordinator::world`] initialises it (asking for `MPI_THREAD_MULTIPLE`); later calls, while
/// a handle is alive, share that session. MPI is finalised when the last handle (including every
/// [`duplicate`](Coordinator::duplicate)) is dropped; after that MPI cannot start again in this
/// process, so create one handle at the top of `main` and keep it until the end, and drop the last
/// handle on the thread that created the first (MPI's "main thread"). If something else
/// initialised MPI first, its owner also finalises it: waypoint then only checks the threading
/// level and never finalises.
///
/// # Threads
/// Every handle is `Send + Sync`; one handle's operations are serialised by a lock. Collectives
/// from two threads of the same rank must use two handles (see
/// [`duplicate`](Coordinator::duplicate)), as MPI requires one ordering per communicator.
///
/// # Failures
/// Waypoint's communicators return errors instead of aborting (`MPI_ERRORS_RETURN`; the
/// program's `MPI_COMM_WORLD` is left as it is), and every failure becomes
/// [`Error::Collective`]. When a rank dies, Open MPI's launcher ends the whole job: the surviving
/// ranks are killed rather than returning an error (see docs/MPI.md). A rank that cannot go on
/// while the others can should end the job with [`MpiCoordinator::abort`].
///
/// ```no_run
/// // Run as `mpirun -np 4 my-trainer` (see docs/MPI.md for the flags).
/// use waypoint::dist::{Coordinator, MpiCoordinator};
///
/// let world = MpiCoordinator::world()?;
/// // The background save's own communicator, to be used from its thread.
/// let for_saves = world.duplicate()?;
/// let saver = std::thread::spawn(move || for_saves.barrier());
///
/// let everyone = world.all_gather(format!("rank {}", world.rank()).as_bytes())?;
/// assert_eq!(everyone.len() as u64, world.world_size());
/// let decision = world.broadcast(0, b"save at step 100")?;
/// assert_eq!(decision, b"save at step 100");
/// match saver.join() {
///     Ok(result) => result?,
///     Err(_) => world.abort(1), // the other ranks would wait for this one forever
/// }
/// # Ok::<(), waypoint::Error>(())
/// ```
pub struct MpiCoordinator {
    /// Declared before `session`, so that a duplicate is freed before MPI may be finalised.
    comm: Mutex<Comm>,
    rank: u64,
    world_size: u64,
    duplicated: bool,
    session: Arc<Session>,
}

/// MPI's lifetime in this process: alive while any coordinator holds it.
struct Session {
    /// `None` when MPI was initialised by someone else, who finalises it.
    _universe: Option<mpi::environment::Universe>,
}

/// The live session, if any. A dead `Weak` after a first session means MPI is finalised.
static SESSION: Mutex<Weak<Session>> = Mutex::new(Weak::new());

impl MpiCoordinator {
    /// A handle on every process of the job, initialising MPI with `MPI_THREAD_MULTIPLE` on
    /// first use.
    ///
    /// Collective: every rank calls it (it duplicates `MPI_COMM_WORLD`, so that waypoint's
    /// messages never mix with the program's own MPI traffic).
    ///
    /// Fails with [`Error::Collective`] (operation `"init"`) when the MPI library provides a
    /// lower threading level, when MPI was already finalised in this process, or when the
    /// launcher's environment ([`RankInfo::from_env`]) names another rank or world size than MPI
    /// does.
    pub fn world() -> Result<MpiCoordinator> {
        let session = Self::session()?;
        let init_failure = |reason: String| Error::Collective {
            op: "init",
            rank: 0,
            reason,
        };
        // Waypoint's own copy of the world: its messages never mix with the program's own MPI
        // traffic, and MPI_COMM_WORLD keeps the error handler the program chose.
        let comm = Comm::world().duplicate().map_err(init_failure)?;
        let rank = comm.rank().map_err(init_failure)?;
        let world_size = comm.size().map_err(init_failure)?;
        cross_check(rank, world_size, RankInfo::from_env()).map_err(|reason| {
            Error::Collective {
                op: "init",
                rank,
                reason,
            }
        })?;
        tracing::debug!(
            rank,
            world_size,
            "MPI coordinator on a duplicate of MPI_COMM_WORLD"
        );
        Ok(MpiCoordinator {
            comm: Mutex::new(comm),
            rank,
            world_size,
            duplicated: false,
            session,
        })
    }

    /// Ends the whole job (`MPI_Abort`): every rank is killed and `mpirun` exits with `code`.
    ///
    /// For a rank that fails where the others cannot learn of it: returning an error and
    /// dropping the handle would finalise MPI, which waits for ranks that are themselves waiting
    /// in a collective this rank will never join, so the job would hang.
    pub fn abort(&self, code: i32) -> ! {
        tracing::error!(rank = self.rank, code, "aborting the MPI job");
        comm::abort_job(code)
    }

    fn session() -> Result<Arc<Session>> {
        let mut slot = SESSION.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = slot.upgrade() {
            return Ok(live);
        }
        let refuse = |reason: String| Error::Collective {
            op: "init",
            rank: 0,
            reason,
        };
        if mpi::environment::is_finalized() {
            return Err(refuse(
                "MPI was already finalised in this process (the last MpiCoordinator was dropped) and cannot start again: keep one MpiCoordinator alive for the whole job".into(),
            ));
        }
        let session = match mpi::initialize_with_threading(Threading::Multiple) {
            Some((universe, provided)) => {
                if provided < Threading::Multiple {
                    // Finalises MPI, so that the process can still exit cleanly under mpirun.
                    drop(universe);
                    return Err(refuse(threading_refusal(provided)));
                }
                Session {
                    _universe: Some(universe),
                }
            }
            None => {
                let provided = mpi::environment::threading_support();
                if provided < Threading::Multiple {
                    return Err(refuse(threading_refusal(provided)));
                }
                tracing::debug!("MPI was initialised by someone else; they finalise it");
                Session { _universe: None }
            }
        };
        let session = Arc::new(session);
        *slot = Arc::downgrade(&session);
        Ok(session)
    }

    fn lock(&self) -> MutexGuard<'_, Comm> {
        self.comm.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failure(&self, op: &'static str, reason: String) -> Error {
        tracing::warn!(rank = self.rank, op, %reason, "MPI collective failed");
        Error::Collective {
            op,
            rank: self.rank,
            reason,
        }
    }

    fn root(&self, root: u64) -> Result<c_int> {
        match c_int::try_from(root) {
            Ok(r) if root < self.world_size => Ok(r),
            _ => Err(Error::InvalidArgument {
                name: "root",
                reason: format!(
                    "rank {root} does not exist in a group of {}",
                    self.world_size
                ),
            }),
        }
    }
}

fn threading_refusal(provided: Threading) -> String {
    format!(
        "the MPI library provides threading level {provided:?}, waypoint needs Multiple (MPI_THREAD_MULTIPLE: the background save and the training loop both use MPI); use an MPI built with thread support (Debian's Open MPI is)"
    )
}

/// Compares MPI's rank and world size with what the launcher's variables say, naming the
/// variables on a mismatch. An environment that names no launcher agrees with anything.
fn cross_check(
    rank: u64,
    world_size: u64,
    env: Result<RankInfo>,
) -> std::result::Result<(), String> {
    let env = env.map_err(|e| e.to_string())?;
    let (rank_var, size_var) = match env.source {
        RankSource::Explicit | RankSource::Default => return Ok(()),
        RankSource::Waypoint => ("WAYPOINT_RANK", "WAYPOINT_WORLD_SIZE"),
        RankSource::Torchrun => ("RANK", "WORLD_SIZE"),
        RankSource::OpenMpi => ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        RankSource::Slurm => ("SLURM_PROCID", "SLURM_NTASKS"),
    };
    if (env.rank, env.world_size) == (rank, world_size) {
        return Ok(());
    }
    Err(format!(
        "MPI says rank {rank} of {world_size}, but {rank_var}={} and {size_var}={} say rank {} of {}: unset those variables or launch with the matching number of processes",
        env.rank, env.world_size, env.rank, env.world_size
    ))
}

impl Coordinator for MpiCoordinator {
    fn rank(&self) -> u64 {
        self.rank
    }

    fn world_size(&self) -> u64 {
        self.world_size
    }

    fn barrier(&self) -> Result<()> {
        self.lock()
            .barrier()
            .map_err(|r| self.failure("barrier", r))
    }

    fn all_gather(&self, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        let op = "all-gather";
        let comm = self.lock();
        let size = usize::try_from(self.world_size).map_err(|_| {
            self.failure(op, format!("world size {} is too large", self.world_size))
        })?;
        let lengths = comm
            .all_gather_u64(data.len() as u64, size)
            .map_err(|r| self.failure(op, r))?;
        let layout = layout::gather_layout(&lengths).map_err(|r| self.failure(op, r))?;
        let mut buffer = vec![0u8; layout.total];
        comm.all_gather_bytes(data, &layout.counts, &layout.displs, &mut buffer)
            .map_err(|r| self.failure(op, r))?;
        Ok(layout::split(&buffer, &layout))
    }

    fn broadcast(&self, root: u64, data: &[u8]) -> Result<Vec<u8>> {
        let op = "broadcast";
        let root_rank = self.root(root)?;
        let is_root = self.rank == root;
        let comm = self.lock();
        let mine = if is_root { data.len() as u64 } else { 0 };
        let len = comm
            .broadcast_u64(root_rank, mine)
            .map_err(|r| self.failure(op, r))?;
        let len = layout::broadcast_len(len).map_err(|r| self.failure(op, r))?;
        let mut buffer = if is_root {
            data.to_vec()
        } else {
            vec![0u8; len]
        };
        comm.broadcast_bytes(root_rank, &mut buffer)
            .map_err(|r| self.failure(op, r))?;
        Ok(buffer)
    }

    fn gather(&self, root: u64, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        let op = "gather";
        let root_rank = self.root(root)?;
        let is_root = self.rank == root;
        let comm = self.lock();
        let size = usize::try_from(self.world_size).map_err(|_| {
            self.failure(op, format!("world size {} is too large", self.world_size))
        })?;
        let lengths = comm
            .gather_u64(root_rank, data.len() as u64, size, is_root)
            .map_err(|r| self.failure(op, r))?;
        // The root tells everyone whether the messages fit one call, so that nobody waits in a
        // gather the root refused.
        let layout = if is_root {
            Some(layout::gather_layout(&lengths))
        } else {
            None
        };
        let refused = u64::from(matches!(layout, Some(Err(_))));
        let refused = comm
            .broadcast_u64(root_rank, refused)
            .map_err(|r| self.failure(op, r))?;
        match layout {
            Some(Ok(layout)) => {
                let mut buffer = vec![0u8; layout.total];
                comm.gather_bytes(
                    root_rank,
                    data,
                    Some((&layout.counts, &layout.displs, &mut buffer)),
                )
                .map_err(|r| self.failure(op, r))?;
                Ok(layout::split(&buffer, &layout))
            }
            Some(Err(reason)) => Err(self.failure(op, reason)),
            None if refused != 0 => Err(self.failure(
                op,
                format!("rank {root} refused the gather: the messages are too large for MPI"),
            )),
            None => {
                comm.gather_bytes(root_rank, data, None)
                    .map_err(|r| self.failure(op, r))?;
                Ok(Vec::new())
            }
        }
    }

    fn scatter(&self, root: u64, parts: &[Vec<u8>]) -> Result<Vec<u8>> {
        let op = "scatter";
        let root_rank = self.root(root)?;
        let is_root = self.rank == root;
        let comm = self.lock();
        // On the root: each part's length, or u64::MAX for every rank when they cannot go.
        let layout = is_root.then(|| {
            if parts.len() as u64 != self.world_size {
                return Err(format!(
                    "{} parts for a group of {} ranks",
                    parts.len(),
                    self.world_size
                ));
            }
            let lengths: Vec<u64> = parts.iter().map(|p| p.len() as u64).collect();
            layout::gather_layout(&lengths)
        });
        let lengths: Vec<u64> = match &layout {
            Some(Ok(layout)) => layout.counts.iter().map(|&c| c as u64).collect(),
            Some(Err(_)) => vec![u64::MAX; self.world_size as usize],
            None => Vec::new(),
        };
        let len = comm
            .scatter_u64(root_rank, &lengths)
            .map_err(|r| self.failure(op, r))?;
        if let Some(Err(reason)) = layout {
            return Err(self.failure(op, reason));
        }
        if len == u64::MAX {
            return Err(self.failure(op, format!("rank {root} refused the scatter")));
        }
        let len = layout::broadcast_len(len).map_err(|r| self.failure(op, r))?;
        let mut out = vec![0u8; len];
        let buffer: Vec<u8> = if is_root { parts.concat() } else { Vec::new() };
        let send = match &layout {
            Some(Ok(layout)) => Some((buffer.as_slice(), &layout.counts[..], &layout.displs[..])),
            _ => None,
        };
        comm.scatter_bytes(root_rank, send, &mut out)
            .map_err(|r| self.failure(op, r))?;
        Ok(out)
    }

    fn duplicate(&self) -> Result<Box<dyn Coordinator>> {
        let comm = self
            .lock()
            .duplicate()
            .map_err(|r| self.failure("duplicate", r))?;
        Ok(Box::new(MpiCoordinator {
            comm: Mutex::new(comm),
            rank: self.rank,
            world_size: self.world_size,
            duplicated: true,
            session: self.session.clone(),
        }))
    }
}

impl fmt::Debug for MpiCoordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MpiCoordinator")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("duplicated", &self.duplicated)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<RankInfo> {
        RankInfo::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_string())
        })
    }

    /// (MPI's rank, MPI's size, environment, expected error fragment or "" for agreement)
    type EnvCase<'a> = (u64, u64, &'a [(&'a str, &'a str)], &'a str);

    #[test]
    fn the_environment_must_agree_with_mpi() {
        let table: &[EnvCase] = &[
            (0, 1, &[], ""),
            (3, 4, &[], ""),
            (
                2,
                4,
                &[("OMPI_COMM_WORLD_RANK", "2"), ("OMPI_COMM_WORLD_SIZE", "4")],
                "",
            ),
            (
                1,
                4,
                &[("OMPI_COMM_WORLD_RANK", "2"), ("OMPI_COMM_WORLD_SIZE", "4")],
                "MPI says rank 1 of 4, but OMPI_COMM_WORLD_RANK=2 and OMPI_COMM_WORLD_SIZE=4",
            ),
            (
                1,
                4,
                &[("WAYPOINT_RANK", "0"), ("WAYPOINT_WORLD_SIZE", "4")],
                "WAYPOINT_RANK=0 and WAYPOINT_WORLD_SIZE=4 say rank 0 of 4",
            ),
            (
                0,
                2,
                &[("RANK", "0"), ("WORLD_SIZE", "8")],
                "RANK=0 and WORLD_SIZE=8",
            ),
            (
                5,
                8,
                &[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "16")],
                "SLURM_PROCID=5 and SLURM_NTASKS=16",
            ),
            (0, 2, &[("RANK", "0")], "RANK is set but WORLD_SIZE is not"),
        ];
        for &(rank, size, vars, want) in table {
            let got = cross_check(rank, size, env(vars));
            match got {
                Ok(()) => assert!(want.is_empty(), "{vars:?}: agreed, wanted {want:?}"),
                Err(e) => assert!(!want.is_empty() && e.contains(want), "{vars:?}: {e}"),
            }
        }
    }
}
