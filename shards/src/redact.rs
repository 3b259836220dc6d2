//! Keeping credentials out of what the project logs and writes.
//!
//! Locations are user-supplied strings, and a URL can carry credentials: a password in its userinfo
//! (`http://user:secret@host/…`) or a token in its query string (a presigned or SAS URL). Every name of a
//! location that reaches a log line, an error message, a row (`source_uri`) or a manifest goes through
//! [`redact_url`] first. Store errors are a second leak: their `Display` can hold a request URL and the
//! server's whole response body, which is not ours to copy into rows that are kept for years, so error rows
//! carry [`describe_store_error`]: the kind of failure and an HTTP status, nothing the server said.

use std::error::Error as StdError;

/// `location` without the parts of a URL that carry credentials: userinfo, query string and fragment.
///
/// A local path (no `://`) and a `file://` location are returned unchanged: [`crate::open`] takes them as
/// paths, where `?`, `#` and `@` are ordinary characters of a file name. Everything else is cut as text,
/// not parsed and re-serialised, so the rest reads exactly as the user wrote it.
pub fn redact_url(location: &str) -> String {
    let Some((scheme, rest)) = location.split_once("://") else { return location.to_owned() };
    if location.starts_with("file://") {
        return location.to_owned();
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let path = tail.split(['?', '#']).next().unwrap_or_default();
    format!("{scheme}://{host}{path}")
}

/// The credential-carrying pieces of `location` (userinfo, password, query, fragment) as written and as
/// `url` normalises them, longest first.
fn secret_parts(location: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let Some((_, rest)) = location.split_once("://") else { return parts };
    if location.starts_with("file://") {
        return parts;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        parts.push(userinfo.to_owned());
        parts.extend(userinfo.split_once(':').map(|(_, password)| password.to_owned()));
    }
    if let Some(i) = tail.find(['?', '#']) {
        parts.push(tail[i + 1..].to_owned());
    }
    if let Ok(url) = url::Url::parse(location) {
        parts.push(url.username().to_owned());
        parts.extend(url.password().map(str::to_owned));
        parts.extend(url.query().map(str::to_owned));
        parts.extend(url.fragment().map(str::to_owned));
    }
    // Very short pieces (an empty query, a one-letter user name) would garble the message and hide nothing.
    parts.retain(|p| p.len() >= 4);
    parts.sort_by_key(|p| std::cmp::Reverse(p.len()));
    parts.dedup();
    parts
}

/// `text` (a message about `location`) with every credential-carrying part of `location` replaced: the
/// whole location, as written or as `url` normalises it, by its redacted form, then any userinfo,
/// password, query or fragment left by `…`.
pub(crate) fn scrub(text: &str, location: &str) -> String {
    if location.is_empty() {
        return text.to_owned();
    }
    let redacted = redact_url(location);
    let mut out = text.replace(location, &redacted);
    if let Ok(url) = url::Url::parse(location) {
        out = out.replace(url.as_str(), &redacted);
    }
    for part in secret_parts(location) {
        out = out.replace(&part, "…");
    }
    out
}

/// A short, single-line description of a store error: its kind ("not found", "permission denied",
/// "precondition failed", …) and, when the error carries one, the HTTP status or the transport or I/O
/// failure behind it. Never the server's response body, a request URL or a path.
pub fn describe_store_error(error: &object_store::Error) -> String {
    use object_store::Error as E;
    let kind = match error {
        E::NotFound { .. } => "not found".to_owned(),
        E::AlreadyExists { .. } => "already exists".to_owned(),
        E::Precondition { .. } => "precondition failed".to_owned(),
        E::NotModified { .. } => "not modified".to_owned(),
        E::PermissionDenied { .. } => "permission denied".to_owned(),
        E::Unauthenticated { .. } => "unauthenticated".to_owned(),
        E::InvalidPath { .. } => "invalid path".to_owned(),
        E::NotSupported { .. } | E::NotImplemented { .. } => "not supported".to_owned(),
        E::UnknownConfigurationKey { .. } => "unknown configuration key".to_owned(),
        E::JoinError { .. } => "task failed".to_owned(),
        E::Generic { store, .. } => format!("{store} error"),
        _ => "store error".to_owned(),
    };
    let generic = matches!(error, E::Generic { .. });
    match cause(error, generic) {
        Some(cause) => format!("{kind} ({cause})"),
        None => kind,
    }
}

/// What `object_store` sets before a status code when a server answered with a failure status. Its
/// retry error type is private, so the status is read from its message: the three digits after this.
const STATUS_MARK: &str = "status code: ";

/// The HTTP status, transport failure or (for `io`) I/O failure somewhere in `error`'s source chain.
fn cause(error: &object_store::Error, io: bool) -> Option<String> {
    let mut transport = None;
    let mut io_kind = None;
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        if let Some(i) = text.find(STATUS_MARK) {
            let digits = &text.as_bytes()[i + STATUS_MARK.len()..];
            if digits.len() >= 3 && digits[..3].iter().all(u8::is_ascii_digit) {
                return Some(format!("HTTP {}", String::from_utf8_lossy(&digits[..3])));
            }
        }
        if let Some(http) = e.downcast_ref::<object_store::client::HttpError>() {
            transport.get_or_insert(http_kind(http.kind()));
        }
        if let Some(err) = e.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(err.kind().to_string());
        }
        current = e.source();
    }
    transport.or(io_kind.filter(|_| io))
}

