//! The MuST student trainer: streams committed label shards, trains one multi-task ResNet-FPN student
//! with libtorch (`tch`), evaluates it, and keeps resumable checkpoints.
//!
//! - [`data`]: committed shards → augmented, collated [`batch::Batch`]es (uniform union sampling, exact resume);
//! - [`model`]: the student (ResNet + FPN, classification / FCOS detection / pixel heads);
//! - [`loss`]: per-task losses and their weighted sum;
//! - [`optim`]: SGD / AdamW with saveable state, cosine schedule with warm-up;
//! - [`checkpoint`]: atomic checkpoints;
//! - [`train`]: the run loop; [`metrics_log`]: the run's `metrics.jsonl`; [`error`]: the error type;
//! - [`eval`] and [`metrics`]: evaluation; [`plot`]: curves;
//! - [`finetune`]: transfer — the pre-trained trunk with a new head, fine-tuned on a downstream task;
//! - [`progress`]: how runs report progress; [`config`]: the TOML run configuration.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod loss;
pub mod metrics;
pub mod metrics_log;
pub mod model;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod train;

#[cfg(test)]
mod tests {
    #[test]
    fn libtorch_loads_and_computes() {
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        assert_eq!(t.sum(tch::Kind::Float).double_value(&[]), 6.0);
    }
}
