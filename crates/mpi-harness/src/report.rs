//! [`Ctx`]: what a mode gets (the coordinator, its arguments) and how it reports
//! (`rank=R key=value` lines on stdout, one `println!` per line so that mpirun forwards whole
//! lines).
//!
//! It owns the reporting format and the argument parsing. It must not print anything but those
//! lines on stdout (errors go to stderr), since the tests read stdout line by line.

use anyhow::{Context, anyhow};
use std::fmt::Display;
use std::str::FromStr;
use waypoint::dist::{Coordinator, MpiCoordinator};

/// One rank's view of the run.
pub struct Ctx {
    /// The job's world communicator.
    pub coordinator: MpiCoordinator,
    args: Vec<String>,
}

impl Ctx {
    /// A context over `coordinator` with the mode's arguments.
    pub fn new(coordinator: MpiCoordinator, args: Vec<String>) -> Ctx {
        Ctx { coordinator, args }
    }

    /// This rank.
    pub fn rank(&self) -> u64 {
        self.coordinator.rank()
    }

    /// The number of ranks.
    pub fn world_size(&self) -> u64 {
        self.coordinator.world_size()
    }

    /// Prints `rank=R` followed by `key=value` pairs, on one line.
    pub fn say(&self, pairs: &[(&str, &dyn Display)]) {
        let mut line = format!("rank={}", self.rank());
        for (key, value) in pairs {
            line.push_str(&format!(" {key}={value}"));
        }
        println!("{line}");
    }

    /// The argument at `index`, parsed; `default` when absent.
    pub fn arg_or<T: FromStr>(&self, index: usize, name: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: Display,
    {
        match self.args.get(index) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| anyhow!("argument {name}={raw:?}: {e}")),
        }
    }

    /// The argument at `index`, which the mode needs.
    pub fn arg<T: FromStr>(&self, index: usize, name: &str) -> anyhow::Result<T>
    where
        T::Err: Display,
    {
        let raw = self
            .args
            .get(index)
            .with_context(|| format!("missing argument <{name}>"))?;
        raw.parse()
            .map_err(|e| anyhow!("argument {name}={raw:?}: {e}"))
    }
}
