//! Reads every tensor of a torch DCP checkpoint with `waypoint::dcp::DcpReader` and prints the
//! median time of `REPEATS` full reads as JSON (the Rust side of scripts/bench_dcp.sh).
//!
//! `cargo run --release -p waypoint --example dcp_read -- DIR [REPEATS] [--no-crc]`: with
//! `--no-crc`, the CRC-32 of each tensor's data is not checked (as torch's reader does not).

use std::time::Instant;
use waypoint::dcp::DcpReader;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: dcp_read DIR [REPEATS]")?;
    let repeats: usize = args.next().map_or(Ok(5), |r| r.parse())?;
    let check_crc = args.next().as_deref() != Some("--no-crc");
    let mut times = Vec::with_capacity(repeats);
    let mut bytes = 0usize;
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        let reader = DcpReader::open(std::path::Path::new(&dir))?.with_checksums(check_crc);
        bytes = 0;
        for name in reader.metadata().tensors.keys() {
            bytes += std::hint::black_box(reader.load_tensor(name)?).data.len();
        }
        times.push(started.elapsed().as_secs_f64());
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "{}",
        serde_json::json!({"rust_load_s": median, "crc32_checked": check_crc, "bytes": bytes,
            "times": times})
    );
    Ok(())
}
