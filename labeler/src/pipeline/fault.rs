//! Fault injection for tests: make one stage panic when it reaches a given image, to prove that a stage
//! dying mid-shard fails the attempt and never leads to a commit. The hook exists only with the
//! `fault-injection` feature (enabled for the labeler's own tests); without it [`ShardOptions`] has no
//! fault field and every hook compiles to nothing.
//!
//! [`ShardOptions`]: super::ShardOptions

/// A pipeline stage a fault can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultStage {
    Fetch,
    Decode,
    /// Resizing for the teachers (on the decode workers).
    Prepare,
    Inference,
    Postprocess,
    Write,
}

/// Panic in `stage` when it handles the shard's `image`-th input (0-based, in shard order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub stage: FaultStage,
    pub image: u64,
}

/// Panic if `fault` targets `stage` and one of the images `first..first + len`.
#[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))]
pub(super) fn hook(fault: Option<Fault>, stage: FaultStage, first: u64, len: usize) {
    #[cfg(feature = "fault-injection")]
    if let Some(f) = fault {
        if f.stage == stage && (first..first + len as u64).contains(&f.image) {
            panic!("injected fault in the {stage:?} stage at image {}", f.image);
        }
    }
}
