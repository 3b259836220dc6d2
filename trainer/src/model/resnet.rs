//! ResNet trunk (He et al.) returning the four stage outputs C2–C5 that the FPN consumes.
//!
//! Basic blocks for depths 18/34, bottleneck blocks (stride on the 3×3, "ResNet v1.5") for 50/101/152.
//! Every channel count is multiplied by the width multiplier so that a tiny variant (ResNet-18 at width
//! 0.25) runs the same code path on CPU in tests.

use tch::nn;
use tch::Tensor;

use super::{scaled_channels, ResNetDepth};

/// 3×3 (or k×k) convolution without bias followed by batch norm: the unit every block is made of.
#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

fn conv_bn(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> ConvBn {
    let conv = nn::conv2d(
        &p / "conv",
        cin,
        cout,
        k,
        nn::ConvConfig {
            stride,
            padding: k / 2,
            bias: false,
            ws_init: nn::Init::Kaiming {
                dist: nn::init::NormalOrUniform::Normal,
                fan: nn::init::FanInOut::FanOut,
                non_linearity: nn::init::NonLinearity::ReLU,
            },
            ..Default::default()
        },
    );
    let bn =
        nn::batch_norm2d(&p / "bn", cout, nn::BatchNormConfig { ws_init: nn::Init::Const(1.0), ..Default::default() });
    ConvBn { conv, bn }
}

impl ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = xs.apply(&self.conv);
        match crate::distributed::sync_batch_norm_group() {
            // Synchronised batch norm: training statistics over every rank's part of the global batch.
            Some(group) if train => {
                let defaults = nn::BatchNormConfig::default();
                crate::distributed::sync_batch_norm(group, &h, &self.bn, defaults.eps, defaults.momentum)
            }
            _ => h.apply_t(&self.bn, train),
        }
    }
}

// Blocks are built once per model; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Block {
    Basic { c1: ConvBn, c2: ConvBn, down: Option<ConvBn> },
    Bottleneck { c1: ConvBn, c2: ConvBn, c3: ConvBn, down: Option<ConvBn> },
}

impl Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let (out, down) = match self {
            Block::Basic { c1, c2, down } => (c2.forward_t(&c1.forward_t(xs, train).relu(), train), down),
            Block::Bottleneck { c1, c2, c3, down } => {
                let h = c1.forward_t(xs, train).relu();
                let h = c2.forward_t(&h, train).relu();
                (c3.forward_t(&h, train), down)
            }
        };
        let shortcut = match down {
            Some(d) => d.forward_t(xs, train),
            None => xs.shallow_clone(),
        };
        (out + shortcut).relu()
    }
}

/// The trunk: stem (7×7/2 conv, 3×3/2 max pool) and four stages.
#[derive(Debug)]
pub(crate) struct ResNet {
    stem: ConvBn,
    stages: Vec<Vec<Block>>,
    out_channels: [i64; 4],
}

impl ResNet {
    pub(crate) fn new(p: nn::Path, depth: ResNetDepth, width: f64) -> ResNet {
        let (bottleneck, counts) = depth.layout();
        let expansion = if bottleneck { 4 } else { 1 };
        let stem_ch = scaled_channels(64, width);
        let stem = conv_bn(&p / "stem", 3, stem_ch, 7, 2);
        let mut cin = stem_ch;
        let mut stages = Vec::with_capacity(4);
        let mut out_channels = [0; 4];
        for (s, &n) in counts.iter().enumerate() {
            let planes = scaled_channels(64 << s, width);
            let cout = planes * expansion;
            let sp = &p / format!("stage{}", s + 2);
            let mut blocks = Vec::with_capacity(n);
            for b in 0..n {
                let stride = if b == 0 && s > 0 { 2 } else { 1 };
                let bp = &sp / format!("block{b}");
                let down = (stride != 1 || cin != cout).then(|| conv_bn(&bp / "down", cin, cout, 1, stride));
                let block = if bottleneck {
                    Block::Bottleneck {
                        c1: conv_bn(&bp / "c1", cin, planes, 1, 1),
                        c2: conv_bn(&bp / "c2", planes, planes, 3, stride),
                        c3: conv_bn(&bp / "c3", planes, cout, 1, 1),
                        down,
                    }
                } else {
                    Block::Basic {
                        c1: conv_bn(&bp / "c1", cin, planes, 3, stride),
                        c2: conv_bn(&bp / "c2", planes, cout, 3, 1),
                        down,
                    }
                };
                blocks.push(block);
                cin = cout;
            }
            out_channels[s] = cout;
            stages.push(blocks);
        }
        ResNet { stem, stages, out_channels }
    }

    /// Channels of C2..C5.
    pub(crate) fn out_channels(&self) -> [i64; 4] {
        self.out_channels
    }

    /// Returns [C2, C3, C4, C5] at strides 4, 8, 16, 32.
    pub(crate) fn forward_t(&self, xs: &Tensor, train: bool) -> Vec<Tensor> {
        let mut h = self.stem.forward_t(xs, train).relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let mut outs = Vec::with_capacity(4);
        for stage in &self.stages {
            for block in stage {
                h = block.forward_t(&h, train);
            }
            outs.push(h.shallow_clone());
        }
        outs
    }
}
