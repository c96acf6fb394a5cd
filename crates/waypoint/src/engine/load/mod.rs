//! Loading a checkpoint: the commit record is read and validated first; the `weights/` listing is
//! checked against it; each shard's header is verified (CRC-32C and agreement with the record)
//! when first used; tensor bytes are read in parallel straight into their destination and their
//! block checksums verified (unless the caller opts out). Whole tensors, subsets, regions,
//! caller-owned buffers and zero-copy views all go through the same path.

use super::record_path;
use super::region::{RegionError, Run, chunk_runs};
use super::tensors::{RegionSlot, Tensor, TensorSink};
use crate::error::{Error, Result};
use crate::format::{
    ChunkEntry, CommitRecord, Dtype, MAX_RECORD_LEN, RECORD_FILE, TensorEntry, WEIGHTS_DIR,
    element_count, parse_header,
};
use crate::storage::{EntryKind, ReadHandle, SharedStorage, StoragePath, read_to_vec};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Reads are grouped into work items of about this many bytes.
const WORK_BYTES: u64 = 4 << 20;

/// How a load reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Verify each block's CRC-32C (default `true`). Turning it off is an explicit opt-out for
    /// speed on trusted storage; headers are verified regardless.
    pub verify_checksums: bool,
    /// Reader threads; 0 picks the number of CPUs, at most 8.
    pub threads: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            verify_checksums: true,
            threads: 0,
        }
    }
}

/// An opened, committed checkpoint.
pub struct CheckpointReader {
    storage: SharedStorage,
    dir: StoragePath,
    record: CommitRecord,
    record_path: PathBuf,
    handles: BTreeMap<String, OnceLock<Box<dyn ReadHandle>>>,
    /// Shard files found in the listing with the recorded size.
    present: Vec<String>,
}

/// The outcome of [`super::Checkpointer::verify`].
#[derive(Debug)]
pub struct VerifyReport {
    /// The checkpoint's commit record (valid, or verification could not start).
    pub record: CommitRecord,
    /// Every problem found, each naming its file (and tensor and byte range where it has them).
    pub problems: Vec<Error>,
    /// Bytes of tensor data read and checked.
    pub bytes_checked: u64,
}

impl VerifyReport {
    /// Whether the checkpoint is intact.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Debug for CheckpointReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointReader")
            .field("dir", &self.dir)
            .field("step", &self.record.step)
            .finish_non_exhaustive()
    }
}

/// Where one work item's bytes go.
#[derive(Clone, Copy)]
struct OutPtr {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: an OutPtr is only dereferenced through `OutPtr::slice` on ranges that the work planning
// keeps disjoint between items (chunks of a tensor never overlap — the record is validated — and
// the runs of one chunk are disjoint), while the buffer it points into is exclusively borrowed for
// the whole load.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn new(buf: &mut [u8]) -> Self {
        OutPtr {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// # Safety
    /// No other live slice may overlap `offset..offset + len`, and the buffer must be alive.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, offset: u64, len: u64) -> &mut [u8] {
        let (offset, len) = (offset as usize, len as usize);
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.len),
            "run outside its buffer"
        );
        // SAFETY: in bounds (checked above); exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }
}

/// A piece of work: some blocks of one chunk, with the runs that copy out of them.
struct ReadWork<'r> {
    tensor: &'r str,
    chunk: &'r ChunkEntry,
    /// Byte span of the chunk covered by this item (block aligned, except at the chunk's end).
    span: (u64, u64),
    runs: Vec<Run>,
    out: OutPtr,
}

impl CheckpointReader {
    pub(crate) fn open(storage: SharedStorage, dir: StoragePath) -> Result<Self> {
        let (reader, problems) = Self::open_lenient(storage, dir)?;
        match problems.into_iter().next() {
            Some(first) => Err(first),
            None => Ok(reader),
        }
    }

