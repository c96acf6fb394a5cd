//! Delivery: creating (or reopening) the run, sending the queue oldest first, checking a
//! request whose fate is unknown against the server before sending it again, and backing off
//! when the server does not answer. The rules are in the parent module's documentation.
//! It must not drop a request the server did not refuse, nor send again one whose fate is unknown
//! before checking it.

use super::batch::{Chunk, Metric, StatusUpdate};
use super::client::{Client, Failure};
use super::{FIRST_BACKOFF, MAX_BACKOFF, MlflowLogger, bad_key, batch};
use crate::error::{Error, Result};
use std::time::Instant;

impl MlflowLogger {
    /// Creates the run if needed. `Err` with the failure when the server did not answer.
    fn ensure_run(&mut self) -> std::result::Result<String, (Failure, &'static str)> {
        if let Some(id) = &self.run_id {
            if self.reopen {
                let reopen = Chunk {
                    run_id: Some(id.clone()),
                    status: Some(StatusUpdate {
                        status: "RUNNING".into(),
                        end_time: None,
                    }),
                    ..Chunk::default()
                };
                match self.client.send(id, &reopen) {
                    Ok(()) => self.reopen = false,
                    Err(Failure::Refused(reason)) => {
                        // Deleted, or never on this server: what was queued for it goes to a new run.
                        tracing::warn!(run_id = %id, %reason, "the checkpoint's MLflow run cannot be continued: starting a new run");
                        self.replaced = Some(id.clone());
                        self.run_id = None;
                        self.reopen = false;
                        return self.ensure_run();
                    }
                    Err(failure) => return Err((failure, "runs/update")),
                }
            }
            return Ok(id.clone());
        }
        let experiment_id = match &self.experiment_id {
            Some(id) => id.clone(),
            None => {
                let id = self
                    .client
                    .experiment_id(&self.options.experiment_name)
                    .map_err(|f| (f, "experiments/get-by-name"))?;
                self.experiment_id = Some(id.clone());
                id
            }
        };
        let mut tags: Vec<(String, String)> = Vec::new();
        for (key, value) in &self.options.tags {
            match bad_key(key) {
                None if value.chars().count() <= batch::MAX_TAG_VALUE_LEN => {
                    tags.push((key.clone(), value.clone()));
                }
                why => {
                    tracing::warn!(key, problem = ?why, "MLflow would refuse this tag (key, or a value over 8000 characters): not sent");
                }
            }
        }
        if let Some(name) = &self.options.run_name {
            tags.push(("mlflow.runName".into(), name.clone()));
        }
        let run_name = self.options.run_name.clone().unwrap_or_default();
        let id = self
            .client
            .create_run(&experiment_id, &run_name, self.start_ms, &tags)
            .map_err(|f| (f, "runs/create"))?;
        tracing::info!(run_id = %id, experiment = %self.options.experiment_name, uri = %self.options.tracking_uri, "created the MLflow run");
        self.run_id = Some(id.clone());
        Ok(id)
    }

    /// Sends what is queued, oldest first, until the queue is empty or a request fails.
    /// `Ok(true)`: all sent. `Ok(false)`: the server is unreachable (retry later). `Err`: a
    /// request refused for good (dropped), or the disk.
    pub(super) fn deliver(&mut self) -> Result<bool> {
        let run_id = match self.ensure_run() {
            Ok(id) => id,
            Err((failure, path)) => return self.failed(failure, path).map(|()| false),
        };
        let mut first_error = None;
        let mut sent = 0usize;
        while let Some(front) = self.spool.front_mut() {
            let target = match &front.chunk.run_id {
                Some(id) if self.replaced.as_ref() != Some(id) => id.clone(),
                _ => run_id.clone(),
            };
            if front.maybe_applied
                && !front.chunk.metrics.is_empty()
                && let Err(failure) = self.reconcile_front(&target)
            {
                return self.failed(failure, "metrics/get-history").map(|()| false);
            }
            let Some(front) = self.spool.front_mut() else {
                break;
            };
            let chunk = front.chunk.clone();
            let result = if chunk.is_empty() {
                Ok(())
            } else {
                self.client.send(&target, &chunk)
            };
            match result {
                Ok(()) => {
                    self.spool.pop()?;
                    sent += 1;
                }
                Err(Failure::Refused(reason)) => {
                    self.spool.pop()?;
                    first_error.get_or_insert(self.dropped(&chunk, &reason));
                }
                Err(failure) => return self.unsent(failure, &chunk).map(|()| false),
            }
        }
        self.delivered(sent);
        match first_error {
            Some(e) => Err(e),
            None => Ok(true),
        }
    }

