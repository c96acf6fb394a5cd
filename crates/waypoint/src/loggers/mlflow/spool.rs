//! [`Spool`]: the MLflow logger's requests not yet acknowledged by the server, in order. They
//! live in memory while the server answers; from the first failed request on they are also
//! written to `spool.jsonl` (one JSON request a line) in the logger's directory, with
//! `spool.sent` holding the byte offset of the first one not acknowledged, until the last is
//! acknowledged (both files are then removed). A run started in the same directory sends what a
//! dead one left there. The file is bounded: a request that would grow it past the limit is
//! refused (the caller counts and reports it).

use super::batch::Chunk;
use crate::error::{Error, Result};
use crate::loggers::corrupt::{corrupt_path, set_aside};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The file of requests.
pub const SPOOL_FILE: &str = "spool.jsonl";
/// The file holding the byte offset of the first request not acknowledged.
pub const SENT_FILE: &str = "spool.sent";

/// A request waiting to be sent.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pending {
    pub chunk: Chunk,
    /// The server may have applied it already (an attempt ended without a clear answer, or it
    /// was left by an earlier process): check what the server holds before sending it again.
    pub maybe_applied: bool,
    /// Where its line ends in the spool file, when it is on disk.
    end: u64,
}

/// The requests not yet acknowledged; see the module documentation.
#[derive(Debug)]
pub(super) struct Spool {
    path: PathBuf,
    sent_path: PathBuf,
    pending: VecDeque<Pending>,
    /// Open while the requests are mirrored on disk.
    file: Option<File>,
    /// Length of the spool file.
    len: u64,
    /// Bytes of the spool file already acknowledged.
    sent: u64,
    max_bytes: u64,
}

