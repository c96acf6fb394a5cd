//! `hello`: joins the job and prints rank and world size. Used to check that a bad launcher
//! environment is refused when joining.
//!
//! It owns no check of its own: the refusal happens in `MpiCoordinator::world`, called by `main.rs`
//! before any mode runs.

use crate::report::Ctx;

/// Prints `world=R/N`.
pub fn run(ctx: &Ctx) -> anyhow::Result<()> {
    ctx.say(&[("world", &format!("{}/{}", ctx.rank(), ctx.world_size()))]);
    Ok(())
}
