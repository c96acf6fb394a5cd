//! What the trainer prints on stdout. Plain lines, each flushed, when stdout is not a terminal
//! (the tests and logs read them); on a terminal, a progress bar (step, loss, steps/s, ETA, the
//! last checkpoint saved) with the informative lines printed above it. Write errors are ignored:
//! a closed stdout must not stop (or fail) a training run.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fmt;
use std::io::Write;
use waypoint::SavedCheckpoint;

/// The progress bar's layout.
const BAR_TEMPLATE: &str = "step {pos}/{len} [{bar:20}] ETA {eta} | {msg}";

/// Stdout of the trainer.
pub struct Out {
    quiet: bool,
    terminal: bool,
    bar: Option<ProgressBar>,
    loss: f32,
    last_checkpoint: String,
}

impl Out {
    /// Plain lines, or a progress bar when `terminal`; only results with `quiet`.
    pub fn new(quiet: bool, terminal: bool) -> Self {
        Out {
            quiet,
            terminal,
            bar: None,
            loss: f32::NAN,
            last_checkpoint: "none yet".into(),
        }
    }

    /// Shows the progress bar (on a terminal, not quiet) from step `at` to `max`.
    pub fn start_progress(&mut self, at: u64, max: u64) {
        if self.quiet || !self.terminal {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(max), ProgressDrawTarget::stdout());
        if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_position(at);
        bar.reset_eta();
        self.bar = Some(bar);
    }

    /// Removes the progress bar.
    pub fn finish_progress(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// A training step: a `step N train_loss X` line, or the bar moved on.
    pub fn step(&mut self, step: u64, loss: f32) {
        self.loss = loss;
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                self.refresh();
            }
            None => self.info(format_args!("step {step} train_loss {loss}")),
        }
    }

    fn refresh(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "loss {:.4} | {:.0} steps/s | last ckpt: {}",
                self.loss,
                bar.per_sec(),
                self.last_checkpoint
            ));
        }
    }

    /// A progress line, left out with `--quiet`; above the bar on a terminal.
    pub fn info(&mut self, line: fmt::Arguments<'_>) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(line.to_string()),
            None => self.result(line),
        }
    }

    /// A line for programs reading the output (`save-begin`, `save-end`): left out on a
    /// terminal, where the bar says the same.
    pub fn event(&mut self, line: fmt::Arguments<'_>) {
        if !self.terminal {
            self.info(line);
        }
    }

    /// A line printed even with `--quiet`.
    pub fn result(&mut self, line: fmt::Arguments<'_>) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_fmt(line)
            .and_then(|()| stdout.write_all(b"\n"))
            .and_then(|()| stdout.flush());
    }

    /// Lines for checkpoints committed (or linked), added to `totals` (count, bytes).
    pub fn saved(&mut self, saved: &[SavedCheckpoint], totals: &mut (u64, u64)) {
        for s in saved {
            totals.0 += 1;
            totals.1 += s.bytes;
            if s.link {
                self.info(format_args!("linked {} step={}", s.name, s.step));
            } else {
                self.info(format_args!(
                    "saved {} step={} bytes={} ms={} blocked_ms={}",
                    s.name,
                    s.step,
                    s.bytes,
                    s.elapsed.as_millis(),
                    s.blocked.as_millis()
                ));
            }
            let kind = if s.name.ends_with("-last") {
                "last"
            } else {
                "top-k"
            };
            self.last_checkpoint = format!("step {} ({kind})", s.step);
        }
        if !saved.is_empty() {
            self.refresh();
        }
    }
}
