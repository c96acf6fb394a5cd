//! The S3 test peer: the s3s-fs server that `scripts/test.sh` starts (its `start_s3_server` hook
//! exports `WAYPOINT_TEST_S3_*`), and private s3s-fs instances for tests that kill the server.
//! Without the exported server a test fails saying how to get it: an object-store test never
//! passes without having run.

pub use super::peer::unique_prefix;
use super::peer::{free_local_addr, required_path, required_var, wait_until_listening};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use waypoint::storage::{ObjectBackend, ObjectStorage, ObjectStorageOptions};

/// The credentials test.sh gives s3s-fs (a local server; not secrets).
pub const ACCESS_KEY: &str = "waypoint-test";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "waypoint-test-secret";
/// The bucket test.sh creates.
pub const BUCKET: &str = "waypoint-test";

/// An S3 endpoint the tests can use, with the bucket this test owns.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The bucket: a fresh one per [`shared`] call; [`BUCKET`] on a private [`Server`].
    pub bucket: String,
}

fn missing(what: &str) -> ! {
    panic!(
        "{what} is not set: run the tests through scripts/test.sh, which builds and starts the \
         s3s-fs test server (or start one and export WAYPOINT_TEST_S3_ENDPOINT, WAYPOINT_TEST_S3_DATA, \
         WAYPOINT_TEST_S3S_FS and the AWS_* variables as scripts/test.sh does)"
    )
}

/// The shared server started by scripts/test.sh, with a bucket of this test's own. s3s-fs 0.14
/// lists a prefix by walking its whole bucket's directory and answers 500 when an entry vanishes
/// between the directory read and its `stat` (its `list_objects_*`), so a test deleting objects
/// could fail another test's listing in a shared bucket. A bucket of s3s-fs is a directory under
/// its data directory (`WAYPOINT_TEST_S3_DATA`), so the test creates it there.
pub fn shared() -> Endpoint {
    static N: AtomicU64 = AtomicU64::new(0);
    let url = required_var("WAYPOINT_TEST_S3_ENDPOINT", missing);
    let data = required_path("WAYPOINT_TEST_S3_DATA", missing);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    let bucket = format!(
        "t{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    std::fs::create_dir_all(data.join(&bucket)).unwrap();
    Endpoint { url, bucket }
}

/// The s3s-fs binary, for tests that run their own server.
pub fn binary() -> PathBuf {
    required_path("WAYPOINT_TEST_S3S_FS", missing)
}

impl Endpoint {
    /// The object_store client for this endpoint, with conditional puts on and short retries.
    pub fn store(&self, retry_timeout: Duration) -> Arc<dyn ObjectBackend> {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.url)
            .with_allow_http(true)
            .with_bucket_name(&self.bucket)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            .with_retry(object_store::RetryConfig {
                max_retries: 2,
                retry_timeout,
                ..Default::default()
            })
            .build()
            .unwrap();
        Arc::new(store)
    }

    /// A fresh storage under a unique prefix of the test bucket.
    pub fn storage(&self, name: &str, options: ObjectStorageOptions) -> ObjectStorage {
        let prefix = unique_prefix(name);
        self.storage_at(&prefix, options)
    }

    /// The storage under `prefix` of the test bucket.
    pub fn storage_at(&self, prefix: &str, options: ObjectStorageOptions) -> ObjectStorage {
        let url = format!("s3://{}/{prefix}", self.bucket);
        ObjectStorage::new(self.store(options.retry_timeout), &url, prefix, options).unwrap()
    }

    /// The environment a child process needs to reach this endpoint through `s3://` URLs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ]
    }
}

/// A private s3s-fs process on a free port of 127.0.0.1, serving `root` (killed on drop).
pub struct Server {
    binary: PathBuf,
    root: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Server {
    /// Starts s3s-fs on a free port with the test bucket created under `root`.
    pub fn start(binary: &Path, root: &Path) -> Server {
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let addr = free_local_addr();
        let mut server = Server {
            binary: binary.to_owned(),
            root: root.to_owned(),
            addr,
            child: None,
        };
        server.restart();
        server
    }

    /// The endpoint it serves.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: format!("http://{}", self.addr),
            bucket: BUCKET.to_owned(),
        }
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts it again on the same port and root; returns once it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(&self.binary)
            .arg("--host")
            .arg(self.addr.ip().to_string())
            .arg("--port")
            .arg(self.addr.port().to_string())
            .arg("--access-key")
            .arg(ACCESS_KEY)
            .arg("--secret-key")
            .arg(SECRET_KEY)
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until_listening(self.addr, Duration::from_secs(30), "s3s-fs");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
