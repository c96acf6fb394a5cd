//! [`RankInfo`]: which rank this process is, read from the launcher's environment (waypoint's own
//! variables, torchrun, Open MPI, SLURM) or given in code. Pure: the environment is passed in as a
//! lookup function, so every launcher's spelling is tested by a table. This is the one place
//! waypoint reads rank variables (the experiment directory and the coordinators use it); it must
//! not talk to other ranks.
//!
//! # The rule
//!
//! The launchers are tried in order (waypoint's own, torchrun, Open MPI, SLURM) and the first
//! one with a *complete set*, its rank and its world size, wins; its local rank is optional. A
//! half-set (a rank without a world size, or the other way round, or a local rank alone) is an
//! error naming what is missing, never read as a default: a process that guessed "rank 0" would
//! take the lock and write the run files of another. Blank values count as unset; a value that
//! is not a non-negative integer, or a rank not below the world size, is an error naming the
//! variable. Nothing set at all is a single process, rank 0 of 1.

use crate::error::{Error, Result};

/// Where a [`RankInfo`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RankSource {
    /// Given in code ([`RankInfo::new`]).
    Explicit,
    /// `WAYPOINT_RANK` / `WAYPOINT_WORLD_SIZE` / `WAYPOINT_LOCAL_RANK`.
    Waypoint,
    /// torchrun and friends: `RANK` / `WORLD_SIZE` / `LOCAL_RANK`.
    Torchrun,
    /// Open MPI's `mpirun`: `OMPI_COMM_WORLD_RANK` / `_SIZE` / `_LOCAL_RANK`.
    OpenMpi,
    /// SLURM's `srun`: `SLURM_PROCID` / `SLURM_NTASKS` / `SLURM_LOCALID`.
    Slurm,
    /// Nothing set: a single process.
    Default,
}

/// This process's place in the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankInfo {
    /// The global rank, in `0..world_size`.
    pub rank: u64,
    /// The number of ranks.
    pub world_size: u64,
    /// The rank within this machine, where the launcher says.
    pub local_rank: Option<u64>,
    /// Which variables it was read from.
    pub source: RankSource,
}

/// The launchers' variable names, in the order they are tried: (rank, world size, local rank).
const LAUNCHERS: [(RankSource, &str, &str, &str); 4] = [
    (
        RankSource::Waypoint,
        "WAYPOINT_RANK",
        "WAYPOINT_WORLD_SIZE",
        "WAYPOINT_LOCAL_RANK",
    ),
    (RankSource::Torchrun, "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    (
        RankSource::OpenMpi,
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
    ),
    (
        RankSource::Slurm,
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_LOCALID",
    ),
];

impl RankInfo {
    /// Rank 0 of 1.
    pub const SINGLE: RankInfo = RankInfo {
        rank: 0,
        world_size: 1,
        local_rank: Some(0),
        source: RankSource::Default,
    };

    /// An explicit rank, overriding the environment.
    ///
    /// ```
    /// use waypoint::dist::RankInfo;
    /// let info = RankInfo::new(2, 4).unwrap();
    /// assert_eq!((info.rank, info.world_size), (2, 4));
    /// assert!(RankInfo::new(4, 4).is_err());
    /// ```
    pub fn new(rank: u64, world_size: u64) -> Result<RankInfo> {
        check(rank, world_size, "rank")?;
        Ok(RankInfo {
            rank,
            world_size,
            local_rank: None,
            source: RankSource::Explicit,
        })
    }

