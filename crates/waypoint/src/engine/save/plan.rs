//! Planning a save: validates the caller's tensors, assigns their chunks to shard files (first fit
//! by `max_shard_bytes`, at most one chunk of a tensor per file), lays out each file's header and
//! builds the commit record with its checksums still zero. In an incremental save the previous
//! files holding only unchanged tensors are planned again as they were (to be carried over), and
//! the other unchanged or frozen tensors go to files apart from the changing ones, so that the
//! next save can carry those. Pure: it must not touch storage or read tensor bytes beyond their
//! lengths; writing is [`mod@super::write`]'s job, finding unchanged tensors
//! [`super::incremental`]'s.

use crate::engine::CheckpointMeta;
use crate::engine::tensors::TensorRef;
use crate::error::{Error, Result};
use crate::format::{
    CONTEXT_DIR, ChunkEntry, CommitRecord, FORMAT_NAME, FORMAT_VERSION, FileEntry, ShardItem,
    ShardLayout, TensorEntry, TrainerState, layout_shard, shard_file_name,
};
use crate::storage::StoragePath;
use std::collections::{BTreeMap, BTreeSet};

use super::SaveOptions;
use super::incremental::{CarrySource, Known, carriable_files, source};

/// One shard file to write.
pub(super) struct PlannedFile {
    pub(super) name: String,
    /// Indices into the caller's tensors, in the order of `layout.placements`' item indices.
    pub(super) refs: Vec<usize>,
    pub(super) layout: ShardLayout,
    /// The previous file with exactly this content, to carry over instead of writing.
    pub(super) carry: Option<CarrySource>,
}

/// Where the caller's tensors go.
pub(super) struct Plan {
    pub(super) files: Vec<PlannedFile>,
    pub(super) record: CommitRecord,
    /// For each caller tensor: (name in record, chunk index, first CRC slot).
    pub(super) slots: Vec<(String, usize, usize)>,
    pub(super) total_blocks: usize,
    /// For each caller tensor, its block checksums when known before writing (empty: none).
    pub(super) known_crcs: Vec<Option<Vec<u32>>>,
}

/// Who writes the planned files: their rank (in the file names), the number of ranks, and whether
/// the tensors are complete here (one rank) or only this rank's part (checked as a whole later).
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) rank: u64,
    pub(super) world_size: u64,
    pub(super) complete: bool,
}

impl Layout {
    pub(super) const SINGLE: Layout = Layout {
        rank: 0,
        world_size: 1,
        complete: true,
    };
}

/// The caller's tensors grouped by name: indices of the chunks of each tensor.
type ByName<'t> = BTreeMap<&'t str, Vec<usize>>;

/// For each caller tensor: its file and the start of its bytes there.
type Placements = Vec<(String, u64)>;

/// A file to lay out: its name when it keeps a previous one's, its tensors, where it comes from.
type Bin = (Option<String>, Vec<usize>, Option<CarrySource>);

