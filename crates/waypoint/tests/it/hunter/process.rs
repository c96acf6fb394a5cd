//! One training process of the hunter: `world` rank threads (an in-process [`ThreadGroup`] when
//! there are several), each holding a [`Run`] over the process's own view of the storage, driven
//! by commands and answering what a training loop would see. The storage view counts operations
//! and fails the ones the case arms ([`Faults`]), and once the process is dead, all of them.

use super::net::Net;
use super::ops::Knobs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use waypoint::dist::ThreadGroup;
use waypoint::storage::{CountingStorage, SharedStorage, StorageOp};
use waypoint::{AutoResume, Error, Run, SaveOptions};

/// How long a rank may take to answer one command before the case is called a hang.
const HANG: Duration = Duration::from_secs(30);
/// How a hang's answer begins.
const HUNG: &str = "hung: no answer within";

/// Whether `answer` says the rank hung.
pub fn is_hang(answer: &Answer) -> bool {
    answer.result.as_ref().is_err_and(|e| e.starts_with(HUNG))
}

/// The faults of one process: an armed one-shot fault and the process's death.
#[derive(Default)]
pub struct Faults {
    /// `(operation, how many more calls of it succeed first)`.
    armed: Mutex<Option<(StorageOp, u8)>>,
    dead: AtomicBool,
}

impl Faults {
    /// Fails the `nth` next call of `op` (1 = the next one).
    pub fn arm(&self, op: StorageOp, nth: u8) {
        *self.armed.lock().unwrap() = Some((op, nth.saturating_sub(1)));
    }

    /// From now on every operation fails: the process is dead.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }

