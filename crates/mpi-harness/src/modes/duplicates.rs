//! `duplicates [rounds]`: the world communicator and two duplicates, each driven by its own thread
//! at the same time (the background save and the training loop do this). Every message is tagged
//! with its channel, so traffic that leaked from one communicator into another would be caught.
//! The first background thread also duplicates its own duplicate, from that thread. Prints the
//! rounds completed per channel.
//!
//! It owns `exchange`, the tagged traffic that `beside-program` reuses. It tests the coordinator's
//! duplicates through the `Coordinator` trait only, and must not reach into MPI itself.

use crate::report::Ctx;
use anyhow::{anyhow, ensure};
use waypoint::dist::Coordinator;

/// `rounds` all-gathers and broadcasts on `c`, each message tagged with `tag`.
pub fn exchange(c: &dyn Coordinator, tag: u8, rounds: u32) -> anyhow::Result<u32> {
    let (rank, world) = (c.rank(), c.world_size());
    for round in 0..rounds {
        let r8 = round.to_le_bytes();
        let mine = [&[tag, rank as u8][..], &r8].concat();
        let all = c.all_gather(&mine)?;
        for (r, got) in all.iter().enumerate() {
            let want = [&[tag, r as u8][..], &r8].concat();
            ensure!(
                *got == want,
                "channel {}: round {round}: entry {r} is {got:?}, wanted {want:?}",
                tag as char
            );
        }
        let root = u64::from(round) % world;
        let got = c.broadcast(root, &[&[tag, rank as u8][..], &r8].concat())?;
        let want = [&[tag, root as u8][..], &r8].concat();
        ensure!(
            got == want,
            "channel {}: round {round}: broadcast gave {got:?}, wanted {want:?}",
            tag as char
        );
    }
    Ok(rounds)
}

/// Runs the mode.
pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let rounds: u32 = ctx.arg_or(0, "rounds", 100)?;
    let world = &ctx.coordinator;
    let first = world.duplicate()?;
    let second = world.duplicate()?;
    ensure!(
        (first.rank(), first.world_size()) == (world.rank(), world.world_size()),
        "a duplicate names another rank"
    );
    let (fg, bg1, bg2) = std::thread::scope(|s| {
        let bg1 = s.spawn(|| -> anyhow::Result<u32> {
            let done = exchange(first.as_ref(), b'b', rounds)?;
            let nested = first.duplicate()?;
            exchange(nested.as_ref(), b'n', 10)?;
            Ok(done)
        });
        let bg2 = s.spawn(|| exchange(second.as_ref(), b'c', rounds));
        let fg = exchange(world, b'a', rounds);
        let join = |h: std::thread::ScopedJoinHandle<'_, anyhow::Result<u32>>| {
            h.join()
                .map_err(|_| anyhow!("a channel's thread panicked"))?
        };
        (fg, join(bg1), join(bg2))
    });
    ctx.say(&[("world", &fg?), ("first", &bg1?), ("second", &bg2?)]);
    drop((first, second));
    world.barrier()?;
    Ok(())
}
