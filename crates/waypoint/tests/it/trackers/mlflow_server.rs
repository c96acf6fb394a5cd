//! A real `mlflow server` (SQLite store, 127.0.0.1, a free port) started from the pinned test
//! venv, and reading a run back through its REST API. Shared by waypoint's and waypoint-train's
//! tests (each uses a part of it).

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer `/health` (its imports take ~10 s on an idle machine,
/// much longer on a busy 2-core one).
const STARTUP: Duration = Duration::from_secs(300);

/// A running server. It dies with the test process: it runs under a shell that kills its whole
/// process group when its standard input (held here) closes.
pub struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    pub port: u16,
    db: PathBuf,
    log: PathBuf,
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts a server whose store is `dir/mlflow.db`, on `port`, and waits until it answers.
    pub fn start(dir: &Path, port: u16) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let db = dir.join("mlflow.db");
        let log = dir.join(format!("server-{port}-{}.log", std::process::id()));
        let python = test_python::python();
        let script = format!(
            "'{py}' -m mlflow server --backend-store-uri 'sqlite:///{db}' \
             --default-artifact-root '{art}' --host 127.0.0.1 --port {port} --workers 1 \
             >>'{log}' 2>&1 & cat >/dev/null; kill -9 0",
            py = python.display(),
            db = db.display(),
            art = dir.join("artifacts").display(),
            log = log.display(),
        );
        let mut command = Command::new("sh");
        command
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // The job runner is of no use here and starts a dozen processes.
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false");
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().unwrap();
        let stdin = child.stdin.take();
        let server = Server {
            child,
            stdin,
            port,
            db,
            log,
        };
        server.wait_until_up();
        server
    }

    /// The tracking URI.
    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + STARTUP;
        let agent = agent();
        loop {
            if let Ok(r) = agent.get(format!("{}/health", self.uri())).call()
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mlflow server on port {} did not answer /health within {STARTUP:?}; its log:\n{}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the server (its whole process group) and waits until the port is free.
    pub fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "port {} still answers",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        let dir = self.db.parent().unwrap().to_path_buf();
        *self = Server::start(&dir, self.port);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET `path` (below `/api/2.0/mlflow/`) with `query`; the JSON answer.
pub fn get(uri: &str, path: &str, query: &[(&str, &str)]) -> serde_json::Value {
    let mut request = agent().get(format!("{uri}/api/2.0/mlflow/{path}"));
    for (k, v) in query {
        request = request.query(*k, *v);
    }
    let mut response = request.call().unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    assert_eq!(response.status(), 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// A run as `runs/get` returns it.
pub fn run(uri: &str, run_id: &str) -> serde_json::Value {
    get(uri, "runs/get", &[("run_id", run_id)])["run"].clone()
}

/// Every `(step, value, timestamp)` of metric `key`, ordered by timestamp then step.
pub fn history(uri: &str, run_id: &str, key: &str) -> Vec<(i64, f64, i64)> {
    let v = get(
        uri,
        "metrics/get-history",
        &[
            ("run_id", run_id),
            ("metric_key", key),
            ("max_results", "25000"),
        ],
    );
    let mut out: Vec<(i64, f64, i64)> = v["metrics"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let int = |f: &serde_json::Value| {
                f.as_i64()
                    .unwrap_or_else(|| f.as_str().unwrap().parse().unwrap())
            };
            (
                int(&m["step"]),
                m["value"].as_f64().unwrap(),
                int(&m["timestamp"]),
            )
        })
        .collect();
    out.sort_by_key(|&(step, _, ts)| (ts, step));
    out
}

/// The run's params as a map.
pub fn params(run: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    run["data"]["params"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["key"].as_str().unwrap().to_owned(),
                p["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The run's tags as a map.
pub fn tags(run: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    run["data"]["tags"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["key"].as_str().unwrap().to_owned(),
                p["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}
