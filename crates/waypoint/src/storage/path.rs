//! `StoragePath`: a validated relative path inside a storage root. A value of this type can never
//! name anything outside the root: no absolute paths, no `..`, no empty or `.` components, no NUL,
//! no backslashes.

use crate::error::{Error, Result};
use std::fmt;

/// A relative, `/`-separated path inside a storage root. The empty path is the root itself.
///
/// ```
/// use waypoint::storage::StoragePath;
/// let p = StoragePath::new("ckpt/weights/metadata.json").unwrap();
/// assert_eq!(p.file_name(), Some("metadata.json"));
/// assert_eq!(p.parent().unwrap().as_str(), "ckpt/weights");
/// assert!(StoragePath::new("../x").is_err());
/// assert!(StoragePath::new("/etc/passwd").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct StoragePath(String);

impl StoragePath {
    /// The root of the storage.
    pub fn root() -> Self {
        StoragePath(String::new())
    }

    /// Validates `path`. Trailing slashes are not allowed; the empty string is the root.
    pub fn new(path: &str) -> Result<Self> {
        let refuse = |reason| {
            Err(Error::UnsafePath {
                path: path.to_owned(),
                reason,
            })
        };
        if path.is_empty() {
            return Ok(Self::root());
        }
        if path.starts_with('/') {
            return refuse("absolute paths are not allowed");
        }
        if path.contains('\\') || path.contains('\0') {
            return refuse("backslashes and NUL are not allowed");
        }
        for component in path.split('/') {
            match component {
                "" => return refuse("empty path components are not allowed"),
                "." | ".." => return refuse("`.` and `..` are not allowed"),
                _ => {}
            }
        }
        Ok(StoragePath(path.to_owned()))
    }

    /// Appends one or more components (validated the same way).
    pub fn join(&self, rest: &str) -> Result<Self> {
        let rest = StoragePath::new(rest)?;
        Ok(match (self.0.is_empty(), rest.0.is_empty()) {
            (true, _) => rest,
            (_, true) => self.clone(),
            _ => StoragePath(format!("{}/{}", self.0, rest.0)),
        })
    }

    /// The path as a string (empty for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The last component, or `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        if self.0.is_empty() {
            None
        } else {
            self.0.rsplit('/').next()
        }
    }

    /// The parent, or `None` for the root.
    pub fn parent(&self) -> Option<StoragePath> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => StoragePath(self.0[..i].to_owned()),
            None => StoragePath::root(),
        })
    }

    /// The components, root first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }
}

impl fmt::Display for StoragePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_table() {
        let table = [
            ("", true),
            ("a", true),
            ("a/b.c/d", true),
            ("名前/ü", true),
            ("..a/b..", true),
            ("/a", false),
            ("a/", false),
            ("a//b", false),
            ("./a", false),
            ("a/../b", false),
            ("..", false),
            ("a\\b", false),
            ("a\0b", false),
        ];
        for (p, ok) in table {
            assert_eq!(StoragePath::new(p).is_ok(), ok, "{p:?}");
        }
    }

    #[test]
    fn join_parent_and_name() {
        let root = StoragePath::root();
        let a = root.join("a").unwrap();
        let ab = a.join("b/c").unwrap();
        assert_eq!(ab.as_str(), "a/b/c");
        assert_eq!(ab.parent().unwrap().as_str(), "a/b");
        assert_eq!(a.parent().unwrap(), root);
        assert_eq!(root.parent(), None);
        assert_eq!(ab.components().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(a.join("../x").is_err());
    }
}
