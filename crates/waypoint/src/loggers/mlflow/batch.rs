//! What the MLflow logger sends, cut into requests the server accepts: [`Chunk`]s within
//! log-batch's limits (1000 metrics, 100 params, 100 tags, 1000 entities and about 1 MB per
//! request), and the name and length rules the server would otherwise refuse a whole batch for.
//! Pure: no I/O.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Metrics per log-batch request, at most.
pub(super) const MAX_METRICS: usize = 1000;
/// Params per request, at most.
pub(super) const MAX_PARAMS: usize = 100;
/// Tags per request, at most.
pub(super) const MAX_TAGS: usize = 100;
/// Entities (metrics + params + tags) per request, at most.
pub(super) const MAX_ENTITIES: usize = 1000;
/// Bytes of a request's JSON body we aim below (the server's limit is 1 MB).
pub(super) const MAX_BYTES: usize = 900_000;
/// The longest metric, param or tag key the server takes.
pub(super) const MAX_KEY_LEN: usize = 250;
/// The longest param value the server takes.
pub(super) const MAX_PARAM_VALUE_LEN: usize = 6000;
/// The longest tag value the server takes.
pub(super) const MAX_TAG_VALUE_LEN: usize = 8000;

/// One metric value, as MLflow stores it: milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Metric {
    pub key: String,
    #[serde(with = "float_json")]
    pub value: f64,
    pub timestamp: i64,
    pub step: i64,
}

impl Metric {
    /// The REST API's form: non-finite values as the strings protobuf's JSON mapping uses.
    pub(super) fn to_json(&self) -> Value {
        json!({
            "key": self.key,
            "value": float_json::to_value(self.value),
            "timestamp": self.timestamp,
            "step": self.step,
        })
    }

    /// A metric of a `get-history` answer.
    pub(super) fn from_json(v: &Value) -> Option<Metric> {
        let int = |k: &str| {
            let f = v.get(k)?;
            f.as_i64().or_else(|| f.as_str()?.parse().ok())
        };
        Some(Metric {
            key: v.get("key")?.as_str()?.to_owned(),
            value: float_json::from_value(v.get("value")?)?,
            timestamp: int("timestamp").unwrap_or(0),
            step: int("step").unwrap_or(0),
        })
    }

    /// Whether `other` is the same logged value (NaN equal to NaN).
    pub(super) fn same(&self, other: &Metric) -> bool {
        self.key == other.key
            && self.step == other.step
            && self.timestamp == other.timestamp
            && (self.value.to_bits() == other.value.to_bits()
                || self.value == other.value
                || (self.value.is_nan() && other.value.is_nan()))
    }

    fn size(&self) -> usize {
        self.key.len() + 80
    }
}

/// A run update: the status and, for an end, the end time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct StatusUpdate {
    pub status: String,
    pub end_time: Option<i64>,
}

/// One request: a log-batch (metrics, params, tags) or a run update (`status`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub(super) struct Chunk {
    /// The run it belongs to; `None` until the run is created (the current run then).
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metric>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusUpdate>,
}

impl Chunk {
    /// Whether it carries nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.metrics.is_empty()
            && self.params.is_empty()
            && self.tags.is_empty()
            && self.status.is_none()
    }

    fn entities(&self) -> usize {
        self.metrics.len() + self.params.len() + self.tags.len()
    }
}

/// Cuts params, tags and metrics (in this order) into log-batch requests within the limits.
pub(super) fn chunks(
    run_id: Option<&str>,
    params: Vec<(String, String)>,
    tags: Vec<(String, String)>,
    metrics: Vec<Metric>,
) -> Vec<Chunk> {
    let mut out = Vec::new();
    let mut current = Chunk {
        run_id: run_id.map(str::to_owned),
        ..Chunk::default()
    };
    let mut bytes = 0usize;
    let close = |current: &mut Chunk, bytes: &mut usize, out: &mut Vec<Chunk>| {
        if !current.is_empty() {
            let next = Chunk {
                run_id: current.run_id.clone(),
                ..Chunk::default()
            };
            out.push(std::mem::replace(current, next));
        }
        *bytes = 0;
    };
    for (k, v) in params {
        let size = k.len() + v.len() + 30;
        if current.params.len() == MAX_PARAMS
            || current.entities() == MAX_ENTITIES
            || bytes + size > MAX_BYTES
        {
            close(&mut current, &mut bytes, &mut out);
        }
        bytes += size;
        current.params.push((k, v));
    }
    for (k, v) in tags {
        let size = k.len() + v.len() + 30;
        if current.tags.len() == MAX_TAGS
            || current.entities() == MAX_ENTITIES
            || bytes + size > MAX_BYTES
        {
            close(&mut current, &mut bytes, &mut out);
        }
        bytes += size;
        current.tags.push((k, v));
    }
    for m in metrics {
        let size = m.size();
        if current.metrics.len() == MAX_METRICS
            || current.entities() == MAX_ENTITIES
            || bytes + size > MAX_BYTES
        {
            close(&mut current, &mut bytes, &mut out);
        }
        bytes += size;
        current.metrics.push(m);
    }
    close(&mut current, &mut bytes, &mut out);
    out
}

