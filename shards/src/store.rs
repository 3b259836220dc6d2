//! Opening an object store from a user-supplied location.
//!
//! Every place the project reads or writes (image stores, shard outputs, teacher files) is named by one
//! string: a local path, or a URL with a scheme `object_store` knows (`file://`, `s3://`, `gs://`,
//! `az://`, `memory://`). Credentials and endpoints for cloud stores come from the usual environment
//! variables (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_ALLOW_HTTP`, ...), read by `object_store` itself.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

/// A store plus the prefix inside it that a location names.
#[derive(Clone)]
pub struct Location {
    /// The store the location lives in.
    pub store: Arc<dyn ObjectStore>,
    /// The prefix inside `store` (may be empty: the store's root).
    pub prefix: Path,
    /// The location as the user wrote it, for messages.
    pub display: String,
    /// The directory holding `prefix` when the store is the local file system. The janitor needs it:
    /// local puts stage their bytes in a `<name>#<n>` file next to the target, which `list` never shows,
    /// and a process killed mid-put leaves that file behind.
    pub local_dir: Option<PathBuf>,
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Location").field("display", &self.display).field("prefix", &self.prefix).finish()
    }
}

impl Location {
    /// Wrap an existing store (tests, fault injection) under a prefix.
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str, display: &str) -> Self {
        Self { store, prefix: Path::from(prefix), display: display.to_owned(), local_dir: None }
    }

    /// The path of `relative` (slash-separated) under this location's prefix.
    pub fn child(&self, relative: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        path
    }

    /// The part of `path` after this location's prefix, slash-separated.
    pub fn relative(&self, path: &Path) -> Option<String> {
        path.prefix_match(&self.prefix).map(|parts| parts.map(|p| p.as_ref().to_owned()).collect::<Vec<_>>().join("/"))
    }

    /// A URL-ish name of `path` for provenance and messages.
    pub fn uri_of(&self, path: &Path) -> String {
        match self.relative(path) {
            Some(rel) if !rel.is_empty() => format!("{}/{}", self.display.trim_end_matches('/'), rel),
            _ => format!("{}", path),
        }
    }
}

/// Why a location could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("location {location:?} is not a valid URL or path: {reason}")]
    Invalid { location: String, reason: String },
    #[error("cannot open local directory {location:?}")]
    Local {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("cannot open object store for {location:?}")]
    Store {
        location: String,
        #[source]
        source: object_store::Error,
    },
}

/// Resolve `location` against `base_dir` unless it is a URL or an absolute path, so config files can name
/// stores relative to themselves and work from any working directory.
pub fn resolve_location(location: &str, base_dir: &std::path::Path) -> String {
    if location.contains("://") || std::path::Path::new(location).is_absolute() {
        location.to_owned()
    } else {
        base_dir.join(location).to_string_lossy().into_owned()
    }
}

/// Open `location`: a local path (created if missing) or a URL.
///
/// Local paths are opened with fsync on, so a committed shard survives a machine crash.
pub fn open(location: &str) -> Result<Location, OpenError> {
    let looks_like_url = location.contains("://");
    if !looks_like_url || location.starts_with("file://") {
        let path_str = location.strip_prefix("file://").unwrap_or(location);
        let dir = std::path::Path::new(path_str);
        std::fs::create_dir_all(dir).map_err(|e| OpenError::Invalid {
            location: location.to_owned(),
            reason: format!("cannot create directory: {e}"),
        })?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|source| OpenError::Local { location: location.to_owned(), source })?
            .with_fsync(true);
        return Ok(Location {
            store: Arc::new(store),
            prefix: Path::default(),
            display: location.to_owned(),
            local_dir: Some(dir.to_owned()),
        });
    }
    let url = Url::parse(location)
        .map_err(|e| OpenError::Invalid { location: location.to_owned(), reason: e.to_string() })?;
    let (store, prefix) = object_store::parse_url_opts(&url, std::env::vars())
        .map_err(|source| OpenError::Store { location: location.to_owned(), source })?;
    Ok(Location {
        store: Arc::from(store),
        prefix,
        display: location.trim_end_matches('/').to_owned(),
        local_dir: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_path_is_created_and_children_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b");
        let loc = open(target.to_str().unwrap()).unwrap();
        assert!(target.is_dir());
        assert_eq!(loc.local_dir.as_deref(), Some(target.as_path()));
        assert_eq!(loc.child("x/y.jpg").as_ref(), "x/y.jpg");
    }

    #[test]
    fn memory_url_keeps_prefix() {
        let loc = open("memory:///some/prefix").unwrap();
        assert_eq!(loc.prefix.as_ref(), "some/prefix");
        let child = loc.child("k/1.png");
        assert_eq!(child.as_ref(), "some/prefix/k/1.png");
        assert_eq!(loc.relative(&child).unwrap(), "k/1.png");
    }

    #[test]
    fn bad_url_names_the_location() {
        let err = open("nosuchscheme://x/y").unwrap_err().to_string();
        assert!(err.contains("nosuchscheme://x/y"), "{err}");
    }
}