    /// Takes out of the front request the metrics the server already applied for `target` (the
    /// request may have reached it before its answer was lost).
    fn reconcile_front(&mut self, target: &str) -> std::result::Result<(), Failure> {
        let Some(front) = self.spool.front_mut() else {
            return Ok(());
        };
        let mut chunk = front.chunk.clone();
        let removed = reconcile(&self.client, target, &mut chunk)?;
        if removed > 0 {
            tracing::info!(
                removed,
                "metrics the MLflow server had already applied were not sent again"
            );
        }
        let front = self.spool.front_mut();
        if let Some(front) = front {
            front.chunk = chunk;
            front.maybe_applied = false;
        }
        Ok(())
    }

    /// The error of a request the server refused for good (it is dropped).
    fn dropped(&self, chunk: &Chunk, reason: &str) -> Error {
        self.error(
            request_path(chunk),
            format!(
                "{reason} (a request of {} metrics, {} params dropped)",
                chunk.metrics.len(),
                chunk.params.len()
            ),
        )
    }

    /// A request that got no answer stays at the front of the queue; one whose fate is unknown
    /// is checked against the server before it is sent again.
    fn unsent(&mut self, failure: Failure, chunk: &Chunk) -> Result<()> {
        if matches!(failure, Failure::Unknown(_))
            && let Some(front) = self.spool.front_mut()
        {
            front.maybe_applied = true;
        }
        self.failed(failure, request_path(chunk))
    }

    /// The queue is empty: the outage, if one was reported, is over, and the backoff restarts.
    fn delivered(&mut self, sent: usize) {
        if self.outage_reported {
            tracing::info!(requests = sent, uri = %self.options.tracking_uri, "the MLflow server is reachable again: the queued requests were sent");
            self.outage_reported = false;
        }
        self.backoff = FIRST_BACKOFF;
        self.next_attempt = None;
    }

    /// The server did not answer (or refused to create the run): keep everything on disk and
    /// retry later.
    fn failed(&mut self, failure: Failure, path: &str) -> Result<()> {
        if let Failure::Refused(reason) = &failure
            && self.run_id.is_none()
        {
            // The experiment or run could not be made: retrying will not help soon, but the data
            // stays queued.
            tracing::warn!(%reason, "the MLflow server refused to create the run");
        }
        self.spool.spill()?;
        self.next_attempt = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        if !self.outage_reported {
            self.outage_reported = true;
            tracing::warn!(
                url = %self.client.url(path),
                reason = failure.reason(),
                queue = %self.spool.path().display(),
                "MLflow server unreachable: queueing on disk and retrying"
            );
        }
        Ok(())
    }
}

/// The API path of `chunk`'s request, for messages.
fn request_path(chunk: &Chunk) -> &'static str {
    if chunk.status.is_some() {
        "runs/update"
    } else {
        "runs/log-batch"
    }
}

/// Takes out of `chunk` the metrics the server already holds for `run_id`; returns how many.
fn reconcile(
    client: &Client,
    run_id: &str,
    chunk: &mut Chunk,
) -> std::result::Result<usize, Failure> {
    let keys: std::collections::BTreeSet<String> =
        chunk.metrics.iter().map(|m| m.key.clone()).collect();
    let mut held: Vec<Metric> = Vec::new();
    for key in keys {
        held.extend(client.history(run_id, &key)?);
    }
    let before = chunk.metrics.len();
    chunk.metrics.retain(|m| !held.iter().any(|h| h.same(m)));
    Ok(before - chunk.metrics.len())
}
