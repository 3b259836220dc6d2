//! How big the experiment is. `full` must finish in about 90 minutes on 2 CPU cores; `smoke` runs the same
//! steps end to end in a few minutes, for tests.
//!
//! Why these sizes (full): the experiment pre-trains 13 networks and fine-tunes 56 per seed, 3 seeds, in
//! about 90 minutes on 2 cores, so one step must cost about 0.1 s: 48 × 48 images and the tiny ResNet-18
//! (width 0.25) at batch 16. 300 pre-training steps (4,800 samples, 8 passes over a 600-image split) take a
//! teacher clearly above its trivial baseline; fine-tuning is short (80 steps on 200 images, two learning
//! rates) so that the starting trunk still matters, as in a few-shot transfer. The downstream tasks are new
//! ones on a shifted world (the demo's own classification is already solved).

use serde::Serialize;

/// Every size the experiment uses.
#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    pub name: &'static str,
    pub seeds: Vec<u64>,
    /// Square image side of both worlds.
    pub image_size: u32,
    /// Images per teacher split (cls, det, seg, depth) of the pre-training world.
    pub split_images: u64,
    /// Unlabelled pool the teachers label.
    pub pool_images: u64,
    pub downstream_train: u64,
    pub downstream_val: u64,
    pub downstream_test: u64,
    pub batch_size: u32,
    /// Steps of every teacher and student pre-training run.
    pub pretrain_steps: u64,
    pub pretrain_lr: f64,
    /// The fine-tuning grid.
    pub finetune_lr: Vec<f64>,
    pub finetune_steps: Vec<u64>,
    /// libtorch threads per run (seeds run side by side).
    pub threads: u32,
}

impl Scale {
    pub fn by_name(name: &str) -> Option<Scale> {
        match name {
            "full" => Some(Scale {
                name: "full",
                seeds: vec![0, 1, 2],
                image_size: 48,
                split_images: 600,
                pool_images: 1200,
                downstream_train: 200,
                downstream_val: 60,
                downstream_test: 200,
                batch_size: 16,
                pretrain_steps: 300,
                pretrain_lr: 0.002,
                finetune_lr: vec![0.0005, 0.002],
                finetune_steps: vec![80],
                threads: 1,
            }),
            "smoke" => Some(Scale {
                name: "smoke",
                seeds: vec![0],
                image_size: 32,
                split_images: 12,
                pool_images: 16,
                downstream_train: 8,
                downstream_val: 5,
                downstream_test: 5,
                batch_size: 4,
                pretrain_steps: 3,
                pretrain_lr: 0.002,
                finetune_lr: vec![0.002],
                finetune_steps: vec![2],
                threads: 1,
            }),
            _ => None,
        }
    }
}