/// Why the server would refuse `key` as a metric, param or tag name (MLflow's rule: letters,
/// digits, `_ - . : /` and spaces; not empty, not absolute, no `..` component, at most 250
/// characters), or `None` when it takes it.
pub(super) fn bad_key(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("is empty".into());
    }
    if key.chars().count() > MAX_KEY_LEN {
        return Some(format!("is longer than {MAX_KEY_LEN} characters"));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | ':' | '/')))
    {
        return Some(format!(
            "holds {c:?}: MLflow takes letters, digits, '_', '-', '.', ':', '/' and spaces"
        ));
    }
    if key.starts_with('/') || key.split('/').any(|part| part == "..") {
        return Some("is an absolute path or has a '..' component".into());
    }
    None
}

/// Floats as protobuf's JSON mapping writes them: numbers, or `"NaN"`, `"Infinity"`,
/// `"-Infinity"` (JSON has no non-finite numbers).
mod float_json {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    pub(super) fn to_value(v: f64) -> Value {
        if v.is_nan() {
            "NaN".into()
        } else if v.is_infinite() {
            if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
        } else {
            v.into()
        }
    }

    pub(super) fn from_value(v: &Value) -> Option<f64> {
        match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => match s.as_str() {
                "NaN" => Some(f64::NAN),
                "Infinity" => Some(f64::INFINITY),
                "-Infinity" => Some(f64::NEG_INFINITY),
                other => other.parse().ok(),
            },
            _ => None,
        }
    }

    pub(super) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&to_value(*v), s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let v = Value::deserialize(d)?;
        from_value(&v).ok_or_else(|| serde::de::Error::custom(format!("not a float: {v}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(i: usize) -> Metric {
        Metric {
            key: format!("m{}", i % 7),
            value: i as f64,
            timestamp: 1000 + i as i64,
            step: i as i64,
        }
    }

    fn kv(prefix: &str, n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("{prefix}{i}"), "v".into()))
            .collect()
    }

    #[test]
    fn chunks_respect_every_limit_and_keep_the_order() {
        // (params, tags, metrics) → the (params, tags, metrics) of each request.
        type Shape = (usize, usize, usize);
        let table: &[(Shape, &[Shape])] = &[
            ((0, 0, 0), &[]),
            ((1, 1, 1), &[(1, 1, 1)]),
            ((0, 0, 1000), &[(0, 0, 1000)]),
            ((0, 0, 1001), &[(0, 0, 1000), (0, 0, 1)]),
            ((101, 0, 0), &[(100, 0, 0), (1, 0, 0)]),
            ((0, 250, 0), &[(0, 100, 0), (0, 100, 0), (0, 50, 0)]),
            ((100, 100, 900), &[(100, 100, 800), (0, 0, 100)]),
            ((0, 0, 2500), &[(0, 0, 1000), (0, 0, 1000), (0, 0, 500)]),
        ];
        for ((p, t, m), want) in table {
            let metrics: Vec<Metric> = (0..*m).map(metric).collect();
            let got = chunks(Some("r"), kv("p", *p), kv("t", *t), metrics.clone());
            let shape: Vec<(usize, usize, usize)> = got
                .iter()
                .map(|c| (c.params.len(), c.tags.len(), c.metrics.len()))
                .collect();
            assert_eq!(&shape, want, "for {p} params, {t} tags, {m} metrics");
            let again: Vec<Metric> = got.iter().flat_map(|c| c.metrics.clone()).collect();
            assert_eq!(again, metrics);
            assert!(got.iter().all(|c| c.run_id.as_deref() == Some("r")));
        }
    }

    #[test]
    fn chunks_stay_under_a_megabyte() {
        let long = "x".repeat(MAX_PARAM_VALUE_LEN);
        let params: Vec<(String, String)> =
            (0..300).map(|i| (format!("p{i}"), long.clone())).collect();
        let got = chunks(None, params, Vec::new(), Vec::new());
        assert!(got.len() >= 3);
        for c in &got {
            let bytes: usize = c.params.iter().map(|(k, v)| k.len() + v.len() + 30).sum();
            assert!(bytes <= MAX_BYTES && c.params.len() <= MAX_PARAMS);
        }
    }

    #[test]
    fn key_rules() {
        let table: &[(&str, bool)] = &[
            ("train_loss", true),
            ("checkpoint/blocked_ms", true),
            ("val loss:top-1.x", true),
            ("", false),
            ("/abs", false),
            ("a/../b", false),
            ("loss@step", false),
            ("naïve", true),
        ];
        for (key, ok) in table {
            assert_eq!(bad_key(key).is_none(), *ok, "{key:?}: {:?}", bad_key(key));
        }
        assert!(bad_key(&"k".repeat(251)).is_some());
    }

    #[test]
    fn non_finite_values_round_trip_through_json() {
        for v in [1.5, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300] {
            let m = Metric {
                key: "k".into(),
                value: v,
                timestamp: 1,
                step: 2,
            };
            let back = Metric::from_json(&m.to_json()).unwrap();
            assert!(m.same(&back), "{v}");
            let line = serde_json::to_string(&m).unwrap();
            let back: Metric = serde_json::from_str(&line).unwrap();
            assert!(m.same(&back), "{v} through {line}");
        }
    }
}
