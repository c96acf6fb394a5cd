//! `repeat [rounds]`: many small collectives back to back (an all-gather, a broadcast from a
//! rotating root and a barrier per round), each result checked on the spot. Prints the number of
//! rounds and a checksum of everything received, which must be the same on every rank.
//!
//! It tests only the coordinator's collectives through the `Coordinator` trait; it must not touch
//! storage or checkpoints, and it leaves the comparison across ranks to the test.

use crate::report::Ctx;
use anyhow::ensure;
use waypoint::dist::Coordinator;

/// Runs the mode.
pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let rounds: u32 = ctx.arg_or(0, "rounds", 200)?;
    let c = &ctx.coordinator;
    let (rank, world) = (ctx.rank(), ctx.world_size());
    let mut digest = 0u32;
    for round in 0..rounds {
        let mine = format!("{round}:{rank}");
        let all = c.all_gather(mine.as_bytes())?;
        for (r, got) in all.iter().enumerate() {
            ensure!(
                *got == format!("{round}:{r}").into_bytes(),
                "round {round}: all-gather entry {r} is {:?}",
                String::from_utf8_lossy(got)
            );
            digest = crc32c::crc32c_append(digest, got);
        }
        let root = u64::from(round) % world;
        let got = c.broadcast(root, format!("{round} from {rank}").as_bytes())?;
        ensure!(
            got == format!("{round} from {root}").into_bytes(),
            "round {round}: broadcast from {root} gave {:?}",
            String::from_utf8_lossy(&got)
        );
        digest = crc32c::crc32c_append(digest, &got);
        c.barrier()?;
    }
    ctx.say(&[("rounds", &rounds), ("digest", &format!("{digest:08x}"))]);
    Ok(())
}
