//! The one error type of the crate: every variant names what failed and where.

/// Why rendering, encoding, writing or reading a world store failed.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// A setting is out of range; `reason` says which and why.
    #[error("invalid world config: {reason}")]
    Config { reason: String },
    /// Encoding an image or truth map (`what` names the file) failed.
    #[error("encoding {what}")]
    Encode {
        what: String,
        #[source]
        source: image::ImageError,
    },
    /// Decoding an image or truth map (`what` names it) failed.
    #[error("decoding {what}")]
    Decode {
        what: String,
        #[source]
        source: image::ImageError,
    },
    /// A JSON document (`what` names it) could not be written or parsed.
    #[error("JSON of {what}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// Decoded truth is inconsistent with itself (sizes, pixel formats).
    #[error("truth {what}: {reason}")]
    Truth { what: String, reason: String },
    /// Writing an object to the store failed.
    #[error("writing {path}")]
    Put {
        path: String,
        #[source]
        source: object_store::Error,
    },
    /// Reading an object from the store failed.
    #[error("reading {path}")]
    Get {
        path: String,
        #[source]
        source: object_store::Error,
    },
    /// The rendering thread of a split died (a panic while rendering).
    #[error("rendering split {split} stopped: {reason}")]
    Render { split: String, reason: String },
}