    /// Whether the process was killed.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    pub(super) fn check(&self, op: StorageOp) -> waypoint::Result<()> {
        let fault = |what| Error::InjectedFault {
            op_index: 0,
            op: what,
            path: "hunter".into(),
        };
        if self.dead.load(Ordering::SeqCst) {
            return Err(fault("dead process"));
        }
        let mut armed = self.armed.lock().unwrap();
        match *armed {
            Some((kind, 0)) if kind == op => {
                *armed = None;
                Err(fault(op.name()))
            }
            Some((kind, n)) if kind == op => {
                *armed = Some((kind, n - 1));
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The process's view of `storage`: every call goes through `faults`.
pub fn faulty_view(storage: &SharedStorage, faults: &Arc<Faults>) -> SharedStorage {
    let faults = faults.clone();
    Arc::new(CountingStorage::new(storage.clone()).with_fault_hook(move |op| faults.check(op.kind)))
}

/// A command every rank carries out.
#[derive(Debug, Clone)]
pub enum Cmd {
    /// Steps, then a validation reporting this value.
    Train { steps: u8, validate: Option<f64> },
    /// `Run::finish`.
    Finish,
    /// Drop the run (its saves in flight complete, or fail when the process is dead).
    Exit,
}

/// What the policy keeps, as rank 0's run says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kept {
    pub top_k: Vec<String>,
    pub last: Option<String>,
    /// The step each name the policy manages was saved at (a name may be reused later).
    pub steps: std::collections::BTreeMap<String, u64>,
}

/// A rank's answer to a command: the checkpoints it was told were saved (name, step), or the
/// error; and what its policy keeps afterwards.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub result: Result<Vec<(String, u64)>, String>,
    pub kept: Kept,
}

/// How a rank started: the resume point `(name, step)` and whether the state it restored is the
/// state of that step; or the error of building or restoring.
pub type Started = Result<(Option<(String, u64)>, Result<(), String>), String>;

struct Rank {
    commands: Sender<Cmd>,
    answers: Receiver<Answer>,
    join: JoinHandle<()>,
}

/// A running process.
pub struct Process {
    ranks: Vec<Rank>,
    pub faults: Arc<Faults>,
}

impl Process {
    /// Starts `knobs.world` ranks on `storage` resuming as `resume` says; returns the process
    /// and each rank's start.
    pub fn start(
        storage: &SharedStorage,
        knobs: &Knobs,
        resume: &AutoResume,
    ) -> (Process, Vec<Started>) {
        let faults = Arc::new(Faults::default());
        let view = faulty_view(storage, &faults);
        let world = knobs.world;
        let groups: Vec<Option<ThreadGroup>> = if world > 1 {
            ThreadGroup::new(world).into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        let mut ranks = Vec::new();
        let mut starts = Vec::new();
        for (rank, group) in groups.into_iter().enumerate() {
            let (commands, command_rx) = channel();
            let (answer_tx, answers) = channel();
            let (start_tx, start_rx) = channel();
            let (view, policy, resume) = (view.clone(), knobs.policy(), resume.clone());
            let join = std::thread::spawn(move || {
                let mut builder = Run::builder()
                    .storage(view)
                    .checkpoint(policy)
                    .resume(resume)
                    .save_options(SaveOptions {
                        threads: 1,
                        frozen: ["base".to_owned()].into(),
                        ..Default::default()
                    })
                    .clock(|| 0.0);
                if let Some(group) = group {
                    builder = builder.coordinator(Arc::new(group));
                }
                rank_main(
                    builder.build(),
                    rank as u64,
                    world,
                    &start_tx,
                    &command_rx,
                    &answer_tx,
                );
            });
            ranks.push((
                Rank {
                    commands,
                    answers,
                    join,
                },
                start_rx,
            ));
        }
        let ranks = ranks
            .into_iter()
            .map(|(rank, start_rx)| {
                starts.push(
                    start_rx
                        .recv_timeout(HANG)
                        .expect("a rank hung while starting"),
                );
                rank
            })
            .collect();
        (Process { ranks, faults }, starts)
    }

    /// Sends `cmd` to every rank and collects their answers (rank order).
    pub fn command(&self, cmd: &Cmd) -> Vec<Answer> {
        for rank in &self.ranks {
            // A rank whose run failed to start has exited: it answers nothing.
            let _ = rank.commands.send(cmd.clone());
        }
        self.ranks
            .iter()
            .map(|rank| match rank.answers.recv_timeout(HANG) {
                Ok(answer) => answer,
                Err(RecvTimeoutError::Timeout) => Answer {
                    result: Err(format!("{HUNG} {} s", HANG.as_secs())),
                    kept: Kept::default(),
                },
                Err(RecvTimeoutError::Disconnected) => Answer {
                    result: Err("no answer: the rank exited".into()),
                    kept: Kept::default(),
                },
            })
            .collect()
    }

    /// Ends the process: every rank drops its run (`Exit`) unless it already ended, and joins.
    /// A rank that does not answer in time is a hang: reported (its threads are left behind).
    pub fn end(self) -> Result<(), String> {
        let answers = self.command(&Cmd::Exit);
        if let Some((rank, answer)) = answers.iter().enumerate().find(|(_, a)| is_hang(a)) {
            return Err(format!("rank {rank} hung: {:?}", answer.result));
        }
        for rank in self.ranks {
            rank.join.join().expect("a rank panicked");
        }
        Ok(())
    }
}

fn rank_main(
    built: waypoint::Result<Run>,
    rank: u64,
    world: u64,
    start: &Sender<Started>,
    commands: &Receiver<Cmd>,
    answers: &Sender<Answer>,
) {
    let mut run = match built {
        Ok(run) => run,
        Err(e) => {
            let _ = start.send(Err(format!("building the run: {e}")));
            return;
        }
    };
    let mut net = Net::blank(rank, world);
    let point = match run.restore(&mut net) {
        Ok(Some(point)) => {
            let expected = Net::at(point.step, rank, world);
            let restored = if net == expected {
                Ok(())
            } else {
                Err(format!(
                    "restored {net:?}, the state of step {} is {expected:?}",
                    point.step
                ))
            };
            (Some((point.name, point.step)), restored)
        }
        Ok(None) => {
            net = Net::at(0, rank, world);
            (None, Ok(()))
        }
        Err(e) => {
            let _ = start.send(Err(format!("restoring: {e}")));
            return;
        }
    };
    let _ = start.send(Ok(point));
    while let Ok(cmd) = commands.recv() {
        match cmd {
            Cmd::Train { steps, validate } => {
                let result = train(&mut run, &mut net, steps, validate);
                let kept = kept(&run);
                let _ = answers.send(Answer { result, kept });
            }
            Cmd::Finish => {
                let result = run
                    .finish(net.step, 0, &net)
                    .map(|saved| saved.into_iter().map(|s| (s.name, s.step)).collect())
                    .map_err(|e| e.to_string());
                let _ = answers.send(Answer {
                    result,
                    kept: Kept::default(),
                });
                return;
            }
            Cmd::Exit => {
                let kept = kept(&run);
                drop(run);
                let _ = answers.send(Answer {
                    result: Ok(Vec::new()),
                    kept,
                });
                return;
            }
        }
    }
}

fn train(
    run: &mut Run,
    net: &mut Net,
    steps: u8,
    validate: Option<f64>,
) -> Result<Vec<(String, u64)>, String> {
    let mut told = Vec::new();
    let mut tell = |saved: Vec<waypoint::SavedCheckpoint>| {
        told.extend(saved.into_iter().map(|s| (s.name, s.step)));
    };
    for _ in 0..steps {
        net.train_step();
        tell(
            run.step_end(net.step, 0, &*net)
                .map_err(|e| e.to_string())?,
        );
    }
    if let Some(value) = validate {
        run.log_metrics(net.step, &[("val_loss", value)]);
        tell(
            run.validation_end(net.step, 0, &*net)
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(told)
}

fn kept(run: &Run) -> Kept {
    let state = run.policy_state();
    Kept {
        top_k: state.top_k.iter().map(|e| e.name.clone()).collect(),
        last: state.last_model_path.clone(),
        steps: state.saved.clone(),
    }
}