/// Validates the tensors, assigns chunks to files and builds the record (checksums still zero).
/// With `known` (an incremental save), files of the previous save are planned again where they
/// can be carried over.
pub(super) fn plan(
    tensors: &[TensorRef<'_>],
    meta: &CheckpointMeta,
    user: serde_json::Value,
    options: &SaveOptions,
    described: &std::path::Path,
    writer: Layout,
    known: Option<&Known>,
) -> Result<Plan> {
    let by_name = group_by_name(tensors)?;
    let bins = make_bins(tensors, options, known);
    let mut record = empty_record(meta, user, options, writer);
    let (files, placements) = lay_out_files(tensors, &by_name, bins, writer, &mut record)?;
    let (slots, total_blocks) =
        add_tensor_entries(tensors, &by_name, &placements, options, &mut record);
    // The skeleton must already satisfy every invariant a reader checks (tiling, overlaps). A
    // rank's part of a distributed save is checked whole, by rank 0, before it commits.
    if writer.complete {
        validate_as_arguments(&record, described)?;
    }
    let known_crcs = known.map(|k| k.crcs.clone()).unwrap_or_default();
    Ok(Plan {
        files,
        record,
        slots,
        total_blocks,
        known_crcs,
    })
}

/// The files of a save: previous files carried over whole (with `known`), then first fit of
/// the rest, tensors that stay (frozen, or unchanged) apart from those that change when the save
/// is incremental.
fn make_bins(tensors: &[TensorRef<'_>], options: &SaveOptions, known: Option<&Known>) -> Vec<Bin> {
    let all = 0..tensors.len();
    let max = options.max_shard_bytes;
    if !options.incremental {
        let bins = assign_to_files(tensors, all.collect(), max);
        return bins.into_iter().map(|refs| (None, refs, None)).collect();
    }
    let mut bins: Vec<Bin> = Vec::new();
    let mut taken = vec![false; tensors.len()];
    let still: Vec<bool> = match known {
        Some(k) => {
            for (file, chunks) in carriable_files(tensors, k) {
                let (starts, refs): (Vec<u64>, Vec<usize>) = chunks.into_iter().unzip();
                refs.iter().for_each(|&i| taken[i] = true);
                bins.push((Some(file.clone()), refs, source(&k.base, &file, starts)));
            }
            k.still.clone()
        }
        None => tensors
            .iter()
            .map(|t| options.frozen.contains(t.name.as_ref()))
            .collect(),
    };
    for group in [true, false] {
        let subset = all.clone().filter(|&i| !taken[i] && still[i] == group);
        let group_bins = assign_to_files(tensors, subset.collect(), max);
        bins.extend(group_bins.into_iter().map(|refs| (None, refs, None)));
    }
    bins
}

/// Validates each tensor and groups the chunks by name; the chunks of one tensor must agree on
/// dtype and global shape.
fn group_by_name<'t>(tensors: &'t [TensorRef<'_>]) -> Result<ByName<'t>> {
    let mut by_name: ByName<'t> = BTreeMap::new();
    for (i, t) in tensors.iter().enumerate() {
        t.validate()?;
        let group = by_name.entry(t.name.as_ref()).or_default();
        if let Some(&first) = group.first() {
            let f = &tensors[first];
            if f.dtype != t.dtype || f.global_shape != t.global_shape {
                return Err(Error::tensor(
                    t.name.as_ref(),
                    format!(
                        "chunks disagree: {} {:?} and {} {:?}",
                        f.dtype, f.global_shape, t.dtype, t.global_shape
                    ),
                ));
            }
        }
        group.push(i);
    }
    Ok(by_name)
}

/// Assigns the chunks `order` (indices into `tensors`) to files: first fit, one chunk of a tensor
/// per file, deterministic order. Returns each file's chunks.
fn assign_to_files(
    tensors: &[TensorRef<'_>],
    mut order: Vec<usize>,
    max_shard_bytes: u64,
) -> Vec<Vec<usize>> {
    order.sort_by(|&a, &b| {
        (tensors[a].name.as_ref(), &tensors[a].offsets)
            .cmp(&(tensors[b].name.as_ref(), &tensors[b].offsets))
    });
    let mut bins: Vec<(Vec<usize>, u64, BTreeSet<&str>)> = Vec::new();
    for i in order {
        let t = &tensors[i];
        let len = t.data.len() as u64;
        let fits = |(_, bytes, names): &(Vec<usize>, u64, BTreeSet<&str>)| {
            !names.contains(t.name.as_ref())
                && (*bytes == 0 || bytes.saturating_add(len) <= max_shard_bytes)
        };
        let bin = match bins.iter().position(fits) {
            Some(b) => b,
            None => {
                bins.push((Vec::new(), 0, BTreeSet::new()));
                bins.len() - 1
            }
        };
        bins[bin].0.push(i);
        bins[bin].1 += len;
        bins[bin].2.insert(t.name.as_ref());
    }
    bins.into_iter().map(|(refs, _, _)| refs).collect()
}

/// The record without files and tensors.
fn empty_record(
    meta: &CheckpointMeta,
    user: serde_json::Value,
    options: &SaveOptions,
    writer: Layout,
) -> CommitRecord {
    CommitRecord {
        format: FORMAT_NAME.to_owned(),
        format_version: FORMAT_VERSION,
        producer: concat!("waypoint ", env!("CARGO_PKG_VERSION")).to_owned(),
        step: meta.step,
        epoch: meta.epoch,
        world_size: writer.world_size,
        block_size: options.block_size,
        files: BTreeMap::new(),
        tensors: BTreeMap::new(),
        trainer_state: TrainerState {
            user,
            waypoint: meta.waypoint.clone(),
        },
    }
}

/// Lays out each file's header and enters the file into `record`. Returns the planned files and
/// where each caller tensor goes. A file keeping a previous name is carried over only when its
/// layout is byte for byte the previous one's; new files take the lowest free numbers.
fn lay_out_files(
    tensors: &[TensorRef<'_>],
    by_name: &ByName<'_>,
    bins: Vec<Bin>,
    writer: Layout,
    record: &mut CommitRecord,
) -> Result<(Vec<PlannedFile>, Placements)> {
    let mut files = Vec::with_capacity(bins.len());
    let mut placements: Placements = vec![(String::new(), 0); tensors.len()];
    let kept: BTreeSet<String> = bins.iter().filter_map(|b| b.0.clone()).collect();
    let mut next = 0u64;
    for (kept_name, refs, mut carry) in bins {
        let name = match kept_name {
            Some(name) => name,
            None => loop {
                let candidate = shard_file_name(writer.rank, next);
                next += 1;
                if !kept.contains(&candidate) {
                    break candidate;
                }
            },
        };
        let items: Vec<ShardItem> = refs
            .iter()
            .map(|&i| {
                let t = &tensors[i];
                ShardItem {
                    name: t.name.to_string(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    offsets: t.offsets.clone(),
                    byte_len: t.data.len() as u64,
                    split: by_name.get(t.name.as_ref()).is_some_and(|g| g.len() > 1)
                        || !t.is_whole(),
                }
            })
            .collect();
        let layout = layout_shard(&items).ok_or_else(|| Error::InvalidArgument {
            name: "tensors",
            reason: format!(
                "the safetensors header of {name} would exceed 100 MB; lower max_shard_bytes"
            ),
        })?;
        if let Some(from) = &carry
            && !same_file(&layout, from)
        {
            carry = None;
        }
        for &(item, start) in &layout.placements {
            placements[refs[item]] = (name.clone(), start);
        }
        record.files.insert(
            name.clone(),
            FileEntry {
                rank: writer.rank,
                size: layout.file_len,
                header_len: layout.header.len() as u64,
                header_crc32c: crc32c::crc32c(&layout.header),
                carried_from: None,
            },
        );
        files.push(PlannedFile {
            name,
            refs,
            layout,
            carry,
        });
    }
    Ok((files, placements))
}

/// Enters every tensor and its chunks into `record` (checksums zero). Returns the CRC slots of
/// each caller tensor (see [`Plan::slots`]) and the number of blocks in all.
fn add_tensor_entries(
    tensors: &[TensorRef<'_>],
    by_name: &ByName<'_>,
    placements: &Placements,
    options: &SaveOptions,
    record: &mut CommitRecord,
) -> (Vec<(String, usize, usize)>, usize) {
    let mut slots = Vec::with_capacity(tensors.len());
    let mut total_blocks = 0usize;
    for (name, group) in by_name {
        let first = &tensors[group[0]];
        let mut chunks = Vec::with_capacity(group.len());
        for &i in group {
            let t = &tensors[i];
            let (file, start) = placements[i].clone();
            let len = t.data.len() as u64;
            let blocks = len.div_ceil(options.block_size) as usize;
            slots.push((i, (name.to_string(), chunks.len(), total_blocks)));
            total_blocks += blocks;
            chunks.push(ChunkEntry {
                offsets: t.offsets.clone(),
                sizes: t.shape.clone(),
                file,
                byte_range: [start, start + len],
                block_crc32c: vec![0; blocks],
            });
        }
        record.tensors.insert(
            name.to_string(),
            TensorEntry {
                dtype: first.dtype,
                shape: first.global_shape.clone(),
                chunks,
            },
        );
    }
    slots.sort_by_key(|(i, _)| *i);
    let slots = slots.into_iter().map(|(_, s)| s).collect();
    (slots, total_blocks)
}

/// Whether `layout` is byte for byte the previous file's: size, header and where each tensor
/// starts (`layout`'s items are in the order of `from.starts`).
fn same_file(layout: &ShardLayout, from: &CarrySource) -> bool {
    layout.file_len == from.entry.size
        && layout.header.len() as u64 == from.entry.header_len
        && crc32c::crc32c(&layout.header) == from.entry.header_crc32c
        && layout
            .placements
            .iter()
            .all(|&(item, start)| from.starts.get(item) == Some(&start))
}

/// Validates a record the save built, reporting a problem as the caller's bad argument.
pub(super) fn validate_as_arguments(
    record: &CommitRecord,
    described: &std::path::Path,
) -> Result<()> {
    record.validate(described).map_err(|e| match e {
        Error::InvalidRecord { reason, .. } => Error::InvalidArgument {
            name: "tensors",
            reason,
        },
        other => other,
    })
}

/// Validates the context file names (one plain component each) and places them under
/// `context/`.
pub(super) fn context_files(files: &[(String, Vec<u8>)]) -> Result<Vec<(StoragePath, &[u8])>> {
    let dir = StoragePath::new(CONTEXT_DIR)?;
    files
        .iter()
        .map(|(name, bytes)| {
            if name.contains('/') || name.starts_with('.') {
                return Err(Error::UnsafePath {
                    path: name.clone(),
                    reason: "a context file name is one component not starting with '.'",
                });
            }
            Ok((dir.join(name)?, bytes.as_slice()))
        })
        .collect()
}
