//! A TCP proxy in front of the real MLflow server that forwards every request but can swallow
//! the server's answer to one chosen log-batch: the fault "the request timed out after the
//! server applied it", which the real server cannot produce on demand. It records the bodies of
//! the log-batch requests it forwarded, so a test can check that nothing reached the server twice.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// What the proxy saw.
#[derive(Default)]
pub struct Seen {
    /// Bodies of the log-batch requests forwarded to the server, in order.
    pub log_batches: Vec<serde_json::Value>,
}

/// Starts the proxy to `upstream_port`; the answer to log-batch number `swallow` (from 1) is
/// dropped (the client's connection is closed without one). Returns its port and what it saw.
pub fn start(upstream_port: u16, swallow: usize) -> (u16, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = Arc::clone(&seen);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let seen = Arc::clone(&shared);
            std::thread::spawn(move || serve(client, upstream_port, swallow, &seen));
        }
    });
    (port, seen)
}

/// One request per client connection (the forwarded one asks the server to close after it).
fn serve(client: TcpStream, upstream_port: u16, swallow: usize, seen: &Mutex<Seen>) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return; // the client closed its connection
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if !lower.starts_with("connection:") {
            head.push_str(&line);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let mut upstream = TcpStream::connect(("127.0.0.1", upstream_port)).unwrap();
    upstream
        .write_all(format!("{head}connection: close\r\n\r\n").as_bytes())
        .unwrap();
    upstream.write_all(&body).unwrap();
    let mut answer = Vec::new();
    upstream.read_to_end(&mut answer).unwrap();
    if head.starts_with("POST /api/2.0/mlflow/runs/log-batch ") {
        let mut seen = seen.lock().unwrap();
        seen.log_batches
            .push(serde_json::from_slice(&body).unwrap());
        if seen.log_batches.len() == swallow {
            return; // applied by the server, but the client never hears of it
        }
    }
    // The server's answer says "connection: close": so does this connection, once written.
    let _ = reader.get_ref().write_all(&answer);
}
