//! Figures for the choice of a commit record format v2 (docs/FORMAT.md, "The record at 100 B
//! parameters"): the same three 100 B-parameter layouts as `record_scale` (2,000 bf16 tensors of
//! `[8192, 6104]` over 1,024 ranks, 1 MiB blocks), encoded three ways, each measured by its size and
//! the time of a typed parse (serde, no validation: a lower bound of what a reader pays):
//!
//! - `v1`: today's record (compact JSON, one object per chunk);
//! - `columnar`: one JSON record, each tensor's chunks as a grid (the cut points per dimension,
//!   offsets and sizes implied) with one column each of file index, byte start and checksums;
//! - `parts`: a main record holding the files, the tensors' dtypes and shapes and a shared grid
//!   layout per distinct split (which file holds each cell), and one part per shard file listing,
//!   in file order, the cells it holds (tensor, cell) and their checksums (byte starts implied by
//!   the order). `waypoint show` reads the main record; a rank loading its rows reads the main
//!   record and the parts of the files its rows meet (one, when the world size is unchanged).
//!
//! ```text
//! cargo run --release -p waypoint --example record_v2_sketch -- [sharded|tp8|whole|all]
//! ```
//!
//! A sketch for measurement only: nothing here is a format waypoint reads or writes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

const RANKS: u64 = 1024;
const TENSORS: u64 = 2000;
const ROWS: u64 = 8192;
const COLS: u64 = 6104;
const BLOCK: u64 = 1 << 20;
const HEADER: u64 = 1 << 20;
/// A checksum with as many digits as a real one usually has.
const CRC: u32 = 3_000_000_000;

#[derive(Serialize, Deserialize)]
struct File {
    rank: u64,
    size: u64,
    header_len: u64,
    header_crc32c: u32,
}

