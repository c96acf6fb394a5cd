//! `hello`: joins the job and prints rank and world size. Used to check that a bad launcher
//! environment is refused when joining.

use crate::report::Ctx;

/// Prints `world=R/N`.
pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    ctx.say(&[("world", &format!("{}/{}", ctx.rank(), ctx.world_size()))]);
    Ok(())
}