    /// Opens a checkpoint whose commit record is valid, collecting (instead of failing on) the
    /// problems of its `weights/` listing: missing, resized, unexpected or linked files.
    pub(crate) fn open_lenient(
        storage: SharedStorage,
        dir: StoragePath,
    ) -> Result<(Self, Vec<Error>)> {
        let rec = record_path(&dir)?;
        let record_path = storage.describe(&rec);
        match storage.stat(&dir)? {
            Some(e) if e.kind == EntryKind::Dir => {}
            Some(e) if e.kind == EntryKind::Symlink => {
                return Err(Error::SymlinkRefused {
                    path: storage.describe(&dir),
                });
            }
            _ => {
                return Err(Error::NotFound {
                    path: storage.describe(&dir),
                });
            }
        }
        let bytes = read_to_vec(storage.as_ref(), &rec, MAX_RECORD_LEN)?;
        let record = CommitRecord::from_json(&bytes, &record_path)?;
        let weights = dir.join(WEIGHTS_DIR)?;
        let mut problems = Vec::new();
        let mut seen = Vec::new();
        for entry in storage.list(&weights)? {
            if entry.name == RECORD_FILE {
                continue;
            }
            let path = weights.join(&entry.name)?;
            match (record.files.get(&entry.name), entry.kind) {
                (_, EntryKind::Symlink) => problems.push(Error::SymlinkRefused {
                    path: storage.describe(&path),
                }),
                (Some(file), EntryKind::File) if entry.size != file.size => {
                    problems.push(Error::ShardSize {
                        path: storage.describe(&path),
                        expected: file.size,
                        actual: entry.size,
                    })
                }
                (Some(_), EntryKind::File) => seen.push(entry.name),
                _ => problems.push(Error::UnexpectedFile {
                    path: storage.describe(&weights),
                    file: entry.name,
                }),
            }
        }
        for (name, _) in record.files.iter().filter(|(name, _)| !seen.contains(name)) {
            let path = storage.describe(&weights.join(name)?);
            let reported = problems.iter().any(|p| match p {
                Error::SymlinkRefused { path: p } | Error::ShardSize { path: p, .. } => p == &path,
                _ => false,
            });
            if !reported {
                problems.push(Error::NotFound { path });
            }
        }
        let handles = record
            .files
            .keys()
            .map(|k| (k.clone(), OnceLock::new()))
            .collect();
        let reader = CheckpointReader {
            storage,
            dir,
            record,
            record_path,
            handles,
            present: seen,
        };
        Ok((reader, problems))
    }

    /// The validated commit record.
    pub fn record(&self) -> &CommitRecord {
        &self.record
    }

    /// The checkpoint's directory.
    pub fn dir(&self) -> &StoragePath {
        &self.dir
    }

