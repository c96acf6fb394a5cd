//! What the hunter does: the knobs of a case ([`Knobs`]) and the operations it applies in
//! sequence ([`Op`]), with their proptest strategies. Plain data, printed as a case when a check
//! fails, so a shrunk failure reads as a script.

use proptest::prelude::*;
use waypoint::storage::StorageOp;
use waypoint::{Mode, ModelCheckpoint, PendingFull, SaveLast};

/// Validation values: few and close, so that names collide at two decimals (0.503 and 0.498 are
/// both `0.50`), scores tie, and the top-k changes.
pub const VALUES: [f64; 6] = [0.503, 0.498, 0.25, 0.7, 0.25, 0.1];

/// Where the checkpoints live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The in-memory file system: power cuts lose what was not durable.
    Memory,
    /// A temporary directory on the local disk: `resume_from_path` works, a power cut is a kill.
    Disk,
}

/// The configuration of one case.
#[derive(Debug, Clone)]
pub struct Knobs {
    pub backend: Backend,
    pub world: u64,
    pub save_top_k: i64,
    pub mode: Mode,
    pub every_n: u64,
    pub save_last: SaveLast,
    pub async_save: bool,
    pub max_pending: usize,
    pub when_full: PendingFull,
    pub version_counter: bool,
    /// 0: NeMo's default template, 1: `{val_loss:.2f}`, 2: `{step}`.
    pub filename: u8,
}

impl Knobs {
    /// The policy these knobs describe.
    pub fn policy(&self) -> ModelCheckpoint {
        let mut b = ModelCheckpoint::builder()
            .monitor("val_loss")
            .mode(self.mode)
            .save_top_k(self.save_top_k)
            .every_n_train_steps(self.every_n)
            .save_last(self.save_last)
            .async_save(self.async_save)
            .max_pending_saves(self.max_pending)
            .when_pending_full(self.when_full)
            .enable_version_counter(self.version_counter);
        match self.filename {
            1 => b = b.filename("{val_loss:.2f}"),
            2 => b = b.filename("{step}"),
            _ => {}
        }
        b.build().expect("the hunter's knobs are valid")
    }
}

/// The storage operations a fault can hit.
pub const FAULT_OPS: [StorageOp; 11] = [
    StorageOp::Begin,
    StorageOp::Create,
    StorageOp::Write,
    StorageOp::Finish,
    StorageOp::Commit,
    StorageOp::LinkSibling,
    StorageOp::RemoveDirAll,
    StorageOp::List,
    StorageOp::Stat,
    StorageOp::Open,
    StorageOp::Read,
];

/// One operation of a case.
#[derive(Debug, Clone)]
pub enum Op {
    /// `steps` training steps (each calling `step_end`), then a validation at the last one
    /// reporting `VALUES[v]` when `validate` is `Some(v)`.
    Train { steps: u8, validate: Option<u8> },
    /// The `nth` next call of `FAULT_OPS[op]` by this process fails (once).
    Fault { op: u8, nth: u8 },
    /// The machine loses power: the process dies where it is, what was not durable is lost
    /// (on the disk backend: the process is killed), and a new process resumes.
    PowerCut,
    /// The process exits without finishing (its saves in flight complete), a new one resumes.
    Restart,
    /// A new process resumes from the `i`-th committed checkpoint (by name, modulo their number)
    /// through `resume_from_path` (disk backend; a plain restart in memory).
    ResumeFrom(u8),
    /// `finish`: the train-end save; the next process resumes past the end.
    Finish,
    /// Another process saves the state of step `step` (clamped to ≥ 1) into the same directory
    /// under the `name`-th candidate name (see `World::foreign_name`), all at once or, with
    /// `hold`, stopped before its commit (a live temporary) until the next `Release`.
    Foreign { name: u8, step: u8, hold: bool },
    /// The held save of the other process goes on and commits.
    Release,
    /// The user deletes the `i`-th committed checkpoint (by name, modulo their number).
    UserDelete(u8),
}

/// Knobs for a case on `world` ranks.
pub fn knobs(world: u64) -> impl Strategy<Value = Knobs> {
    let backend = prop_oneof![3 => Just(Backend::Memory), 1 => Just(Backend::Disk)];
    let last = prop_oneof![
        Just(SaveLast::No),
        Just(SaveLast::Yes),
        Just(SaveLast::Link)
    ];
    let mode = prop_oneof![Just(Mode::Min), Just(Mode::Max)];
    let full = prop_oneof![Just(PendingFull::Wait), Just(PendingFull::Skip)];
    (
        backend,
        -1i64..=3,
        mode,
        1u64..=3,
        last,
        any::<bool>(),
        1usize..=3,
        full,
        any::<bool>(),
        0u8..3,
    )
        .prop_map(
            move |(
                backend,
                k,
                mode,
                every_n,
                save_last,
                async_save,
                max_pending,
                when_full,
                vc,
                filename,
            )| {
                Knobs {
                    backend,
                    world,
                    save_top_k: k,
                    mode,
                    every_n,
                    save_last,
                    async_save,
                    // Several asynchronous saves in flight: hunted on one process and on
                    // several ranks (found by the hunter and fixed: one name for two saves in
                    // flight; messages garbled between them on several ranks).
                    max_pending,
                    when_full,
                    // The counter off reuses names by design: a rewind may replace newer
                    // checkpoints, and the user deletes reused names between runs (see the
                    // model in world.rs).
                    version_counter: vc,
                    filename,
                }
            },
        )
}

/// One operation, training weighted most.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1u8..=4, proptest::option::weighted(0.7, 0u8..VALUES.len() as u8))
            .prop_map(|(steps, validate)| Op::Train { steps, validate }),
        3 => (0u8..FAULT_OPS.len() as u8, 1u8..=3).prop_map(|(op, nth)| Op::Fault { op, nth }),
        1 => Just(Op::PowerCut),
        1 => Just(Op::Restart),
        1 => any::<u8>().prop_map(Op::ResumeFrom),
        1 => Just(Op::Finish),
        1 => (any::<u8>(), 0u8..24, any::<bool>())
            .prop_map(|(name, step, hold)| Op::Foreign { name, step, hold }),
        1 => Just(Op::Release),
        1 => any::<u8>().prop_map(Op::UserDelete),
    ]
}
