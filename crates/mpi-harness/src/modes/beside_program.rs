//! `beside-program [rounds]`: the program itself all-gathers on `MPI_COMM_WORLD` (through rsmpi,
//! as a training loop's own MPI code would) on one thread while another thread uses the
//! coordinator. The coordinator works on its own duplicate of the world, so neither side sees the
//! other's messages. Prints the rounds each side completed.
//!
//! It owns only the program's side of the traffic; the coordinator's side is
//! `duplicates::exchange`. It must not share a communicator between the two threads: the point is
//! that the coordinator's duplicate keeps them apart.

use super::duplicates::exchange;
use crate::report::Ctx;
use anyhow::{anyhow, ensure};
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

/// `rounds` all-gathers of `round * 1000 + rank` on `MPI_COMM_WORLD`, each result checked.
fn program_traffic(rounds: u32) -> anyhow::Result<u32> {
    let world = SimpleCommunicator::world();
    let size = usize::try_from(world.size())?;
    let rank = u64::try_from(world.rank())?;
    let mut all = vec![0u64; size];
    for round in 0..rounds {
        let mine = u64::from(round) * 1000 + rank;
        world.all_gather_into(&mine, &mut all[..]);
        for (r, &got) in all.iter().enumerate() {
            ensure!(
                got == u64::from(round) * 1000 + r as u64,
                "MPI_COMM_WORLD round {round}: entry {r} is {got}"
            );
        }
    }
    Ok(rounds)
}

/// Runs the mode.
pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let rounds: u32 = ctx.arg_or(0, "rounds", 100)?;
    let (program, coordinator) = std::thread::scope(|s| {
        let program = s.spawn(|| program_traffic(rounds));
        let coordinator = exchange(&ctx.coordinator, b'w', rounds);
        let program = program
            .join()
            .map_err(|_| anyhow!("the program's MPI thread panicked"))
            .and_then(|r| r);
        (program, coordinator)
    });
    ctx.say(&[("program", &program?), ("coordinator", &coordinator?)]);
    Ok(())
}
