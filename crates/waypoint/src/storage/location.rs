//! Locations: a checkpoint directory given as a local path or as an object-store URL
//! (`s3://bucket/prefix`, `gs://…`, `az://…`), opened as a [`SharedStorage`] whose root is that
//! directory. Everything that accepts a checkpoint directory (ModelCheckpoint's dirpath,
//! AutoResume's directories, the CLI) goes through [`open_location`].
//!
//! It owns parsing the location (scheme, bucket, prefix, checked before anything is opened) and
//! choosing the backend. It must not implement a backend: local directories are `local.rs`'s,
//! object stores `object`'s (behind a cargo feature; without it an object-store URL is refused
//! with a message, never taken for a local path).

use super::{SharedStorage, StoragePath, local_storage};
use crate::error::{Error, Result};
use std::path::Path;

/// An object-store URL split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUrl {
    /// The scheme (`s3`, `gs`, `az`, …), lower case.
    pub scheme: String,
    /// The bucket or container (the URL's authority).
    pub bucket: String,
    /// The key prefix (the URL's path, without leading or trailing `/`).
    pub prefix: String,
}

impl ObjectUrl {
    /// Parses `scheme://bucket/prefix`; `None` for anything without `://` (a local path).
    /// Malformed URLs (no bucket, `..` in the prefix) are errors naming the location.
    ///
    /// ```
    /// use waypoint::storage::ObjectUrl;
    /// let url = ObjectUrl::parse("s3://bucket/runs/a").unwrap().unwrap();
    /// assert_eq!((url.scheme.as_str(), url.bucket.as_str(), url.prefix.as_str()), ("s3", "bucket", "runs/a"));
    /// assert_eq!(ObjectUrl::parse("/local/dir").unwrap(), None);
    /// ```
    pub fn parse(location: &str) -> Result<Option<ObjectUrl>> {
        let Some((scheme, rest)) = location.split_once("://") else {
            return Ok(None);
        };
        let invalid = |reason: &str| Error::InvalidArgument {
            name: "location",
            reason: format!("{location}: {reason}"),
        };
        if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid("not a URL of the form scheme://bucket/prefix"));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("the URL names no bucket"));
        }
        let prefix = prefix.trim_end_matches('/');
        StoragePath::new(prefix).map_err(|e| invalid(&format!("bad prefix: {e}")))?;
        Ok(Some(ObjectUrl {
            scheme: scheme.to_ascii_lowercase(),
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        }))
    }

    /// The URL again, normalised (`scheme://bucket/prefix`).
    pub fn to_url(&self) -> String {
        if self.prefix.is_empty() {
            format!("{}://{}", self.scheme, self.bucket)
        } else {
            format!("{}://{}/{}", self.scheme, self.bucket, self.prefix)
        }
    }
}

/// Whether `location` is an object-store URL rather than a local path.
pub fn is_url(location: &str) -> bool {
    location.contains("://")
}

/// Opens the checkpoint directory `location` as a storage whose root is that directory: a local
/// path (created if missing), `file:///path`, or an object-store URL configured from the standard
/// environment variables (see docs/OBJECT_STORAGE.md). URLs need the `s3`, `gcs` or `azure`
/// feature; without it they are refused with a message saying which one.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let storage = waypoint::storage::open_location(dir.path().to_str().unwrap()).unwrap();
/// assert!(storage.list(&waypoint::storage::StoragePath::root()).unwrap().is_empty());
/// ```
pub fn open_location(location: &str) -> Result<SharedStorage> {
    let Some(url) = ObjectUrl::parse(location)? else {
        return local_storage(Path::new(location));
    };
    if url.scheme == "file" {
        return local_storage(Path::new(&format!("/{}", url.prefix)));
    }
    open_object_url(&url)
}

/// Opens the checkpoint directory `dir` given as a path: local, or an object-store URL carried in
/// a `PathBuf` (`Path::new("s3://bucket/x")`), as run directories are.
pub fn open_dir(dir: &Path) -> Result<SharedStorage> {
    match dir.to_str() {
        Some(text) if is_url(text) => open_location(text),
        _ => local_storage(dir),
    }
}

#[cfg(feature = "object-store")]
fn open_object_url(url: &ObjectUrl) -> Result<SharedStorage> {
    let storage = super::object::open_url(&url.to_url(), &url.scheme, &url.bucket, &url.prefix)?;
    Ok(std::sync::Arc::new(storage))
}

#[cfg(not(feature = "object-store"))]
fn open_object_url(url: &ObjectUrl) -> Result<SharedStorage> {
    Err(Error::InvalidArgument {
        name: "location",
        reason: format!(
            "{}: object-store URLs need waypoint built with the `s3`, `gcs` or `azure` feature",
            url.to_url()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(scheme, bucket, prefix)`, `None` for a local path, `Err` for a malformed URL.
    type Parsed = Result<Option<(&'static str, &'static str, &'static str)>, ()>;

    #[test]
    fn parse_table() {
        let table: [(&str, Parsed); 9] = [
            ("s3://b/p/q", Ok(Some(("s3", "b", "p/q")))),
            ("S3://b", Ok(Some(("s3", "b", "")))),
            ("s3://b/p/", Ok(Some(("s3", "b", "p")))),
            ("gs://bucket/a=1/b", Ok(Some(("gs", "bucket", "a=1/b")))),
            ("/local/path", Ok(None)),
            ("relative/dir", Ok(None)),
            ("s3:///p", Err(())),
            ("s3://b/../x", Err(())),
            ("s+3://b/x", Err(())),
        ];
        for (location, expected) in table {
            let got = ObjectUrl::parse(location);
            match (got, expected) {
                (Ok(got), Ok(expected)) => assert_eq!(
                    got.map(|u| (u.scheme, u.bucket, u.prefix)),
                    expected.map(|(s, b, p)| (s.to_owned(), b.to_owned(), p.to_owned())),
                    "{location}"
                ),
                (Err(e), Err(())) => assert!(e.to_string().contains(location), "{e}"),
                (got, _) => panic!("{location}: unexpected {got:?}"),
            }
        }
        assert_eq!(
            ObjectUrl::parse("s3://b/p/").unwrap().unwrap().to_url(),
            "s3://b/p"
        );
    }

    #[test]
    fn unknown_scheme_is_refused_with_the_location() {
        let err = open_location("ftp://host/dir").unwrap_err();
        assert!(err.to_string().contains("ftp://host/dir"), "{err}");
    }
}
