//! `collectives <dir>`: one of each operation, printed so the test can compare ranks.
//! - `gather`: rank r sends `r<r>` repeated r times (rank 0 sends nothing); all messages joined
//!   by `|`.
//! - `gather_at2`: the same messages gathered on rank 2 only (empty on the other ranks).
//! - `scatter`: rank 1 gives rank r the part `to<r>` repeated r times.
//! - `bcast<root>`: what arrived from each root in turn (the root sends `from<root>`, the
//!   others pass `ignored`, which must not arrive anywhere).
//! - `barrier_saw`: three rounds of "create `<dir>/round<k>-rank<r>`, barrier, count the round's
//!   files": a working barrier lets every rank see every rank's file.

use crate::report::Ctx;
use anyhow::Context;
use std::path::PathBuf;
use waypoint::dist::Coordinator;

/// Runs the mode.
pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let dir: PathBuf = ctx.arg(0, "dir")?;
    let c = &ctx.coordinator;
    let rank = ctx.rank();
    ctx.say(&[("world", &format!("{rank}/{}", ctx.world_size()))]);

    let mine = format!("r{rank}").repeat(usize::try_from(rank)?);
    let gathered = c.all_gather(mine.as_bytes())?;
    let gathered: Vec<String> = gathered
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    ctx.say(&[("gather", &gathered.join("|"))]);

    let at_root: Vec<String> = c
        .gather(2, mine.as_bytes())?
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    ctx.say(&[("gather_at2", &at_root.join("|"))]);
    let parts: Vec<Vec<u8>> = (0..ctx.world_size())
        .map(|r| {
            format!("to{r}")
                .repeat(usize::try_from(r).unwrap_or(0))
                .into_bytes()
        })
        .collect();
    let own = c.scatter(1, if rank == 1 { &parts } else { &[] })?;
    ctx.say(&[("scatter", &String::from_utf8_lossy(&own))]);

    let mut bcasts = Vec::new();
    for root in 0..ctx.world_size() {
        let data = if root == rank {
            format!("from{root}")
        } else {
            "ignored".to_string()
        };
        let got = c.broadcast(root, data.as_bytes())?;
        bcasts.push((
            format!("bcast{root}"),
            String::from_utf8_lossy(&got).into_owned(),
        ));
    }
    let pairs: Vec<(&str, &dyn std::fmt::Display)> = bcasts
        .iter()
        .map(|(k, v)| (k.as_str(), v as &dyn std::fmt::Display))
        .collect();
    ctx.say(&pairs);

    let mut saw = Vec::new();
    for round in 0..3 {
        let file = dir.join(format!("round{round}-rank{rank}"));
        std::fs::write(&file, b"here").with_context(|| format!("writing {}", file.display()))?;
        c.barrier()?;
        let prefix = format!("round{round}-");
        let count = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count();
        saw.push(count.to_string());
    }
    ctx.say(&[("barrier_saw", &saw.join(","))]);
    Ok(())
}