impl Spool {
    /// Opens the spool of `dir` (created if needed), loading what an earlier process left.
    pub(super) fn open(dir: &Path, max_bytes: u64) -> Result<Spool> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let mut spool = Spool {
            path: dir.join(SPOOL_FILE),
            sent_path: dir.join(SENT_FILE),
            pending: VecDeque::new(),
            file: None,
            len: 0,
            sent: 0,
            max_bytes,
        };
        if spool.path.exists()
            && let Err(e) = spool.load()
        {
            // What an earlier process left must not keep this run from starting.
            let aside = corrupt_path(&spool.path);
            tracing::warn!(path = %spool.path.display(), set_aside = %aside.display(), error = %e, "the MLflow requests left by an earlier run could not be loaded: set aside, this run goes on without them");
            spool.pending.clear();
            spool.file = None;
            (spool.len, spool.sent) = (0, 0);
            let _ = std::fs::rename(&spool.path, &aside);
            let _ = std::fs::remove_file(&spool.sent_path);
        }
        Ok(spool)
    }

    fn load(&mut self) -> Result<()> {
        let sent = match std::fs::read_to_string(&self.sent_path) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or_else(|e| {
                // Every request is then checked against the server before it is sent again.
                tracing::warn!(path = %self.sent_path.display(), error = %e, "the MLflow spool's sent offset is unreadable: checking every queued request against the server");
                0
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(Error::io("read", &self.sent_path, e)),
        };
        let file = File::open(&self.path).map_err(|e| Error::io("open", &self.path, e))?;
        let mut reader = BufReader::new(file);
        reader
            .seek(SeekFrom::Start(sent))
            .map_err(|e| Error::io("seek", &self.path, e))?;
        let mut at = sent;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::io("read", &self.path, e))?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                // Cut by a crash while it was written: never acknowledged, nothing to resend.
                tracing::warn!(path = %self.path.display(), offset = at, "ignoring the incomplete last request of the MLflow spool");
                break;
            }
            at += n as u64;
            match serde_json::from_slice::<Chunk>(&line) {
                Ok(chunk) => self.pending.push_back(Pending {
                    chunk,
                    maybe_applied: true,
                    end: at,
                }),
                // A line glued to a fragment an earlier failed write left (before appends
                // were cut back on failure), or damaged: the rest is still sent.
                Err(e) => set_aside(
                    &self.path,
                    &line,
                    &format!("an MLflow request ending at byte {at} is not valid JSON ({e})"),
                ),
            }
        }
        // Rewritten from what is still pending: drops an incomplete tail and what was sent.
        let pending: Vec<Pending> = self.pending.drain(..).collect();
        let keep = !pending.is_empty();
        self.rewrite(pending, keep)?;
        if !self.pending.is_empty() {
            tracing::info!(path = %self.path.display(), requests = self.pending.len(), "MLflow requests left by an earlier run: sending them first");
        }
        Ok(())
    }

    /// Requests waiting.
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The spool file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The oldest request.
    pub(super) fn front_mut(&mut self) -> Option<&mut Pending> {
        self.pending.front_mut()
    }

    /// Queues `chunk`; on disk too while an outage lasts. Refused (returned) when the spool file
    /// would grow past its limit.
    pub(super) fn push(&mut self, chunk: Chunk) -> Result<std::result::Result<(), Chunk>> {
        let mut pending = Pending {
            chunk,
            maybe_applied: false,
            end: 0,
        };
        if self.file.is_some() {
            let line = line_of(&pending.chunk, &self.path)?;
            if self.len - self.sent + line.len() as u64 > self.max_bytes {
                return Ok(Err(pending.chunk));
            }
            self.append(&line)?;
            pending.end = self.len;
        }
        self.pending.push_back(pending);
        Ok(Ok(()))
    }

    /// The oldest request was acknowledged (or refused for good): forgets it. The files go when
    /// nothing is left.
    pub(super) fn pop(&mut self) -> Result<()> {
        let Some(done) = self.pending.pop_front() else {
            return Ok(());
        };
        if self.file.is_none() {
            return Ok(());
        }
        if self.pending.is_empty() {
            self.file = None;
            for path in [&self.sent_path, &self.path] {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove", path, e)),
                }
            }
            self.len = 0;
            self.sent = 0;
            return Ok(());
        }
        self.sent = done.end;
        // Not synced: after a crash the offset may lag, and the requests after it are then
        // checked against the server before they are sent again (they are `maybe_applied`).
        let tmp = self.sent_path.with_extension("sent.tmp");
        std::fs::write(&tmp, self.sent.to_string()).map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &self.sent_path).map_err(|e| Error::io("rename", &self.sent_path, e))
    }

    /// Mirrors every waiting request on disk from now on (an outage began).
    pub(super) fn spill(&mut self) -> Result<()> {
        if self.file.is_none() {
            let pending: Vec<Pending> = self.pending.drain(..).collect();
            self.rewrite(pending, true)?;
        }
        Ok(())
    }

    /// Drops the metrics at or after `step` of the requests `belongs` says are of the resumed
    /// run: a resumed run logs them again.
    pub(super) fn drop_metrics_from(
        &mut self,
        step: i64,
        belongs: impl Fn(&Chunk) -> bool,
    ) -> Result<usize> {
        let mut dropped = 0;
        let mut pending: Vec<Pending> = self.pending.drain(..).collect();
        for p in pending.iter_mut().filter(|p| belongs(&p.chunk)) {
            let before = p.chunk.metrics.len();
            p.chunk.metrics.retain(|m| m.step < step);
            dropped += before - p.chunk.metrics.len();
        }
        pending.retain(|p| !p.chunk.is_empty());
        if self.file.is_some() && dropped > 0 {
            self.rewrite(pending, true)?;
        } else {
            self.pending = pending.into();
        }
        Ok(dropped)
    }

    /// Makes the spool file durable.
    pub(super) fn sync(&mut self) -> Result<()> {
        if let Some(file) = &self.file {
            file.sync_all()
                .map_err(|e| Error::io("fsync", &self.path, e))?;
        }
        Ok(())
    }

    /// Writes `pending` as the whole spool (a new file renamed over the old one), and mirrors
    /// what comes next on disk; without `keep`, no file when `pending` is empty.
    fn rewrite(&mut self, pending: Vec<Pending>, keep: bool) -> Result<()> {
        self.file = None;
        self.len = 0;
        self.sent = 0;
        for path in [&self.sent_path] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", path, e)),
            }
        }
        if pending.is_empty() && !keep {
            match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &self.path, e)),
            }
            return Ok(());
        }
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut text = String::new();
        let mut ends = Vec::with_capacity(pending.len());
        for p in &pending {
            text.push_str(&line_of(&p.chunk, &self.path)?);
            ends.push(text.len() as u64);
        }
        std::fs::write(&tmp, &text).map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::io("rename", &self.path, e))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io("open", &self.path, e))?;
        self.file = Some(file);
        self.len = text.len() as u64;
        self.pending = pending
            .into_iter()
            .zip(ends)
            .map(|(p, end)| Pending { end, ..p })
            .collect();
        Ok(())
    }

    /// Appends `line`; a failed write (a full disk) is cut back, so the file never holds a
    /// fragment that the next line would be glued to.
    fn append(&mut self, line: &str) -> Result<()> {
        if let Some(file) = &mut self.file {
            if let Err(e) = file.write_all(line.as_bytes()) {
                if let Err(cut) = file.set_len(self.len) {
                    tracing::warn!(path = %self.path.display(), error = %cut, "could not cut a failed MLflow spool write back");
                }
                return Err(Error::io("write", &self.path, e));
            }
            self.len += line.len() as u64;
        }
        Ok(())
    }
}

