//! waypoint-candle's integration tests, as one test binary: candle vars through a real checkpoint
//! (`roundtrip`) and the saveable AdamW against candle-nn's (`adamw`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests unwrap what they set up themselves

mod adamw;
mod restorer;
mod roundtrip;