    /// The caller's trainer state, deserialised.
    pub fn user_state<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.record.trainer_state.user.clone()).map_err(|source| {
            Error::TrainerState {
                path: self.record_path.clone(),
                source,
            }
        })
    }

    /// The tensor names, sorted.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.record.tensors.keys().map(String::as_str)
    }

    fn entry(&self, name: &str) -> Result<&TensorEntry> {
        self.record
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor {
                tensor: name.to_owned(),
                path: self.storage.describe(&self.dir),
            })
    }

    fn file_path(&self, file: &str) -> PathBuf {
        match self.dir.join(WEIGHTS_DIR).and_then(|w| w.join(file)) {
            Ok(p) => self.storage.describe(&p),
            Err(_) => PathBuf::from(file),
        }
    }

    /// The open handle of a shard, its header verified on first use.
    fn handle(&self, file: &str) -> Result<&dyn ReadHandle> {
        let cell = self.handles.get(file).ok_or_else(|| {
            Error::record(&self.record_path, format!("file {file:?} is not listed"))
        })?;
        if let Some(h) = cell.get() {
            return Ok(h.as_ref());
        }
        let handle = self
            .storage
            .open(&self.dir.join(WEIGHTS_DIR)?.join(file)?)?;
        self.verify_header(file, handle.as_ref())?;
        let _ = cell.set(handle);
        match cell.get() {
            Some(h) => Ok(h.as_ref()),
            None => Err(Error::WorkerPanicked {
                what: "opening a shard".into(),
            }),
        }
    }

    fn verify_header(&self, file: &str, handle: &dyn ReadHandle) -> Result<()> {
        let path = self.file_path(file);
        let entry = &self.record.files[file];
        if handle.len() != entry.size {
            return Err(Error::ShardSize {
                path,
                expected: entry.size,
                actual: handle.len(),
            });
        }
        let mut header = vec![0u8; entry.header_len as usize];
        handle.read_at(0, &mut header)?;
        let actual = crc32c::crc32c(&header);
        if actual != entry.header_crc32c {
            return Err(Error::Checksum {
                path,
                what: "safetensors header".into(),
                start: 0,
                end: entry.header_len,
                expected: entry.header_crc32c,
                actual,
            });
        }
        let parsed =
            parse_header(&header, entry.size).map_err(|reason| Error::shard(&path, reason))?;
        if parsed.header_len != entry.header_len {
            return Err(Error::shard(
                &path,
                format!(
                    "header is {} bytes, the record says {}",
                    parsed.header_len, entry.header_len
                ),
            ));
        }
        let mut expected = 0usize;
        for (name, tensor) in &self.record.tensors {
            for chunk in tensor.chunks.iter().filter(|c| c.file == file) {
                expected += 1;
                let agrees = parsed.tensors.get(name).is_some_and(|h| {
                    h.dtype == tensor.dtype
                        && h.shape == chunk.sizes
                        && h.data_offsets
                            == [
                                chunk.byte_range[0] - entry.header_len,
                                chunk.byte_range[1] - entry.header_len,
                            ]
                });
                if !agrees {
                    return Err(Error::shard(
                        &path,
                        format!("tensor {name:?} in the header disagrees with the commit record"),
                    ));
                }
            }
        }
        if parsed.tensors.len() != expected {
            return Err(Error::shard(
                &path,
                format!(
                    "header lists {} tensors, the record {expected}",
                    parsed.tensors.len()
                ),
            ));
        }
        Ok(())
    }

    /// Loads one whole tensor.
    pub fn load_tensor(&self, name: &str, options: &LoadOptions) -> Result<Tensor> {
        let entry = self.entry(name)?;
        let mut data = vec![0u8; tensor_bytes(name, entry)? as usize];
        let offsets = vec![0; entry.shape.len()];
        self.read_region(name, &offsets, &entry.shape, &mut data, options)?;
        Ok(Tensor {
            dtype: entry.dtype,
            shape: entry.shape.clone(),
            data,
        })
    }

    /// Loads every tensor.
    pub fn load_all(&self, options: &LoadOptions) -> Result<BTreeMap<String, Tensor>> {
        let names: Vec<&str> = self.tensor_names().collect();
        self.load_subset(&names, options)
    }

    /// Loads the named tensors (each must exist).
    pub fn load_subset(
        &self,
        names: &[&str],
        options: &LoadOptions,
    ) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for &name in names {
            let entry = self.entry(name)?;
            out.insert(
                name.to_owned(),
                Tensor {
                    dtype: entry.dtype,
                    shape: entry.shape.clone(),
                    data: vec![0u8; tensor_bytes(name, entry)? as usize],
                },
            );
        }
        self.load_into(&mut out, options)?;
        Ok(out)
    }

    /// Loads into buffers the caller owns. Every slot the sink offers must name a tensor of the
    /// checkpoint with the same dtype and shape.
    pub fn load_into(&self, sink: &mut dyn TensorSink, options: &LoadOptions) -> Result<()> {
        let mut works = Vec::new();
        for slot in sink.slots() {
            let entry = self.entry(slot.name)?;
            if entry.dtype != slot.dtype || entry.shape != slot.shape {
                return Err(Error::tensor(
                    slot.name,
                    format!(
                        "the checkpoint holds {} {:?}, the buffer expects {} {:?}",
                        entry.dtype, entry.shape, slot.dtype, slot.shape
                    ),
                ));
            }
            let want = tensor_bytes(slot.name, entry)?;
            if slot.data.len() as u64 != want {
                return Err(Error::tensor(
                    slot.name,
                    format!("buffer has {} bytes, the tensor {want}", slot.data.len()),
                ));
            }
            let name = self
                .record
                .tensors
                .get_key_value(slot.name)
                .map_or("", |(k, _)| k.as_str());
            let offsets = vec![0; entry.shape.len()];
            plan_region(
                name,
                entry,
                &offsets,
                &entry.shape,
                OutPtr::new(slot.data),
                self.record.block_size,
                &mut works,
            )?;
        }
        self.run(works, options)
    }

    /// Loads regions of tensors into buffers the caller owns (a rank's shards, resharded from
    /// whatever partition the checkpoint was saved with). Each slot's dtype and global shape
    /// must match the checkpoint; only the blocks overlapping each region are read.
    pub fn load_regions(&self, slots: &mut [RegionSlot<'_>], options: &LoadOptions) -> Result<()> {
        for slot in slots.iter_mut() {
            let entry = self.entry(slot.name)?;
            if entry.dtype != slot.dtype || entry.shape != slot.global_shape {
                return Err(Error::tensor(
                    slot.name,
                    format!(
                        "the checkpoint holds {} {:?}, the buffer expects a region of {} {:?}",
                        entry.dtype, entry.shape, slot.dtype, slot.global_shape
                    ),
                ));
            }
            self.read_region(slot.name, slot.offsets, slot.shape, slot.data, options)?;
        }
        Ok(())
    }

    /// Reads the box `offsets`/`sizes` of tensor `name` into `out` (row-major, exactly the box's
    /// byte size). Only the blocks overlapping the box are read and verified.
    pub fn read_region(
        &self,
        name: &str,
        offsets: &[u64],
        sizes: &[u64],
        out: &mut [u8],
        options: &LoadOptions,
    ) -> Result<()> {
        let entry = self.entry(name)?;
        if offsets.len() != entry.shape.len() || sizes.len() != entry.shape.len() {
            return Err(Error::tensor(
                name,
                format!("region needs {} dimensions", entry.shape.len()),
            ));
        }
        for d in 0..offsets.len() {
            if offsets[d]
                .checked_add(sizes[d])
                .is_none_or(|e| e > entry.shape[d])
            {
                return Err(Error::tensor(
                    name,
                    format!(
                        "region {offsets:?}+{sizes:?} exceeds shape {:?}",
                        entry.shape
                    ),
                ));
            }
        }
        let want = element_count(sizes)
            .and_then(|n| entry.dtype.byte_len(n))
            .ok_or_else(|| Error::tensor(name, "the region is not a whole number of bytes"))?;
        if out.len() as u64 != want {
            return Err(Error::tensor(
                name,
                format!("buffer has {} bytes, the region {want}", out.len()),
            ));
        }
        let mut works = Vec::new();
        plan_region(
            name,
            entry,
            offsets,
            sizes,
            OutPtr::new(out),
            self.record.block_size,
            &mut works,
        )?;
        self.run(works, options)
    }

    /// A tensor's bytes without a copy when the storage maps files and the tensor is one chunk;
    /// otherwise an owned copy. Checksums are verified as `options` says.
    pub fn view(&self, name: &str, options: &LoadOptions) -> Result<Cow<'_, [u8]>> {
        let entry = self.entry(name)?;
        if let [chunk] = entry.chunks.as_slice()
            && let Some(map) = self.handle(&chunk.file)?.mapped()
        {
            let [start, end] = chunk.byte_range;
            let bytes = map.get(start as usize..end as usize).ok_or_else(|| {
                Error::shard(
                    self.file_path(&chunk.file),
                    "mapping is shorter than the record says",
                )
            })?;
            if options.verify_checksums {
                for (b, block) in bytes.chunks(self.record.block_size as usize).enumerate() {
                    self.check_block(name, chunk, b, block)?;
                }
            }
            return Ok(Cow::Borrowed(bytes));
        }
        Ok(Cow::Owned(self.load_tensor(name, options)?.data))
    }

    /// Reads every shard and verifies every header and block; returns every problem found (an
    /// empty list for an intact checkpoint). Problems of the listing found at open are not
    /// repeated here; see [`super::Checkpointer::verify`] for the complete check.
    pub fn verify(&self) -> Vec<Error> {
        self.verify_with_progress(&mut |_| {}).0
    }

    /// [`Self::verify`], calling `progress` with the number of data bytes checked so far.
    pub(crate) fn verify_with_progress(&self, progress: &mut dyn FnMut(u64)) -> (Vec<Error>, u64) {
        let mut problems = Vec::new();
        let mut usable = Vec::new();
        for file in self.record.files.keys() {
            if !self.present.contains(file) {
                continue;
            }
            match self.handle(file) {
                Ok(_) => usable.push(file.as_str()),
                Err(e) => problems.push(e),
            }
        }
        let mut scratch = Vec::new();
        let mut checked = 0u64;
        for (name, entry) in &self.record.tensors {
            for chunk in entry
                .chunks
                .iter()
                .filter(|c| usable.contains(&c.file.as_str()))
            {
                let Ok(handle) = self.handle(&chunk.file) else {
                    continue;
                };
                let bs = self.record.block_size;
                for b in 0..chunk.block_crc32c.len() as u64 {
                    let start = b * bs;
                    let len = bs.min(chunk.byte_len() - start);
                    scratch.resize(len as usize, 0);
                    let result = handle
                        .read_at(chunk.byte_range[0] + start, &mut scratch)
                        .and_then(|()| self.check_block(name, chunk, b as usize, &scratch));
                    if let Err(e) = result {
                        problems.push(e);
                    }
                    checked += len;
                    progress(checked);
                }
            }
        }
        (problems, checked)
    }

    fn check_block(
        &self,
        tensor: &str,
        chunk: &ChunkEntry,
        block: usize,
        bytes: &[u8],
    ) -> Result<()> {
        let expected = chunk.block_crc32c[block];
        let actual = crc32c::crc32c(bytes);
        if actual == expected {
            return Ok(());
        }
        let start = chunk.byte_range[0] + block as u64 * self.record.block_size;
        Err(Error::Checksum {
            path: self.file_path(&chunk.file),
            what: format!("tensor {tensor:?}"),
            start,
            end: start + bytes.len() as u64,
            expected,
            actual,
        })
    }

    /// Executes read work on a pool of threads; the first error stops the others.
    fn run(&self, works: Vec<ReadWork<'_>>, options: &LoadOptions) -> Result<()> {
        // Open (and verify the headers of) every file up front, on this thread.
        for w in &works {
            self.handle(&w.chunk.file)?;
        }
        let threads = super::pool::thread_count(options.threads, works.len());
        super::pool::for_each(&works, threads, "a load", |work, scratch| {
            self.run_one(work, options.verify_checksums, scratch)
        })
    }

    fn run_one(&self, work: &ReadWork<'_>, verify: bool, scratch: &mut Vec<u8>) -> Result<()> {
        let handle = self.handle(&work.chunk.file)?;
        let base = work.chunk.byte_range[0];
        if !verify {
            for run in &work.runs {
                // SAFETY: runs of distinct work items write disjoint ranges (see OutPtr).
                let out = unsafe { work.out.slice(run.dst, run.len) };
                handle.read_at(base + run.src, out)?;
            }
            return Ok(());
        }
        let bs = self.record.block_size;
        let mut r = 0usize;
        let mut block_start = work.span.0;
        while block_start < work.span.1 {
            let block_end = (block_start + bs).min(work.chunk.byte_len());
            let block = (block_start / bs) as usize;
            while r < work.runs.len() && work.runs[r].src + work.runs[r].len <= block_start {
                r += 1;
            }
            let covering = work
                .runs
                .get(r)
                .filter(|run| run.src <= block_start && run.src + run.len >= block_end);
            if let Some(run) = covering {
                // The block lands contiguously in the output: read it there and check it in place.
                // SAFETY: as above.
                let out = unsafe {
                    work.out
                        .slice(run.dst + (block_start - run.src), block_end - block_start)
                };
                handle.read_at(base + block_start, out)?;
                self.check_block(work.tensor, work.chunk, block, out)?;
            } else if work.runs.get(r).is_some_and(|run| run.src < block_end) {
                scratch.resize((block_end - block_start) as usize, 0);
                handle.read_at(base + block_start, scratch)?;
                self.check_block(work.tensor, work.chunk, block, scratch)?;
                let mut k = r;
                while let Some(run) = work.runs.get(k).filter(|run| run.src < block_end) {
                    let from = run.src.max(block_start);
                    let to = (run.src + run.len).min(block_end);
                    // SAFETY: as above.
                    let out = unsafe { work.out.slice(run.dst + (from - run.src), to - from) };
                    out.copy_from_slice(
                        &scratch[(from - block_start) as usize..(to - block_start) as usize],
                    );
                    k += 1;
                }
            }
            block_start = block_end;
        }
        Ok(())
    }
}

