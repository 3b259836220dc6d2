//! The contract between the data pipeline (`data`) and the training step (`train`): one collated batch
//! of augmented samples in plain host memory. The training step turns it into tensors on its device.
//!
//! Every sample has every task slot; `has_*` says whether the task's label is present for that row
//! (absent labels add nothing to the loss). Geometry is in pixels of the `image_size`×`image_size` crop
//! that the image was augmented into.

/// One box target in crop pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxTarget {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
    pub class_id: u16,
}

/// A collated batch.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Number of samples B.
    pub size: usize,
    /// Side S of the square training crop.
    pub image_size: usize,
    /// `B·3·S·S` floats, RGB, normalised with ImageNet mean/std; padding is 0 after normalisation.
    pub images: Vec<f32>,
    /// Number of classification classes C.
    pub num_classes: usize,
    /// `B·C` target distributions (one-hot for supervised rows); zeros where absent.
    pub cls_probs: Vec<f32>,
    pub has_cls: Vec<bool>,
    /// Per-sample boxes.
    pub boxes: Vec<Vec<BoxTarget>>,
    pub has_det: Vec<bool>,
    /// `B·S·S` class ids, 255 = ignore (also used for padding and pixels with no label).
    pub seg: Vec<u8>,
    pub has_seg: Vec<bool>,
    /// `B·S·S` inverse depth (relative; metric depth is converted to 1/depth); see `depth_valid`.
    pub depth: Vec<f32>,
    /// `B·S·S`, 1 where `depth` holds a value (0 for padding).
    pub depth_valid: Vec<u8>,
    pub has_depth: Vec<bool>,
    /// Per-sample (dataset, key), for debugging and for checking sample order on resume.
    pub keys: Vec<(String, String)>,
}
