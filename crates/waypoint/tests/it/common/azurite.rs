//! The Azure test peer: Azurite (Microsoft's Azure Storage emulator, from npm), the shared blob
//! server that `scripts/test.sh` starts (its `start_azurite` hook exports `WAYPOINT_TEST_AZURITE_*`
//! and `AZURE_STORAGE_USE_EMULATOR` / `AZURITE_BLOB_STORAGE_URL` for `az://` URLs), and private
//! instances for tests that kill the server. Without the shared server a test fails saying how to
//! get it: an Azure test never passes without having run.

pub use super::peer::unique_prefix;
use super::peer::{free_local_addr, required_path, required_var, wait_until_listening};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use waypoint::storage::{ObjectBackend, ObjectStorage, ObjectStorageOptions};

/// Azurite's fixed development account (documented by Microsoft; not a secret).
pub const ACCOUNT: &str = "devstoreaccount1";
/// The development account's key, see [`ACCOUNT`].
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The container test.sh (and [`Server::start`]) creates.
pub const CONTAINER: &str = "waypoint-test";

/// A blob endpoint of Azurite.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `http://127.0.0.1:PORT` (the account is the first path component on the emulator).
    pub url: String,
}

fn missing(what: &str) -> ! {
    panic!(
        "{what} is not set: run the tests through scripts/test.sh, which installs Azurite (npm) and \
         starts it with the container {CONTAINER} (or start `azurite-blob --blobHost 127.0.0.1 \
         --blobPort PORT --location DIR`, create the container with \
         tests/azurite/create_container.py, and export WAYPOINT_TEST_AZURITE_URL, \
         WAYPOINT_TEST_AZURITE, AZURE_STORAGE_USE_EMULATOR=true and AZURITE_BLOB_STORAGE_URL as \
         scripts/test.sh does)"
    )
}

/// The shared server started by scripts/test.sh.
pub fn shared() -> Endpoint {
    Endpoint {
        url: required_var("WAYPOINT_TEST_AZURITE_URL", missing),
    }
}

/// The `azurite-blob` launcher, for tests that run their own server.
pub fn binary() -> PathBuf {
    required_path("WAYPOINT_TEST_AZURITE", missing)
}

impl Endpoint {
    /// The object_store client for this endpoint's test container, with short retries. Built
    /// with the endpoint explicitly (the emulator switch reads its URL from this process's
    /// environment, which names the shared server).
    pub fn store(&self, retry_timeout: Duration) -> Arc<dyn ObjectBackend> {
        let store = object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(ACCOUNT)
            .with_access_key(ACCOUNT_KEY)
            .with_endpoint(format!("{}/{ACCOUNT}", self.url))
            .with_allow_http(true)
            .with_container_name(CONTAINER)
            .with_retry(object_store::RetryConfig {
                max_retries: 2,
                retry_timeout,
                ..Default::default()
            })
            .build()
            .unwrap();
        Arc::new(store)
    }

    /// A fresh storage under a unique prefix of the test container.
    pub fn storage(&self, name: &str, options: ObjectStorageOptions) -> ObjectStorage {
        self.storage_at(&unique_prefix(name), options)
    }

    /// The storage under `prefix` of the test container.
    pub fn storage_at(&self, prefix: &str, options: ObjectStorageOptions) -> ObjectStorage {
        let url = format!("az://{CONTAINER}/{prefix}");
        ObjectStorage::new(self.store(options.retry_timeout), &url, prefix, options).unwrap()
    }

    /// The environment a child process needs to reach this endpoint through `az://` URLs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.url.clone()),
        ]
    }
}

/// Creates the test container on the server at `url` (an existing one is fine), with
/// tests/azurite/create_container.py: object_store creates no containers.
pub fn create_container(url: &str) {
    let script = test_python::repo_root()
        .join("tests/azurite/create_container.py")
        .canonicalize()
        .unwrap();
    let output = Command::new("python3")
        .arg(&script)
        .arg(url)
        .arg(CONTAINER)
        .output()
        .unwrap_or_else(|e| panic!("python3 {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "creating the container at {url} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A private Azurite blob server on a free port of 127.0.0.1, keeping its data under `root`
/// (stopped on drop).
pub struct Server {
    binary: PathBuf,
    root: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Server {
    /// Starts Azurite on a free port with the test container created.
    pub fn start(binary: &Path, root: &Path) -> Server {
        let addr = free_local_addr();
        let mut server = Server {
            binary: binary.to_owned(),
            root: root.to_owned(),
            addr,
            child: None,
        };
        server.restart();
        create_container(&server.endpoint().url);
        server
    }

    /// The endpoint it serves.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: format!("http://{}", self.addr),
        }
    }

    /// Stops the server and waits for it to be gone. SIGTERM, not SIGKILL: Azurite keeps its
    /// metadata in a database it saves every 5 seconds and on exit, so a SIGKILL could make it
    /// forget blobs committed just before (an emulator artefact Azure itself does not have).
    /// Either way every connection drops and requests are refused from then on.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).unwrap();
            // SAFETY: signalling our own child, whose pid we hold and have not reaped.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
            child.wait().unwrap();
        }
    }

    /// Starts it again on the same port and data; returns once it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(&self.binary)
            .arg("--blobHost")
            .arg(self.addr.ip().to_string())
            .arg("--blobPort")
            .arg(self.addr.port().to_string())
            .arg("--location")
            .arg(&self.root)
            .arg("--skipApiVersionCheck")
            .arg("--silent")
            // Azurite would otherwise send usage data to Microsoft.
            .arg("--disableTelemetry")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until_listening(self.addr, Duration::from_secs(60), "azurite");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
