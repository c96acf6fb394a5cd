//! The training job: resume or start, the step loop with the run's calls that may save, the end
//! of training, and the lines printed along the way. It must not decide when to save, what to keep
//! or where to resume (waypoint's policy does), nor read flags (`cli` does).

use crate::cli::Args;
use crate::data::Dataset;
use crate::job::Job;
use crate::out::Out;
use crate::state::StateConfig;
use crate::trainer::Trainer;
use crate::{learning_rate, open_experiment, resume_rules};
use anyhow::Context;
use std::time::Instant;
use waypoint::{Experiment, ResumePoint, Run};

/// How a run ended, when it did not fail.
pub(crate) enum Outcome {
    /// `--max-steps` reached (now or by an earlier run).
    Done,
    /// A preemption signal: the `-last` checkpoint is saved, the same command resumes.
    Preempted,
}

/// The whole job: resume or start, train to `--max-steps` (or until preempted), print the digest.
/// With `job`, this process is one rank of a `--data-parallel` job.
pub(crate) fn train(args: &Args, out: &mut Out, job: Option<&Job>) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let mut experiment = open_experiment(args, job.map(|j| j.run.clone()))?;
    continue_past_end(args, &mut experiment, out)?;
    print_locations(&experiment, out);
    let data = Dataset::generate(args.seed);
    let mut state = new_trainer(args, &data, out, job)?;
    let point = restore(args, experiment.run_mut(), &mut state, out)?;
    if let Some(p) = point
        .as_ref()
        .filter(|p| p.completed || state.step() >= args.max_steps)
    {
        return finish_completed(args, experiment, &state, &data, p, out);
    }
    let run = experiment.run_mut();
    if point.is_none() {
        let val = state.val_loss(&data)?;
        run.log_metrics(0, &[("val_loss", f64::from(val))]);
        out.info(format_args!("step 0 val_loss {val}"));
    }
    let first = state.step() + 1;
    let mut totals = (0u64, 0u64);
    out.start_progress(first - 1, args.max_steps);
    for step in first..=args.max_steps {
        train_one_step(args, run, &mut state, &data, step, &mut totals, out)?;
        if run.should_stop() {
            // The run saved the -last checkpoint of this step and waited for it.
            out.finish_progress();
            out.result(format_args!(
                "preempted at step {step}: the -last checkpoint is saved; run the same command again to resume"
            ));
            return Ok(Outcome::Preempted);
        }
    }
    finish_training(args, experiment, &state, (first, started), totals, out)
}

/// A run that completed at a step below `--max-steps` is reopened to continue past its end.
fn continue_past_end(
    args: &Args,
    experiment: &mut Experiment,
    out: &mut Out,
) -> anyhow::Result<()> {
    if let Some(point) = experiment
        .run()
        .resume_point()
        .filter(|p| p.completed && p.step < args.max_steps)
    {
        out.info(format_args!(
            "the run completed at step {} (checkpoint {}); --max-steps {} continues it",
            point.step, point.name, args.max_steps
        ));
        experiment
            .reopen(&resume_rules(args, true)?)
            .context("could not reopen the run past its end")?;
    }
    Ok(())
}

/// Prints where the run files, the checkpoints and the curves are.
fn print_locations(experiment: &Experiment, out: &mut Out) {
    out.info(format_args!(
        "run files: {}",
        experiment.version_dir().display()
    ));
    out.info(format_args!(
        "checkpoints: {}",
        experiment.checkpoint_dir().display()
    ));
    out.info(format_args!(
        "curves: tensorboard --logdir {}",
        experiment
            .version_dir()
            .join(waypoint::experiment::TENSORBOARD_DIR)
            .display()
    ));
}

/// The model and optimizer of the flags, at step 0; prints what they are.
fn new_trainer(
    args: &Args,
    data: &Dataset,
    out: &mut Out,
    job: Option<&Job>,
) -> anyhow::Result<Trainer> {
    let config = StateConfig {
        seed: args.seed,
        hidden: args.hidden,
        extra_state_mib: args.extra_state_mib,
    };
    let state = Trainer::new(args.model, config, data, job.map(|j| j.dp.clone()))?;
    if let Some(job) = job {
        out.info(format_args!(
            "data-parallel: {} ranks, each trains on 1/{} of every minibatch and owns 1/{} of Adam's moments (ZeRO-1)",
            job.dp.world(),
            job.dp.world(),
            job.dp.world()
        ));
    }
    out.info(format_args!(
        "model: {}, {} parameters; checkpointed tensors: {} bytes; {} CPU threads",
        state.describe(args.hidden),
        state.parameter_count(),
        state.tensor_bytes(),
        args.threads
    ));
    Ok(state)
}

