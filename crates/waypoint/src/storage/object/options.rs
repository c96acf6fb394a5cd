//! How an [`super::ObjectStorage`] is configured: part size, upload concurrency, retries (from
//! `WAYPOINT_OBJECT_*` variables), and the cloud stores built from a URL and the clouds' standard
//! environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`, read by object_store's builders).
//!
//! It must not make requests itself, nor retry anything by hand: retries are object_store's,
//! configured here, and every knob is checked (`validate`) before a store is built. Credentials are
//! never read here: the builders read the clouds' variables themselves.

use super::{MIN_PART_SIZE, ObjectStorage};
use crate::error::{Error, Result};
use std::time::Duration;

/// Tuning of an [`ObjectStorage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStorageOptions {
    /// Size of every part of a multipart upload but the last, at least [`MIN_PART_SIZE`]; files
    /// no larger than one part are put whole (`WAYPOINT_OBJECT_PART_SIZE`, bytes, default 16 MiB).
    pub part_size: u64,
    /// Most part uploads in flight at once across the storage; their copies are the memory an
    /// upload holds: `part_size × max_concurrent_parts` (`WAYPOINT_OBJECT_CONCURRENCY`, default 8).
    pub max_concurrent_parts: usize,
    /// Threads of the storage's own tokio runtime (default 4).
    pub runtime_threads: usize,
    /// Retries of a failed request, with exponential backoff (`WAYPOINT_OBJECT_MAX_RETRIES`,
    /// default 10).
    pub max_retries: usize,
    /// How long a request keeps being retried (`WAYPOINT_OBJECT_RETRY_TIMEOUT_SECS`, default 180).
    pub retry_timeout: Duration,
}

impl Default for ObjectStorageOptions {
    fn default() -> Self {
        ObjectStorageOptions {
            part_size: 16 * 1024 * 1024,
            max_concurrent_parts: 8,
            runtime_threads: 4,
            max_retries: 10,
            retry_timeout: Duration::from_secs(180),
        }
    }
}

/// The `WAYPOINT_OBJECT_*` variables and the option each sets.
const VARIABLES: [&str; 4] = [
    "WAYPOINT_OBJECT_PART_SIZE",
    "WAYPOINT_OBJECT_CONCURRENCY",
    "WAYPOINT_OBJECT_MAX_RETRIES",
    "WAYPOINT_OBJECT_RETRY_TIMEOUT_SECS",
];

impl ObjectStorageOptions {
    /// The defaults, overridden by the `WAYPOINT_OBJECT_*` environment variables.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The defaults, overridden by the variables `var` returns.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut options = Self::default();
        for name in VARIABLES {
            let Some(value) = var(name) else { continue };
            let number: u64 = value.trim().parse().map_err(|_| Error::InvalidArgument {
                name: "environment variable",
                reason: format!("{name}={value:?} is not a whole number"),
            })?;
            let count = usize::try_from(number).unwrap_or(usize::MAX);
            match name {
                "WAYPOINT_OBJECT_PART_SIZE" => options.part_size = number,
                "WAYPOINT_OBJECT_CONCURRENCY" => options.max_concurrent_parts = count,
                "WAYPOINT_OBJECT_MAX_RETRIES" => options.max_retries = count,
                _ => options.retry_timeout = Duration::from_secs(number),
            }
        }
        options.validate()?;
        Ok(options)
    }

    /// Refuses values that cannot work.
    pub(super) fn validate(&self) -> Result<()> {
        let refuse = |reason: String| {
            Err(Error::InvalidArgument {
                name: "object storage options",
                reason,
            })
        };
        if self.part_size < MIN_PART_SIZE {
            return refuse(format!(
                "part size {} is below the {MIN_PART_SIZE} bytes object stores require (WAYPOINT_OBJECT_PART_SIZE)",
                self.part_size
            ));
        }
        if self.max_concurrent_parts == 0 || self.runtime_threads == 0 {
            return refuse(
                "WAYPOINT_OBJECT_CONCURRENCY and the runtime threads must be at least 1".into(),
            );
        }
        Ok(())
    }

    #[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
    fn retry(&self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
            ..object_store::RetryConfig::default()
        }
    }
}

/// Opens the object storage at `url` (`scheme://bucket/prefix`), configured from the environment.
/// `bucket` is the URL's authority and `prefix` its path, already split and checked by the caller.
pub(crate) fn open_url(
    url: &str,
    scheme: &str,
    bucket: &str,
    prefix: &str,
) -> Result<ObjectStorage> {
    let options = ObjectStorageOptions::from_env()?;
    let configure = |e: object_store::Error| Error::ObjectStore {
        op: "configure",
        url: url.to_owned(),
        reason: super::with_root_cause(&e),
    };
    let _ = (&configure, bucket);
    let store: Result<std::sync::Arc<dyn super::ObjectBackend>> = match scheme {
        #[cfg(feature = "s3")]
        "s3" | "s3a" => {
            use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
            Ok(std::sync::Arc::new(
                AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    // The commit record's create-only put needs conditional puts switched on.
                    .with_conditional_put(S3ConditionalPut::ETagMatch)
                    .with_retry(options.retry())
                    .build()
                    .map_err(configure)?,
            ))
        }
        #[cfg(feature = "gcs")]
        "gs" => Ok(std::sync::Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(options.retry())
                .build()
                .map_err(configure)?,
        )),
        #[cfg(feature = "azure")]
        "az" | "azure" | "abfs" | "abfss" => Ok(std::sync::Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .with_retry(options.retry())
                .build()
                .map_err(configure)?,
        )),
        _ => Err(Error::InvalidArgument {
            name: "location",
            reason: format!(
                "{url}: the {scheme}:// scheme is not supported by this build (s3:// needs the `s3` feature, gs:// `gcs`, az:// `azure`)"
            ),
        }),
    };
    ObjectStorage::new(store?, url, prefix, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// `(part size, concurrency, retries, retry timeout in seconds)`, `None` for an error.
    type Expected = Option<(u64, usize, usize, u64)>;

    #[test]
    fn env_table() {
        let mib = 1024 * 1024;
        let table: [(&[(&str, &str)], Expected); 5] = [
            (&[], Some((16 * mib, 8, 10, 180))),
            (
                &[
                    ("WAYPOINT_OBJECT_PART_SIZE", "5242880"),
                    ("WAYPOINT_OBJECT_CONCURRENCY", "2"),
                    ("WAYPOINT_OBJECT_MAX_RETRIES", "0"),
                    ("WAYPOINT_OBJECT_RETRY_TIMEOUT_SECS", " 3 "),
                ],
                Some((5 * mib, 2, 0, 3)),
            ),
            (&[("WAYPOINT_OBJECT_PART_SIZE", "1024")], None),
            (&[("WAYPOINT_OBJECT_CONCURRENCY", "0")], None),
            (&[("WAYPOINT_OBJECT_MAX_RETRIES", "many")], None),
        ];
        for (vars, expected) in table {
            let vars: HashMap<&str, &str> = vars.iter().copied().collect();
            let got = ObjectStorageOptions::from_vars(|n| vars.get(n).map(|v| v.to_string()));
            match (got, expected) {
                (Ok(o), Some((part, conc, retries, timeout))) => assert_eq!(
                    (
                        o.part_size,
                        o.max_concurrent_parts,
                        o.max_retries,
                        o.retry_timeout.as_secs()
                    ),
                    (part, conc, retries, timeout),
                    "{vars:?}"
                ),
                (Err(e), None) => assert!(
                    vars.keys().any(|k| e.to_string().contains(k)),
                    "the error names the variable: {e}"
                ),
                (got, expected) => panic!("{vars:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}