#[derive(Serialize, Deserialize)]
struct Chunk {
    offsets: Vec<u64>,
    sizes: Vec<u64>,
    file: String,
    byte_range: [u64; 2],
    block_crc32c: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
struct V1Tensor {
    dtype: String,
    shape: Vec<u64>,
    chunks: Vec<Chunk>,
}

#[derive(Serialize, Deserialize)]
struct V1 {
    files: BTreeMap<String, File>,
    tensors: BTreeMap<String, V1Tensor>,
}

/// A tensor's chunks as a grid: cut points per dimension (cells in row-major order), then one
/// column per cell.
#[derive(Serialize, Deserialize)]
struct ColumnarTensor {
    dtype: String,
    shape: Vec<u64>,
    cuts: Vec<Vec<u64>>,
    file: Vec<u32>,
    start: Vec<u64>,
    block_crc32c: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
struct Columnar {
    files: BTreeMap<String, File>,
    tensors: BTreeMap<String, ColumnarTensor>,
}

/// A grid shared by every tensor cut the same way: cut points and the file of each cell.
#[derive(Serialize, Deserialize, PartialEq)]
struct Layout {
    cuts: Vec<Vec<u64>>,
    file: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
struct PartsTensor {
    dtype: String,
    shape: Vec<u64>,
    layout: u32,
}

#[derive(Serialize, Deserialize)]
struct PartFile {
    rank: u64,
    size: u64,
    header_len: u64,
    header_crc32c: u32,
    part_size: u64,
    part_crc32c: u32,
}

#[derive(Serialize, Deserialize)]
struct Main {
    files: BTreeMap<String, PartFile>,
    layouts: Vec<Layout>,
    tensors: BTreeMap<String, PartsTensor>,
}

/// One file's part: its cells in file order, `[tensor index, cell index]`, and their checksums.
#[derive(Serialize, Deserialize)]
struct Part {
    cells: Vec<[u32; 2]>,
    block_crc32c: Vec<u32>,
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    println!(
        "layout    encoding   bytes read by `show` | by a rank at the same world size | by a full verify"
    );
    for (layout, ways) in [("sharded", RANKS), ("tp8", 8), ("whole", 1)] {
        if which == "all" || which == layout {
            measure(layout, ways);
        }
    }
}

/// Rows of cell `i` of `ways`, as the benchmarks cut them.
fn rows(i: u64, ways: u64) -> (u64, u64) {
    (ROWS * i / ways, ROWS * (i + 1) / ways)
}

fn measure(layout: &str, ways: u64) {
    let row_bytes = COLS * 2;
    let names: Vec<String> = (0..TENSORS)
        .map(|t| format!("model.layers.{t}.weight"))
        .collect();
    // Where each cell goes, and every file's running size, in the order a writer lays them out.
    let mut sizes = vec![HEADER; RANKS as usize];
    let mut placed: Vec<Vec<(u64, u64)>> = Vec::new(); // per tensor, per cell: (rank, start)
    let mut in_file: Vec<Vec<[u32; 2]>> = vec![Vec::new(); RANKS as usize];
    for t in 0..TENSORS {
        let cells = (0..ways)
            .map(|i| {
                let rank = (t * ways + i) % RANKS;
                let (a, b) = rows(i, ways);
                let start = sizes[rank as usize];
                sizes[rank as usize] += (b - a) * row_bytes;
                in_file[rank as usize].push([t as u32, i as u32]);
                (rank, start)
            })
            .collect();
        placed.push(cells);
    }
    let file_entry = |r: u64| File {
        rank: r,
        size: sizes[r as usize],
        header_len: HEADER,
        header_crc32c: CRC,
    };
    let blocks = |i: u64| ((rows(i, ways).1 - rows(i, ways).0) * row_bytes).div_ceil(BLOCK);
    let crcs = |i: u64| vec![CRC; blocks(i) as usize];
    let used: Vec<u64> = (0..RANKS).filter(|&r| sizes[r as usize] > HEADER).collect();
    let file_name = |r: u64| format!("__{r}_0.safetensors");

    // v1.
    let v1 = V1 {
        files: used
            .iter()
            .map(|&r| (file_name(r), file_entry(r)))
            .collect(),
        tensors: (0..TENSORS as usize)
            .map(|t| {
                let chunks = (0..ways)
                    .map(|i| {
                        let (rank, start) = placed[t][i as usize];
                        let (a, b) = rows(i, ways);
                        Chunk {
                            offsets: vec![a, 0],
                            sizes: vec![b - a, COLS],
                            file: file_name(rank),
                            byte_range: [start, start + (b - a) * row_bytes],
                            block_crc32c: crcs(i),
                        }
                    })
                    .collect();
                let entry = V1Tensor {
                    dtype: "BF16".into(),
                    shape: vec![ROWS, COLS],
                    chunks,
                };
                (names[t].clone(), entry)
            })
            .collect(),
    };
    let v1_bytes = serde_json::to_vec(&v1).unwrap_or_default();
    drop(v1);
    let v1_s = parse_s::<V1>(&v1_bytes);
    report(layout, "v1", v1_bytes.len(), v1_s, None, None);
    drop(v1_bytes);

    // Columnar, one record. File indices are positions in the sorted `files`.
    let files: BTreeMap<String, File> = used
        .iter()
        .map(|&r| (file_name(r), file_entry(r)))
        .collect();
    let index: BTreeMap<u64, u32> = files
        .values()
        .enumerate()
        .map(|(k, f)| (f.rank, k as u32))
        .collect();
    let cuts: Vec<Vec<u64>> = vec![(0..=ways).map(|i| ROWS * i / ways).collect(), vec![0, COLS]];
    let columnar = Columnar {
        files,
        tensors: (0..TENSORS as usize)
            .map(|t| {
                let cells = &placed[t];
                let entry = ColumnarTensor {
                    dtype: "BF16".into(),
                    shape: vec![ROWS, COLS],
                    cuts: cuts.clone(),
                    file: cells.iter().map(|(r, _)| index[r]).collect(),
                    start: cells.iter().map(|&(_, s)| s).collect(),
                    block_crc32c: (0..ways).flat_map(crcs).collect(),
                };
                (names[t].clone(), entry)
            })
            .collect(),
    };
    let columnar_bytes = serde_json::to_vec(&columnar).unwrap_or_default();
    drop(columnar);
    let columnar_s = parse_s::<Columnar>(&columnar_bytes);
    report(
        layout,
        "columnar",
        columnar_bytes.len(),
        columnar_s,
        None,
        None,
    );
    drop(columnar_bytes);

    // Parts: layouts shared by the tensors cut the same way.
    let mut layouts: Vec<Layout> = Vec::new();
    let mut tensors = BTreeMap::new();
    for t in 0..TENSORS as usize {
        let candidate = Layout {
            cuts: cuts.clone(),
            file: placed[t].iter().map(|(r, _)| index[r]).collect(),
        };
        let k = match layouts.iter().position(|l| *l == candidate) {
            Some(k) => k,
            None => {
                layouts.push(candidate);
                layouts.len() - 1
            }
        };
        let entry = PartsTensor {
            dtype: "BF16".into(),
            shape: vec![ROWS, COLS],
            layout: k as u32,
        };
        tensors.insert(names[t].clone(), entry);
    }
    let parts: Vec<Vec<u8>> = used
        .iter()
        .map(|&r| {
            let cells = in_file[r as usize].clone();
            let block_crc32c = cells.iter().flat_map(|c| crcs(c[1] as u64)).collect();
            serde_json::to_vec(&Part {
                cells,
                block_crc32c,
            })
            .unwrap_or_default()
        })
        .collect();
    let main = Main {
        files: used
            .iter()
            .zip(&parts)
            .map(|(&r, p)| {
                let f = file_entry(r);
                let entry = PartFile {
                    rank: r,
                    size: f.size,
                    header_len: HEADER,
                    header_crc32c: CRC,
                    part_size: p.len() as u64,
                    part_crc32c: CRC,
                };
                (file_name(r), entry)
            })
            .collect(),
        layouts,
        tensors,
    };
    let main_bytes = serde_json::to_vec(&main).unwrap_or_default();
    let main_s = parse_s::<Main>(&main_bytes);
    let one = &parts[0];
    let one_s = parse_s::<Part>(one);
    let all: usize = parts.iter().map(Vec::len).sum();
    let started = Instant::now();
    for p in &parts {
        let _ = serde_json::from_slice::<Part>(p);
    }
    let all_s = started.elapsed().as_secs_f64();
    report(
        layout,
        "parts",
        main_bytes.len(),
        main_s,
        Some((main_bytes.len() + one.len(), main_s + one_s)),
        Some((main_bytes.len() + all, main_s + all_s)),
    );
}

/// Seconds of one typed parse of `bytes` (the best of three).
fn parse_s<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> f64 {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            let parsed = serde_json::from_slice::<T>(bytes);
            let s = started.elapsed().as_secs_f64();
            drop(parsed);
            s
        })
        .fold(f64::INFINITY, f64::min)
}

fn report(
    layout: &str,
    encoding: &str,
    bytes: usize,
    s: f64,
    rank: Option<(usize, f64)>,
    full: Option<(usize, f64)>,
) {
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let (rank, full) = (rank.unwrap_or((bytes, s)), full.unwrap_or((bytes, s)));
    println!(
        "{layout:9} {encoding:9} {:8.2} MiB {:7.3} s | {:8.2} MiB {:7.3} s | {:8.2} MiB {:7.3} s",
        mib(bytes),
        s,
        mib(rank.0),
        rank.1,
        mib(full.0),
        full.1
    );
}