    /// Reads the process environment: waypoint's variables first, then torchrun's, Open MPI's
    /// and SLURM's; rank 0 of 1 when none is set; a half-set is an error (see the module
    /// documentation for the rule).
    pub fn from_env() -> Result<RankInfo> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Like [`RankInfo::from_env`], with the variables given by `lookup`.
    ///
    /// ```
    /// use waypoint::dist::{RankInfo, RankSource};
    /// let env = |name: &str| match name {
    ///     "OMPI_COMM_WORLD_RANK" => Some("3".to_string()),
    ///     "OMPI_COMM_WORLD_SIZE" => Some("4".to_string()),
    ///     _ => None,
    /// };
    /// let info = RankInfo::from_vars(env).unwrap();
    /// assert_eq!((info.rank, info.world_size, info.source), (3, 4, RankSource::OpenMpi));
    /// ```
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<RankInfo> {
        for (source, rank_var, size_var, local_var) in LAUNCHERS {
            let rank = lookup(rank_var).filter(|v| !v.trim().is_empty());
            let size = lookup(size_var).filter(|v| !v.trim().is_empty());
            let (rank, size) = match (rank, size) {
                (None, None) => match lookup(local_var).filter(|v| !v.trim().is_empty()) {
                    None => continue,
                    Some(_) => {
                        return Err(Error::InvalidArgument {
                            name: "environment",
                            reason: format!(
                                "{local_var} is set but {rank_var} and {size_var} are not: set all three (or none) so the rank is not guessed"
                            ),
                        });
                    }
                },
                (Some(_), None) | (None, Some(_)) => {
                    let (set, unset) = if lookup(rank_var).is_some() {
                        (rank_var, size_var)
                    } else {
                        (size_var, rank_var)
                    };
                    return Err(Error::InvalidArgument {
                        name: "environment",
                        reason: format!(
                            "{set} is set but {unset} is not: set both (or neither) so every rank agrees on the world"
                        ),
                    });
                }
                (Some(rank), Some(size)) => (rank, size),
            };
            let rank = parse(rank_var, &rank)?;
            let world_size = parse(size_var, &size)?;
            check(rank, world_size, rank_var)?;
            let local_rank = match lookup(local_var).filter(|v| !v.trim().is_empty()) {
                Some(v) => Some(parse(local_var, &v)?),
                None => None,
            };
            return Ok(RankInfo {
                rank,
                world_size,
                local_rank,
                source,
            });
        }
        Ok(RankInfo::SINGLE)
    }

    /// The same rank with its rank within the machine (`log_globalrank-G_localrank-L.txt`,
    /// `log_local_rank_0_only`).
    ///
    /// ```
    /// use waypoint::dist::RankInfo;
    /// let info = RankInfo::new(5, 8).unwrap().with_local_rank(1);
    /// assert_eq!((info.rank, info.local_rank), (5, Some(1)));
    /// ```
    pub fn with_local_rank(self, local_rank: u64) -> RankInfo {
        RankInfo {
            local_rank: Some(local_rank),
            ..self
        }
    }

    /// Whether this is rank 0, the rank that commits checkpoints, decides and logs metrics.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }
}

fn parse(var: &str, value: &str) -> Result<u64> {
    value.trim().parse().map_err(|_| Error::InvalidArgument {
        name: "environment",
        reason: format!("{var}={value:?} is not a non-negative integer"),
    })
}

