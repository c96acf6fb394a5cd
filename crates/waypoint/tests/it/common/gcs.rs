//! The GCS test peer: a real Google Cloud Storage bucket, named by `WAYPOINT_TEST_GCS_URL`
//! (`gs://bucket/prefix`), with the `GOOGLE_*` credentials object_store's builder reads. The GCS
//! tests are `#[ignore]`d: object_store speaks GCS's XML API (plain and multipart PUT, XML
//! listings, `x-goog-if-generation-match`), which neither emulator on PyPI serves (fake-gcs-server
//! has no XML PUT nor XML multipart upload; gcp-storage-emulator has no HEAD, XML listing, XML
//! DELETE, multipart upload nor preconditions; docs/OBJECT_STORAGE.md). Run them with
//! `cargo test -p waypoint --all-features --test it gcs -- --ignored` against a real bucket.

use waypoint::storage::{SharedStorage, open_location};

/// `WAYPOINT_TEST_GCS_URL`, or a failure saying how to set it.
pub fn url() -> String {
    match std::env::var("WAYPOINT_TEST_GCS_URL") {
        Ok(url) if url.starts_with("gs://") => url.trim_end_matches('/').to_owned(),
        _ => panic!(
            "WAYPOINT_TEST_GCS_URL is not set to gs://bucket/prefix: the GCS tests need a real \
             bucket and the GOOGLE_* credentials object_store reads (GOOGLE_SERVICE_ACCOUNT, \
             GOOGLE_APPLICATION_CREDENTIALS, …); see docs/OBJECT_STORAGE.md"
        ),
    }
}

/// A fresh storage under a unique prefix of the bucket.
pub fn storage(name: &str) -> SharedStorage {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let at = format!("{}/{name}-{}-{nanos}", url(), std::process::id());
    open_location(&at).unwrap()
}
