//! `large [bytes]`: messages far above an MPI eager limit. Rank r all-gathers `bytes + r` bytes of
//! [`pattern`]`(r, …)` and the last rank broadcasts `bytes` bytes of `pattern(100, …)`. Each rank
//! checks every byte and prints the lengths and CRC-32C of what it received, which the test
//! compares with its own computation.
//!
//! It owns `pattern`, the bytes each rank sends. It must not trust what it received: every byte is
//! checked against `pattern` before it is reported, and splitting large messages is left to the
//! coordinator, never done here.

use crate::report::Ctx;
use anyhow::ensure;
use waypoint::dist::Coordinator;

/// The bytes rank `seed` sends: a sequence that differs at every offset and between seeds.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(131).wrapping_add(seed * 7) % 251) as u8)
        .collect()
}

/// Runs the mode.
pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let bytes: usize = ctx.arg_or(0, "bytes", 8 << 20)?;
    let c = &ctx.coordinator;
    let (rank, world) = (ctx.rank(), ctx.world_size());

    let mine = pattern(rank, bytes + usize::try_from(rank)?);
    let all = c.all_gather(&mine)?;
    ensure!(all.len() as u64 == world, "{} messages gathered", all.len());
    let mut lens = Vec::new();
    let mut crcs = Vec::new();
    for (r, got) in all.iter().enumerate() {
        ensure!(
            *got == pattern(r as u64, bytes + r),
            "the all-gathered message of rank {r} is corrupt ({} bytes)",
            got.len()
        );
        lens.push(got.len().to_string());
        crcs.push(format!("{:08x}", crc32c::crc32c(got)));
    }
    ctx.say(&[
        ("gather_lens", &lens.join(",")),
        ("gather_crcs", &crcs.join(",")),
    ]);

    let root = world - 1;
    let data = if rank == root {
        pattern(100, bytes)
    } else {
        Vec::new()
    };
    let got = c.broadcast(root, &data)?;
    ensure!(
        got == pattern(100, bytes),
        "the broadcast is corrupt ({} bytes)",
        got.len()
    );
    ctx.say(&[
        ("bcast_len", &got.len()),
        ("bcast_crc", &format!("{:08x}", crc32c::crc32c(&got))),
    ]);
    Ok(())
}