fn check(rank: u64, world_size: u64, what: &str) -> Result<()> {
    if world_size == 0 {
        return Err(Error::InvalidArgument {
            name: "world_size",
            reason: format!("the world size is 0 (with {what} {rank}); it must be at least 1"),
        });
    }
    if rank >= world_size {
        return Err(Error::InvalidArgument {
            name: "rank",
            reason: format!("{what} {rank} is not below the world size {world_size}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(
        vars: &[(&str, &str)],
    ) -> std::result::Result<(u64, u64, Option<u64>, RankSource), String> {
        RankInfo::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_string())
        })
        .map(|i| (i.rank, i.world_size, i.local_rank, i.source))
        .map_err(|e| e.to_string())
    }

    /// (environment, expected (rank, world size, local rank, source))
    type LauncherCase<'a> = (
        &'a [(&'a str, &'a str)],
        (u64, u64, Option<u64>, RankSource),
    );

    #[test]
    fn every_launcher_is_read_and_the_first_one_wins() {
        use RankSource::*;
        let table: &[LauncherCase] = &[
            (&[], (0, 1, Some(0), Default)),
            (
                &[("WAYPOINT_RANK", "1"), ("WAYPOINT_WORLD_SIZE", "2")],
                (1, 2, None, Waypoint),
            ),
            (
                &[("RANK", "5"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1")],
                (5, 8, Some(1), Torchrun),
            ),
            (
                &[
                    ("OMPI_COMM_WORLD_RANK", "3"),
                    ("OMPI_COMM_WORLD_SIZE", "4"),
                    ("OMPI_COMM_WORLD_LOCAL_RANK", "3"),
                ],
                (3, 4, Some(3), OpenMpi),
            ),
            (
                &[
                    ("SLURM_PROCID", "7"),
                    ("SLURM_NTASKS", "16"),
                    ("SLURM_LOCALID", "3"),
                ],
                (7, 16, Some(3), Slurm),
            ),
            // waypoint's own variables override a launcher's.
            (
                &[
                    ("WAYPOINT_RANK", "0"),
                    ("WAYPOINT_WORLD_SIZE", "1"),
                    ("RANK", "2"),
                    ("WORLD_SIZE", "4"),
                ],
                (0, 1, None, Waypoint),
            ),
            // mpirun inside a SLURM allocation: Open MPI's variables describe the job.
            (
                &[
                    ("OMPI_COMM_WORLD_RANK", "1"),
                    ("OMPI_COMM_WORLD_SIZE", "2"),
                    ("SLURM_PROCID", "0"),
                    ("SLURM_NTASKS", "1"),
                ],
                (1, 2, None, OpenMpi),
            ),
            // Blank values count as unset.
            (
                &[("RANK", " "), ("WORLD_SIZE", "")],
                (0, 1, Some(0), Default),
            ),
            (
                &[("RANK", " 2 "), ("WORLD_SIZE", "3")],
                (2, 3, None, Torchrun),
            ),
        ];
        for (vars, want) in table {
            assert_eq!(read(vars).as_ref(), Ok(want), "{vars:?}");
        }
    }

    #[test]
    fn inconsistent_environments_are_refused_naming_the_variable() {
        let table: &[(&[(&str, &str)], &str)] = &[
            (&[("RANK", "1")], "RANK is set but WORLD_SIZE is not"),
            (
                &[("WAYPOINT_RANK", "3")],
                "WAYPOINT_RANK is set but WAYPOINT_WORLD_SIZE is not",
            ),
            (
                &[("WAYPOINT_LOCAL_RANK", "1")],
                "WAYPOINT_LOCAL_RANK is set but WAYPOINT_RANK and WAYPOINT_WORLD_SIZE are not",
            ),
            (
                &[
                    ("LOCAL_RANK", "0"),
                    ("SLURM_PROCID", "0"),
                    ("SLURM_NTASKS", "1"),
                ],
                "LOCAL_RANK is set but RANK and WORLD_SIZE are not",
            ),
            (
                &[("SLURM_NTASKS", "4")],
                "SLURM_NTASKS is set but SLURM_PROCID is not",
            ),
            (
                &[("RANK", "x"), ("WORLD_SIZE", "2")],
                "RANK=\"x\" is not a non-negative integer",
            ),
            (&[("RANK", "-1"), ("WORLD_SIZE", "2")], "RANK=\"-1\""),
            (
                &[("RANK", "2"), ("WORLD_SIZE", "2")],
                "RANK 2 is not below the world size 2",
            ),
            (&[("RANK", "0"), ("WORLD_SIZE", "0")], "world size is 0"),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "one")],
                "LOCAL_RANK=\"one\"",
            ),
        ];
        for (vars, want) in table {
            let err = read(vars).unwrap_err();
            assert!(err.contains(want), "{vars:?}: {err}");
        }
    }
}