/// A request's line in the spool file.
fn line_of(chunk: &Chunk, path: &Path) -> Result<String> {
    let mut line = serde_json::to_string(chunk).map_err(|e| Error::InvalidRecord {
        path: path.to_path_buf(),
        reason: format!("cannot write a request as JSON: {e}"),
    })?;
    line.push('\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::super::batch::Metric;
    use super::*;

    fn chunk(steps: std::ops::RangeInclusive<i64>, run: Option<&str>) -> Chunk {
        Chunk {
            run_id: run.map(str::to_owned),
            metrics: steps
                .map(|s| Metric {
                    key: "loss".into(),
                    value: s as f64,
                    timestamp: 1000 + s,
                    step: s,
                })
                .collect(),
            ..Chunk::default()
        }
    }

    fn steps(spool: &mut Spool) -> Vec<i64> {
        let mut out = Vec::new();
        while let Some(p) = spool.front_mut() {
            out.extend(p.chunk.metrics.iter().map(|m| m.step));
            spool.pop().unwrap();
        }
        out
    }

    #[test]
    fn memory_only_until_an_outage_then_on_disk_until_drained() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(tmp.path(), 1 << 20).unwrap();
        spool.push(chunk(1..=2, None)).unwrap().unwrap();
        assert!(
            !tmp.path().join(SPOOL_FILE).exists(),
            "nothing on disk while the server answers"
        );
        spool.spill().unwrap();
        spool.push(chunk(3..=4, None)).unwrap().unwrap();
        let text = std::fs::read_to_string(tmp.path().join(SPOOL_FILE)).unwrap();
        assert_eq!(text.lines().count(), 2);
        spool.pop().unwrap();
        assert!(tmp.path().join(SENT_FILE).exists());
        // A new process finds the one not acknowledged, and checks it before resending.
        let mut again = Spool::open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(again.len(), 1);
        assert!(again.front_mut().unwrap().maybe_applied);
        assert_eq!(steps(&mut again), vec![3, 4]);
        assert!(!tmp.path().join(SPOOL_FILE).exists() && !tmp.path().join(SENT_FILE).exists());
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_a_full_spool_refuses() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(tmp.path(), 1 << 20).unwrap();
        spool.spill().unwrap();
        spool.push(chunk(1..=3, Some("r"))).unwrap().unwrap();
        drop(spool);
        let path = tmp.path().join(SPOOL_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"run_id\":\"r\",\"metr");
        std::fs::write(&path, text).unwrap();
        let mut spool = Spool::open(tmp.path(), 300).unwrap();
        assert_eq!(spool.len(), 1);
        // Over 300 bytes on disk: refused and handed back.
        let refused = spool.push(chunk(4..=9, Some("r"))).unwrap().unwrap_err();
        assert_eq!(refused.metrics.len(), 6);
        assert_eq!(steps(&mut spool), vec![1, 2, 3]);
    }

    #[test]
    fn a_resume_drops_the_queued_metrics_it_logs_again() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(tmp.path(), 1 << 20).unwrap();
        spool.spill().unwrap();
        spool.push(chunk(1..=6, Some("old"))).unwrap().unwrap();
        spool.push(chunk(1..=6, Some("mine"))).unwrap().unwrap();
        spool.push(chunk(7..=9, None)).unwrap().unwrap();
        let dropped = spool
            .drop_metrics_from(5, |c| c.run_id.as_deref() != Some("old"))
            .unwrap();
        assert_eq!(dropped, 2 + 3);
        assert_eq!(spool.len(), 2, "the emptied request is gone");
        let mut reloaded = Spool::open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(steps(&mut reloaded), vec![1, 2, 3, 4, 5, 6, 1, 2, 3, 4]);
    }
}
