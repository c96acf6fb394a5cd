//! `killed-rank <victim> <round> [crash|error]`: every rank all-gathers in a loop; at `round`,
//! rank `victim` leaves the others inside a collective it never joins: `crash` (the default)
//! aborts the process (SIGABRT, as a crash would), `error` returns an error, on which main.rs ends
//! the job with `MpiCoordinator::abort`. Either way the launcher must end the job; the survivors
//! never print `finished`.

use crate::report::Ctx;
use anyhow::bail;
use std::io::Write;
use waypoint::dist::Coordinator;

/// Runs the mode.
pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let victim: u64 = ctx.arg(0, "victim")?;
    let at: u32 = ctx.arg(1, "round")?;
    let how: String = ctx.arg_or(2, "how", "crash".to_string())?;
    let c = &ctx.coordinator;
    for round in 0..at.saturating_add(1000) {
        if ctx.rank() == victim && round == at {
            ctx.say(&[("leaving_at", &round), ("how", &how)]);
            std::io::stdout().flush()?;
            match how.as_str() {
                "crash" => std::process::abort(),
                "error" => bail!("failing on purpose at round {round}"),
                other => bail!("argument how={other:?}: expected crash or error"),
            }
        }
        c.all_gather(&round.to_le_bytes())?;
    }
    ctx.say(&[("finished", &true)]);
    Ok(())
}