/// Restores the checkpoint the run resumes from, if any, into `state`; prints which.
fn restore(
    args: &Args,
    run: &mut Run,
    state: &mut Trainer,
    out: &mut Out,
) -> anyhow::Result<Option<ResumePoint>> {
    let point = run.restore(state.restore_target()).with_context(|| {
        format!(
            "could not restore the checkpoint to resume from (this run trains --model {} --hidden {}: the checkpoint must come from the same flags)",
            args.model.name(),
            args.hidden
        )
    })?;
    match &point {
        Some(p) => {
            anyhow::ensure!(
                state.step() == p.step,
                "checkpoint {} records step {} but its trainer state says step {}",
                p.path.display(),
                p.step,
                state.step()
            );
            out.info(format_args!(
                "resumed from {} at step {} ({})",
                p.name, p.step, p.reason
            ));
        }
        None => match run.restored_from() {
            Some(report) => out.info(format_args!(
                "starting fresh from the weights of {}: {}",
                report.source.display(),
                report.summary()
            )),
            None => out.info(format_args!("starting fresh: no checkpoint to resume from")),
        },
    }
    Ok(point)
}

/// The run resumed at its end (`p`): nothing to train, the end of training is told again.
fn finish_completed(
    args: &Args,
    mut experiment: Experiment,
    state: &Trainer,
    data: &Dataset,
    p: &ResumePoint,
    out: &mut Out,
) -> anyhow::Result<Outcome> {
    // Training is done, but the previous process may have stopped before every save of its
    // last step committed. The end of training is told again, so the policy can save what is
    // missing (usually nothing) under the names an uninterrupted run gives: hence the
    // validation loss of that step is reported again when it had one.
    let step = state.step();
    if step.is_multiple_of(args.val_every) {
        let run = experiment.run_mut();
        run.log_metrics(step, &[("val_loss", f64::from(state.val_loss(data)?))]);
    }
    out.event(format_args!("save-begin step={step}"));
    let epoch = state.epoch();
    let saved = state
        .with_state(|s| experiment.finish(step, epoch, s))?
        .context("saving at the end of training")?;
    out.saved(&saved, &mut (0, 0));
    out.event(format_args!("save-end step={step}"));
    out.info(format_args!(
        "run already completed at step {} (checkpoint {}); nothing to do",
        p.step, p.name
    ));
    out.result(format_args!("final_state_sha256={}", state.sha256()?));
    Ok(Outcome::Done)
}

/// One optimizer step, its metrics, its validation when due, and the step end (which may save).
fn train_one_step(
    args: &Args,
    run: &mut Run,
    state: &mut Trainer,
    data: &Dataset,
    step: u64,
    totals: &mut (u64, u64),
    out: &mut Out,
) -> anyhow::Result<()> {
    let loss = state.train_step(data)?;
    anyhow::ensure!(
        state.step() == step,
        "internal error: step {} after step {step}",
        state.step()
    );
    let epoch = state.epoch();
    run.log_metrics(
        step,
        &[
            ("train_loss", f64::from(loss)),
            ("lr", learning_rate(args.model)),
        ],
    );
    out.step(step, loss);
    if step.is_multiple_of(args.val_every) {
        let val = state.val_loss(data)?;
        run.log_metrics(step, &[("val_loss", f64::from(val))]);
        out.info(format_args!("step {step} val_loss {val}"));
        // With a step trigger, validation ends never save; any save would still be listed.
        let saved = state
            .with_state(|s| run.validation_end(step, epoch, s))?
            .with_context(|| format!("saving at step {step}"))?;
        out.saved(&saved, totals);
    }
    let may_save = step.is_multiple_of(args.ckpt_every);
    if may_save {
        out.event(format_args!("save-begin step={step}"));
    }
    let saved = state
        .with_state(|s| run.step_end(step, epoch, s))?
        .with_context(|| format!("saving at step {step}"))?;
    out.saved(&saved, totals);
    if may_save {
        out.event(format_args!("save-end step={step}"));
    }
    Ok(())
}

/// `--max-steps` reached: the end-of-training save, the summary and the digest.
fn finish_training(
    args: &Args,
    experiment: Experiment,
    state: &Trainer,
    (first, started): (u64, Instant),
    mut totals: (u64, u64),
    out: &mut Out,
) -> anyhow::Result<Outcome> {
    let step = state.step();
    // The step end just saved (at least the -last) when the step is a multiple of --ckpt-every;
    // otherwise the end of training saves a -last checkpoint.
    let may_save = !step.is_multiple_of(args.ckpt_every);
    if may_save {
        out.event(format_args!("save-begin step={step}"));
    }
    let epoch = state.epoch();
    let saved = state
        .with_state(|s| experiment.finish(step, epoch, s))?
        .context("saving at the end of training")?;
    out.saved(&saved, &mut totals);
    if may_save {
        out.event(format_args!("save-end step={step}"));
    }
    out.finish_progress();
    out.info(format_args!(
        "trained steps {first}..={step} in {:.2} s; {} checkpoints, {} bytes written",
        started.elapsed().as_secs_f64(),
        totals.0,
        totals.1
    ));
    out.result(format_args!("final_state_sha256={}", state.sha256()?));
    Ok(Outcome::Done)
}
