//! [`StepCheckpoints`]: the checkpoints committed at one step, combined into the one value per
//! tag and step that a curve can show (several saves may share a step: a top-k checkpoint and
//! the `-last`, a step-end save and the train-end save).
//!
//! Pure: the loggers that show checkpoint scalars as curves (TensorBoard, MLflow) hold one of
//! these and write it once the run has moved past its step. It must not write anything itself.

use super::logger::CheckpointEvent;

/// The scalar tags, in the order [`StepCheckpoints::scalars`] gives them.
pub(super) const TAGS: [&str; 3] = [
    "checkpoint/blocked_ms",
    "checkpoint/write_ms",
    "checkpoint/size_mib",
];

/// The checkpoints committed at one step, combined: the longest the loop was blocked by one, the
/// longest write, the bytes of all of them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StepCheckpoints {
    pub step: u64,
    /// When the first was reported (seconds since the Unix epoch).
    pub wall_time: f64,
    pub blocked_ms: f64,
    pub write_ms: f64,
    pub bytes: u64,
    /// Each checkpoint's line for a text record: its path and size.
    pub lines: Vec<String>,
}

impl StepCheckpoints {
    /// Adds `event` to `held` when it is of the same step; otherwise returns what `held` had and
    /// holds `event` alone.
    pub fn add(held: &mut Option<Self>, event: &CheckpointEvent, now: f64) -> Option<Self> {
        let mib = event.bytes as f64 / (1024.0 * 1024.0);
        let line = format!("saved `{}` ({mib:.1} MiB)", event.path.display());
        if let Some(h) = held.as_mut().filter(|h| h.step == event.step) {
            h.blocked_ms = h.blocked_ms.max(event.blocked_ms);
            h.write_ms = h.write_ms.max(event.write_ms);
            h.bytes += event.bytes;
            h.lines.push(line);
            return None;
        }
        held.replace(StepCheckpoints {
            step: event.step,
            wall_time: now,
            blocked_ms: event.blocked_ms,
            write_ms: event.write_ms,
            bytes: event.bytes,
            lines: vec![line],
        })
    }

    /// Takes `held` out when its step is before `step` (any step when `None`): it is complete.
    pub fn due(held: &mut Option<Self>, step: Option<u64>) -> Option<Self> {
        let due = held
            .as_ref()
            .is_some_and(|h| step.is_none_or(|s| h.step < s));
        if due { held.take() } else { None }
    }

    /// The values of [`TAGS`]: blocked and write time in milliseconds, size in MiB.
    pub fn scalars(&self) -> [(&'static str, f64); 3] {
        let [blocked, write, size] = TAGS;
        [
            (blocked, self.blocked_ms),
            (write, self.write_ms),
            (size, self.bytes as f64 / (1024.0 * 1024.0)),
        ]
    }

    /// The text record: one line per checkpoint.
    pub fn text(&self) -> String {
        self.lines.join("\n\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn event(step: u64, bytes: u64, blocked_ms: f64, write_ms: f64) -> CheckpointEvent {
        CheckpointEvent {
            step,
            path: PathBuf::from(format!("c{step}-{bytes}")),
            bytes,
            blocked_ms,
            write_ms,
        }
    }

    #[test]
    fn saves_of_one_step_combine_and_a_later_step_completes_them() {
        let mut held = None;
        assert_eq!(
            StepCheckpoints::add(&mut held, &event(5, 1 << 20, 2.0, 10.0), 1.0),
            None
        );
        assert_eq!(
            StepCheckpoints::add(&mut held, &event(5, 1 << 20, 1.0, 30.0), 2.0),
            None
        );
        assert_eq!(
            StepCheckpoints::due(&mut held, Some(5)),
            None,
            "step 5 may still save"
        );
        let done = StepCheckpoints::due(&mut held, Some(6)).unwrap();
        assert_eq!(
            done.scalars(),
            [
                ("checkpoint/blocked_ms", 2.0),
                ("checkpoint/write_ms", 30.0),
                ("checkpoint/size_mib", 2.0)
            ]
        );
        assert_eq!((done.step, done.wall_time, done.lines.len()), (5, 1.0, 2));
        assert!(held.is_none());
        StepCheckpoints::add(&mut held, &event(10, 0, 0.0, 0.0), 3.0);
        let previous = StepCheckpoints::add(&mut held, &event(15, 0, 0.0, 0.0), 4.0).unwrap();
        assert_eq!(previous.step, 10);
        assert_eq!(StepCheckpoints::due(&mut held, None).unwrap().step, 15);
    }
}