fn http_kind(kind: object_store::client::HttpErrorKind) -> String {
    use object_store::client::HttpErrorKind as K;
    match kind {
        K::Connect => "connection failed".to_owned(),
        K::Request => "request failed".to_owned(),
        K::Timeout => "timed out".to_owned(),
        K::Interrupted => "interrupted".to_owned(),
        K::Decode => "unreadable response".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_userinfo_query_and_fragment() {
        for (given, want) in [
            ("s3://bucket/photos", "s3://bucket/photos"),
            ("s3://key:SECRET@bucket/photos?token=SECRET#SECRET", "s3://bucket/photos"),
            ("https://user:pa@ss@host:8080/a/b?sig=SECRET", "https://host:8080/a/b"),
            ("https://host?sig=SECRET", "https://host"),
            ("az://container/my photos/é", "az://container/my photos/é"),
            ("/data/what?#@.jpg", "/data/what?#@.jpg"),
            ("file:///data/a?b", "file:///data/a?b"),
            ("relative/dir", "relative/dir"),
        ] {
            assert_eq!(redact_url(given), want, "{given}");
        }
    }

    #[test]
    fn scrub_replaces_the_location_and_its_secrets() {
        let location = "https://user:HUNTER22@example.com/a?sig=TOPSECRET";
        let message = format!(
            "cannot parse {location}; parsed as {}; password HUNTER22; query sig=TOPSECRET",
            url::Url::parse(location).unwrap()
        );
        let scrubbed = scrub(&message, location);
        assert!(!scrubbed.contains("HUNTER22") && !scrubbed.contains("TOPSECRET"), "{scrubbed}");
        assert!(scrubbed.contains("https://example.com/a"), "{scrubbed}");
    }

    #[derive(Debug)]
    struct Server(String);
    impl std::fmt::Display for Server {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl StdError for Server {}

    #[test]
    fn descriptions_keep_kind_and_status_but_not_the_body() {
        let body = "Server returned non-2xx status code: 503 Service Unavailable: <Error><Message>SECRET</Message>";
        let e = object_store::Error::Generic { store: "S3", source: Box::new(Server(body.into())) };
        assert_eq!(describe_store_error(&e), "S3 error (HTTP 503)");
        let e = object_store::Error::PermissionDenied {
            path: "a/b".into(),
            source: Box::new(Server("status code: 403 Forbidden: SECRET".into())),
        };
        assert_eq!(describe_store_error(&e), "permission denied (HTTP 403)");
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "open /x/SECRET");
        let e = object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(io) };
        assert_eq!(describe_store_error(&e), "LocalFileSystem error (permission denied)");
    }

    #[test]
    fn a_missing_object_is_not_found_on_every_local_store() {
        use object_store::{ObjectStore, ObjectStoreExt};
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let memory = object_store::memory::InMemory::new();
        let stores: [&dyn ObjectStore; 2] = [&local, &memory];
        for store in stores {
            let e = rt.block_on(store.get(&"no/such.jpg".into())).unwrap_err();
            assert_eq!(describe_store_error(&e), "not found", "{e}");
        }
    }
}
