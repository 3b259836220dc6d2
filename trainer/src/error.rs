//! The trainer's one error type, shared by training, evaluation, fine-tuning, export and plotting.
//!
//! It lives apart from the run loop so that the modules that evaluate and draw a run do not depend on
//! the module that trains one.

use std::path::Path;

use crate::checkpoint::CheckpointError;
use crate::config::ConfigError;
use crate::data::DataError;
use crate::loss::LossError;

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Loss(#[from] LossError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("libtorch: {0}")]
    Torch(String),
    #[error("cannot resume from {path}: {reason}")]
    Resume { path: String, reason: String },
    #[error("step {step}: the {what} is not finite ({value}); lower optim.lr or check the labels")]
    NonFinite { step: u64, what: String, value: f64 },
    #[error("device: {0}")]
    Device(String),
    #[error("data-parallel training: {0}")]
    Distributed(#[from] crate::distributed::DistError),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.display().to_string(), source }
}
