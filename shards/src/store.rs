//! Opening an object store from a user-supplied location, and naming objects in it by key.
//!
//! Every place the project reads or writes (image stores, shard outputs, teacher files) is named by one
//! string: a local path, or a URL with a scheme `object_store` knows (`file://`, `s3://`, `gs://`,
//! `az://`, `memory://`, `http(s)://`).
//!
//! **Store settings** come from the environment, but only from variables whose names start with one of
//! [`STORE_ENV_PREFIXES`] (`AWS_`, `GOOGLE_`, `AZURE_`: the names each cloud documents, e.g.
//! `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`,
//! `AZURE_STORAGE_ACCOUNT_NAME`) or with the project's own [`PROJECT_STORE_PREFIX`] (`MUST_STORE_`,
//! stripped before the rest is handed over: `MUST_STORE_TIMEOUT=60s`, or `MUST_STORE_ALLOW_HTTP=true` for
//! an `http://` store, whose options have no prefix of their own). `object_store` also accepts bare names
//! (`ENDPOINT`, `TOKEN`, `REGION`, `BUCKET`, `PROXY_URL`, …); passing it the whole environment would let
//! any unrelated variable of those names reconfigure a store or send a token to it.
//!
//! **Keys** are object names exactly as the store holds them and the user sees them (`a/é b#1.jpg`), not
//! percent-encoded. `object_store`'s [`Path`] keeps such a name as is (a listed path's parts are the raw
//! names), but `Path::join`/`Path::from` percent-encode every character outside a safe set (`%`, `#`,
//! `?`, `*`, `[`, `]`, `^`, `|`, `~`, `\`, all non-ASCII, …) on the way in, so building a path from a
//! listed key with them names a different object (`%C3%A9 b%231.jpg`). [`Location::child`] therefore
//! takes each part as is. The only names it cannot take as is are ones `object_store` cannot represent at
//! all (a part that is `.` or `..` or holds an ASCII control character, or an empty part as in `a//b`):
//! no store lists such a key, so it is encoded, cannot climb out of the prefix, and is simply not found.
//!
//! **Names in messages** ([`Location::display`], [`Location::uri_of`], and so the `source_uri` of every
//! row) go through [`crate::redact_url`], so a location written with credentials in it does not leak them.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::{Path, PathPart};
use object_store::ObjectStore;
use url::Url;

use crate::redact::{redact_url, scrub};

/// Prefixes of the environment variables that configure cloud stores, passed to `object_store` as they
/// are.
pub const STORE_ENV_PREFIXES: [&str; 3] = ["AWS_", "GOOGLE_", "AZURE_"];

/// The project's own prefix for store settings: `MUST_STORE_<OPTION>` is passed as `<OPTION>`.
pub const PROJECT_STORE_PREFIX: &str = "MUST_STORE_";

