//! The MLflow tracking server's REST API (`/api/2.0/mlflow/...`), the few calls the logger makes,
//! over a blocking HTTP client. Every failure is classified by what it says about the request:
//! [`Failure::NotSent`] (the server never saw it), [`Failure::Unknown`] (it may have been applied:
//! a timeout or a reset after the request went out, a 5xx answer) or [`Failure::Refused`] (a 4xx
//! answer: sending it again cannot help).

use super::batch::{Chunk, Metric};
use serde_json::{Value, json};
use std::time::Duration;

/// How a request failed.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Failure {
    /// The request never reached the server (connection refused, name not found, connect
    /// timeout, 429 Too Many Requests): send it again as it is.
    NotSent(String),
    /// The server may have applied it: check before sending it again.
    Unknown(String),
    /// The server refused it for good (a 4xx answer): its error code and message.
    Refused(String),
}

impl Failure {
    /// The reason, for an error message.
    pub(super) fn reason(&self) -> &str {
        match self {
            Failure::NotSent(r) | Failure::Unknown(r) | Failure::Refused(r) => r,
        }
    }
}

/// A client of one tracking server.
pub(super) struct Client {
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

/// Metrics `get-history` returns per page (the server's maximum).
const HISTORY_PAGE: u32 = 25_000;

impl Client {
    /// A client of the server at `tracking_uri` (`http://host:port[/prefix]`).
    pub(super) fn new(tracking_uri: &str, timeout: Duration) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(5))))
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            base: format!("{}/api/2.0/mlflow", tracking_uri.trim_end_matches('/')),
            agent,
        }
    }

    /// The full URL of `path`.
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        let answer = self
            .agent
            .post(&self.url(path))
            .header("Content-Type", "application/json")
            .send(body.to_string());
        answer_of(answer)
    }

    fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, Failure> {
        let mut request = self.agent.get(&self.url(path));
        for (k, v) in query {
            request = request.query(k, v);
        }
        answer_of(request.call())
    }

    /// The id of the experiment named `name`, created if there is none.
    pub(super) fn experiment_id(&self, name: &str) -> Result<String, Failure> {
        for _ in 0..2 {
            match self.get("experiments/get-by-name", &[("experiment_name", name)]) {
                Ok(v) => {
                    if let Some(id) = v
                        .pointer("/experiment/experiment_id")
                        .and_then(Value::as_str)
                    {
                        return Ok(id.to_owned());
                    }
                    return Err(Failure::Refused(format!("no experiment id in {v}")));
                }
                Err(Failure::Refused(r)) if r.contains("RESOURCE_DOES_NOT_EXIST") => {}
                Err(other) => return Err(other),
            }
            match self.post("experiments/create", &json!({ "name": name })) {
                Ok(v) => {
                    if let Some(id) = v.get("experiment_id").and_then(Value::as_str) {
                        return Ok(id.to_owned());
                    }
                    return Err(Failure::Refused(format!("no experiment id in {v}")));
                }
                // Created by someone else meanwhile: look it up again.
                Err(Failure::Refused(r)) if r.contains("RESOURCE_ALREADY_EXISTS") => {}
                Err(other) => return Err(other),
            }
        }
        Err(Failure::Refused(format!(
            "experiment {name:?} neither found nor created"
        )))
    }

    /// Creates a run; returns its id.
    pub(super) fn create_run(
        &self,
        experiment_id: &str,
        run_name: &str,
        start_ms: i64,
        tags: &[(String, String)],
    ) -> Result<String, Failure> {
        let tags: Vec<Value> = tags
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect();
        let v = self.post(
            "runs/create",
            &json!({
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": start_ms,
                "tags": tags,
            }),
        )?;
        v.pointer("/run/info/run_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Failure::Refused(format!("no run id in {v}")))
    }

    /// Sends one chunk to `run_id`: a log-batch, or a run update.
    pub(super) fn send(&self, run_id: &str, chunk: &Chunk) -> Result<(), Failure> {
        if let Some(update) = &chunk.status {
            let mut body = json!({ "run_id": run_id, "status": update.status });
            if let Some(end) = update.end_time {
                body["end_time"] = end.into();
            }
            return self.post("runs/update", &body).map(|_| ());
        }
        let metrics: Vec<Value> = chunk.metrics.iter().map(Metric::to_json).collect();
        let params: Vec<Value> = chunk
            .params
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect();
        let tags: Vec<Value> = chunk
            .tags
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect();
        self.post(
            "runs/log-batch",
            &json!({ "run_id": run_id, "metrics": metrics, "params": params, "tags": tags }),
        )
        .map(|_| ())
    }

    /// Every value the server holds for metric `key` of `run_id`.
    pub(super) fn history(&self, run_id: &str, key: &str) -> Result<Vec<Metric>, Failure> {
        let mut out = Vec::new();
        let mut token = String::new();
        let page = HISTORY_PAGE.to_string();
        loop {
            let mut query = vec![
                ("run_id", run_id),
                ("metric_key", key),
                ("max_results", page.as_str()),
            ];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let v = self.get("metrics/get-history", &query)?;
            for m in v
                .get("metrics")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice)
            {
                if let Some(m) = Metric::from_json(m) {
                    out.push(m);
                }
            }
            match v.get("next_page_token").and_then(Value::as_str) {
                Some(next) if !next.is_empty() => token = next.to_owned(),
                _ => return Ok(out),
            }
        }
    }
}

/// The answer's JSON body, or the failure it means.
fn answer_of(
    answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Value, Failure> {
    let mut response = answer.map_err(classify)?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| Failure::Unknown(format!("HTTP {status}, reading the answer: {e}")))?;
    match status {
        200..=299 => Ok(serde_json::from_str(&text).unwrap_or(Value::Null)),
        429 => Err(Failure::NotSent(format!("HTTP 429: {}", short(&text)))),
        400..=499 => Err(Failure::Refused(format!("HTTP {status}: {}", short(&text)))),
        _ => Err(Failure::Unknown(format!("HTTP {status}: {}", short(&text)))),
    }
}

/// What a transport error says about the request.
fn classify(error: ureq::Error) -> Failure {
    use ureq::{Error, Timeout};
    let text = error.to_string();
    match error {
        Error::HostNotFound
        | Error::ConnectionFailed
        | Error::BadUri(_)
        | Error::Timeout(Timeout::Resolve | Timeout::Connect) => Failure::NotSent(text),
        Error::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::NotFound
            ) =>
        {
            Failure::NotSent(text)
        }
        _ => Failure::Unknown(text),
    }
}

/// At most 300 characters of a server's answer, for an error message.
fn short(text: &str) -> String {
    let mut s: String = text.chars().take(300).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}
