//! Feature pyramid (Lin et al.) over C2–C5, extended to P6/P7 as in RetinaNet/FCOS.
//!
//! P2–P5 come from the top-down pathway (1×1 lateral, nearest upsampling, 3×3 output conv); P6 is a
//! stride-2 3×3 conv on P5 and P7 one on ReLU(P6). P3–P7 feed detection; P2 is the target resolution
//! of the pixel-task fusion, which is why the pyramid starts one level lower than a detector needs.

use tch::nn;
use tch::Tensor;

#[derive(Debug)]
pub(crate) struct Fpn {
    lateral: Vec<nn::Conv2D>,
    output: Vec<nn::Conv2D>,
    p6: nn::Conv2D,
    p7: nn::Conv2D,
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, k, nn::ConvConfig { stride, padding: k / 2, ..Default::default() })
}

impl Fpn {
    pub(crate) fn new(p: nn::Path, in_channels: [i64; 4], channels: i64) -> Fpn {
        let lateral = (0..4).map(|i| conv(&p / format!("lateral{}", i + 2), in_channels[i], channels, 1, 1)).collect();
        let output = (0..4).map(|i| conv(&p / format!("output{}", i + 2), channels, channels, 3, 1)).collect();
        let p6 = conv(&p / "p6", channels, channels, 3, 2);
        let p7 = conv(&p / "p7", channels, channels, 3, 2);
        Fpn { lateral, output, p6, p7 }
    }

    /// `c` = [C2, C3, C4, C5]; returns [P2, P3, P4, P5, P6, P7].
    pub(crate) fn forward(&self, c: &[Tensor]) -> Vec<Tensor> {
        debug_assert_eq!(c.len(), 4);
        let mut inner: Vec<Tensor> = Vec::with_capacity(4);
        let mut top = c[3].apply(&self.lateral[3]);
        inner.push(top.shallow_clone());
        for i in (0..3).rev() {
            let lat = c[i].apply(&self.lateral[i]);
            let size = lat.size();
            top = lat + top.upsample_nearest2d([size[2], size[3]], None, None);
            inner.push(top.shallow_clone());
        }
        inner.reverse();
        let mut outs: Vec<Tensor> = inner.iter().zip(&self.output).map(|(x, conv)| x.apply(conv)).collect();
        let p6 = outs[3].apply(&self.p6);
        let p7 = p6.relu().apply(&self.p7);
        outs.push(p6);
        outs.push(p7);
        outs
    }
}
