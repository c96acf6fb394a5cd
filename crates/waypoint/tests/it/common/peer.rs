//! What the object-store test peers (`s3`, `azurite`) share: the variables scripts/test.sh
//! exports, prefixes no other test uses, and a private server's free port and start-up wait.
//! It knows no protocol; each peer keeps its own client, environment and server command.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The value of `var`, which must be set and non-empty; otherwise `missing(var)`, which says how
/// to get it.
pub fn required_var(var: &str, missing: fn(&str) -> !) -> String {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => value,
        _ => missing(var),
    }
}

/// [`required_var`] as a path (a server binary).
pub fn required_path(var: &str, missing: fn(&str) -> !) -> PathBuf {
    PathBuf::from(required_var(var, missing))
}

/// A prefix no other test (or earlier run) uses: `<name>-<pid>-<n>-<nanos>`.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{name}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A port of 127.0.0.1 free right now, for a private server.
pub fn free_local_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Returns once `addr` accepts connections; fails naming `server` after `within`.
pub fn wait_until_listening(addr: SocketAddr, within: Duration, server: &str) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{server} did not come up on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