/// A store plus the prefix inside it that a location names.
#[derive(Clone)]
pub struct Location {
    /// The store the location lives in.
    pub store: Arc<dyn ObjectStore>,
    /// The prefix inside `store` (may be empty: the store's root).
    pub prefix: Path,
    /// The location as the user wrote it, without credentials ([`crate::redact_url`]), for messages.
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
    /// Wrap an existing store (tests, fault injection) under a prefix (a key prefix, as the store holds it).
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: &str, display: &str) -> Self {
        Self { store, prefix: join_key(Path::default(), prefix), display: redact_url(display), local_dir: None }
    }

    /// The path of `relative` (a slash-separated key, as listed: not percent-encoded) under this
    /// location's prefix.
    pub fn child(&self, relative: &str) -> Path {
        join_key(self.prefix.clone(), relative)
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

/// `base` joined with each part of `key` taken as the object name it is (see the module doc).
fn join_key(base: Path, key: &str) -> Path {
    key.split('/')
        .filter(|p| !p.is_empty())
        .fold(base, |path, part| path.join(PathPart::parse(part).unwrap_or_else(|_| PathPart::from(part))))
}

/// The environment variables a store may be configured from (see the module doc), as `object_store`
/// options. Variables whose name or value is not UTF-8 are skipped.
pub fn store_options(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<(String, String)> {
    vars.into_iter()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter_map(|(k, v)| match k.strip_prefix(PROJECT_STORE_PREFIX) {
            Some(option) => Some((option.to_owned(), v)),
            None => STORE_ENV_PREFIXES.iter().any(|p| k.starts_with(p)).then_some((k, v)),
        })
        .collect()
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
    /// `reason` is the store's message with the location's credentials scrubbed out.
    #[error("cannot open object store for {location:?}: {reason}")]
    Store { location: String, reason: String },
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

/// Open `location`: a local path (created if missing) or a URL, configured from the environment variables
/// named in the module doc.
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
        .map_err(|e| OpenError::Invalid { location: redact_url(location), reason: e.to_string() })?;
    let (store, prefix) = object_store::parse_url_opts(&url, store_options(std::env::vars_os())).map_err(|e| {
        // A builder's message can quote the URL it was given, credentials and all.
        OpenError::Store { location: redact_url(location), reason: scrub(&e.to_string(), location) }
    })?;
    Ok(Location {
        store: Arc::from(store),
        prefix,
        display: redact_url(location).trim_end_matches('/').to_owned(),
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

    #[test]
    fn keys_are_object_names_not_encodings() {
        let loc = Location::from_store(Arc::new(object_store::memory::InMemory::new()), "my photos/é", "memory:///");
        for key in ["a/é b#1.jpg", "a%20b.jpg", "%2F.jpg", "[x]^|~\\*?.jpg", "漢/字 .jpg"] {
            let path = loc.child(key);
            assert_eq!(path.as_ref(), format!("my photos/é/{key}"), "{key}");
            assert_eq!(loc.relative(&path).as_deref(), Some(key));
        }
        // Names no store lists stay inside the prefix and name nothing that exists.
        assert_eq!(loc.child("../x").as_ref(), "my photos/é/%2E%2E/x");
        assert_eq!(loc.child("a\nb").as_ref(), "my photos/é/a%0Ab");
    }

    #[test]
    fn only_documented_variables_configure_stores() {
        let vars = [
            ("AWS_SECRET_ACCESS_KEY", "a"),
            ("GOOGLE_SERVICE_ACCOUNT", "b"),
            ("AZURE_STORAGE_ACCOUNT_NAME", "c"),
            ("MUST_STORE_TIMEOUT", "60s"),
            ("ENDPOINT", "http://elsewhere"),
            ("TOKEN", "unrelated"),
            ("MUST_LOG", "debug"),
            ("HOME", "/root"),
        ];
        let got = store_options(vars.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        let want: Vec<(String, String)> = [
            ("AWS_SECRET_ACCESS_KEY", "a"),
            ("GOOGLE_SERVICE_ACCOUNT", "b"),
            ("AZURE_STORAGE_ACCOUNT_NAME", "c"),
            ("TIMEOUT", "60s"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn opened_urls_are_named_without_credentials() {
        let loc = open("memory:///some/prefix/?token=SECRET#SECRET").unwrap();
        assert_eq!(loc.display, "memory:///some/prefix");
        assert_eq!(loc.uri_of(&loc.child("k/é.png")), "memory:///some/prefix/k/é.png");
        let loc =
            Location::from_store(Arc::new(object_store::memory::InMemory::new()), "p", "s3://k:SECRET@b/p?s=SECRET");
        assert_eq!(loc.display, "s3://b/p");
        // Stores that cannot be opened, one of them with a message that quotes the URL it was given.
        for (location, redacted) in [
            ("az://user:SECRET@container/p?sig=SECRET", "az://container/p"),
            ("nosuchscheme://user:SECRET@x/y?q=SECRET", "nosuchscheme://x/y"),
        ] {
            let err = open(location).map(|_| ()).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(!text.contains("SECRET"), "{text}");
            assert!(text.contains(redacted), "{text}");
        }
    }
}