fn tensor_bytes(name: &str, entry: &TensorEntry) -> Result<u64> {
    element_count(&entry.shape)
        .and_then(|n| entry.dtype.byte_len(n))
        .ok_or_else(|| Error::tensor(name, "byte size overflows"))
}

/// Cuts the reads of a region of one tensor into work items of about [`WORK_BYTES`], each a
/// block-aligned span of one chunk with the runs (clipped to the span) that copy out of it.
fn plan_region<'r>(
    name: &'r str,
    entry: &'r TensorEntry,
    offsets: &[u64],
    sizes: &[u64],
    out: OutPtr,
    block_size: u64,
    works: &mut Vec<ReadWork<'r>>,
) -> Result<()> {
    let step = WORK_BYTES.div_ceil(block_size).max(1) * block_size;
    for chunk in &entry.chunks {
        let runs = chunk_runs(
            entry.dtype.bits(),
            &chunk.offsets,
            &chunk.sizes,
            offsets,
            sizes,
        )
        .map_err(|RegionError::NotByteAligned| {
            Error::tensor(
                name,
                format!(
                    "region {offsets:?}+{sizes:?} splits a byte of {}",
                    sub_byte(entry.dtype)
                ),
            )
        })?;
        let Some(first) = runs.first() else { continue };
        let Some(last) = runs.last() else { continue };
        let lo = first.src / block_size * block_size;
        let hi = last.src + last.len;
        let mut start = lo;
        let mut r = 0usize;
        while start < hi {
            let end = (start + step).min(hi);
            let mut clipped = Vec::new();
            while r < runs.len() && runs[r].src < end {
                let run = runs[r];
                let from = run.src.max(start);
                let to = (run.src + run.len).min(end);
                if from < to {
                    clipped.push(Run {
                        src: from,
                        dst: run.dst + (from - run.src),
                        len: to - from,
                    });
                }
                if run.src + run.len <= end {
                    r += 1;
                } else {
                    break;
                }
            }
            if !clipped.is_empty() {
                let span_end = end
                    .div_ceil(block_size)
                    .saturating_mul(block_size)
                    .min(chunk.byte_len());
                works.push(ReadWork {
                    tensor: name,
                    chunk,
                    span: (start, span_end),
                    runs: clipped,
                    out,
                });
            }
            start = end;
        }
    }
    Ok(())
}

fn sub_byte(dtype: Dtype) -> String {
    format!("{dtype} (sub-byte elements; regions must start and end on whole bytes)")
}
