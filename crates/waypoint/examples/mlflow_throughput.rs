//! How fast the loggers' background writer delivers metric values to a real MLflow tracking
//! server, against the CSV logger in the same run (the baseline).
//!
//! ```sh
//! mlflow server --backend-store-uri sqlite:///$PWD/mlflow.db --host 127.0.0.1 --port 5000 &
//! cargo run -p waypoint --features mlflow --example mlflow_throughput -- http://127.0.0.1:5000 [STEPS]
//! ```
//!
//! Each step logs 4 values; the time is from the first call until `finalize` returned (every
//! value acknowledged by the server, or written and synced by the CSV logger).

use std::time::Instant;
use waypoint::loggers::mlflow::{MlflowLogger, MlflowOptions};
use waypoint::{CsvLogger, LoggerOptions, Loggers, MetricLogger, RunStatus};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let uri = args
        .next()
        .ok_or("usage: mlflow_throughput TRACKING_URI [STEPS]")?;
    let steps: u64 = args.next().map_or(Ok(20_000), |s| s.parse())?;
    let tmp = tempfile::tempdir()?;
    let csv: Box<dyn MetricLogger> = Box::new(CsvLogger::new(&tmp.path().join("csv"), None)?);
    let csv_time = measure(csv, steps)?;
    let options = MlflowOptions::new(&uri, "throughput", tmp.path().join("mlflow"));
    let mlflow: Box<dyn MetricLogger> = Box::new(MlflowLogger::new(options)?);
    let mlflow_time = measure(mlflow, steps)?;
    let values = (steps * 4) as f64;
    println!(
        "{steps} steps, {values} values: csv {:.3} s ({:.0} values/s), mlflow {:.3} s ({:.0} values/s), mlflow/csv time {:.1}x",
        csv_time,
        values / csv_time,
        mlflow_time,
        values / mlflow_time,
        mlflow_time / csv_time
    );
    Ok(())
}

/// Seconds to log `steps` steps of 4 values into `logger` and finalize it.
fn measure(logger: Box<dyn MetricLogger>, steps: u64) -> Result<f64, Box<dyn std::error::Error>> {
    let mut log = Loggers::spawn(vec![logger], LoggerOptions::default())?;
    log.resumed(0);
    let start = Instant::now();
    for step in 1..=steps {
        let s = step as f64;
        log.log_metrics(
            step,
            &[
                ("train_loss", 1.0 / s),
                ("lr", 3e-4),
                ("grad_norm", s.sqrt()),
                ("tokens", s * 4096.0),
            ],
        );
    }
    log.finalize(RunStatus::Success)?;
    Ok(start.elapsed().as_secs_f64())
}
