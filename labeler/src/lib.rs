//! labeler
