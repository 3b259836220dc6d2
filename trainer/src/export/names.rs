//! The student's variables under the names PyTorch users already have code for.
//!
//! The trunk is named exactly like torchvision's `ResNet` (`conv1`, `bn1`, `layer1.0.conv1`,
//! `layer1.0.downsample.0`, …, `fc`): the student's ResNet is torchvision's (v1.5 bottlenecks, biasless
//! convolutions, the same stem and shortcut rule), so a width-1.0 student loads into
//! `torchvision.models.resnet{18,34,50,101,152}(num_classes=K)` with `load_state_dict(strict=True)`.
//! Batch norms also get the `num_batches_tracked` buffer torchvision expects (the checkpoint's step: one
//! training-mode forward per step).
//!
//! The FPN is named like torchvision's `FeaturePyramidNetwork` with `LastLevelP6P7` extra blocks
//! (`fpn.inner_blocks.{i}.0`, `fpn.layer_blocks.{i}.0`, `fpn.extra_blocks.p6|p7`), which has the same
//! layers (1×1 laterals, nearest top-down upsampling, 3×3 outputs, P6 from P5, P7 from ReLU(P6)). The heads
//! have no torchvision counterpart and keep the student's own names under `det_head.`, `seg_head.`,
//! `depth_head.` (and `normals_head.` after fine-tuning).

use tch::Tensor;

/// Prefix of the student's variables in a checkpoint (the loss weighting lives under another prefix).
const STUDENT: &str = "student.";

/// The exported name of checkpoint variable `name`, `None` for variables that are not the student's.
/// An unexpected trunk or FPN name is an error: it means the network changed and this mapping must too.
pub fn exported_name(name: &str) -> Result<Option<String>, String> {
    let Some(rest) = name.strip_prefix(STUDENT) else { return Ok(None) };
    let unknown = || format!("variable {name:?} has no exported name (did the network change?)");
    if let Some(rest) = rest.strip_prefix("backbone.") {
        return trunk_name(rest).map(Some).ok_or_else(unknown);
    }
    if let Some(rest) = rest.strip_prefix("fpn.") {
        return fpn_name(rest).map(|n| Some(format!("fpn.{n}"))).ok_or_else(unknown);
    }
    if let Some(param) = rest.strip_prefix("cls_head.") {
        return Ok(Some(format!("fc.{param}")));
    }
    Ok(Some(rest.to_owned()))
}

/// `stem.conv.weight` → `conv1.weight`; `stage3.block1.c2.bn.bias` → `layer2.1.bn2.bias`;
/// `stage3.block0.down.conv.weight` → `layer2.0.downsample.0.weight`.
fn trunk_name(rest: &str) -> Option<String> {
    if let Some(unit) = rest.strip_prefix("stem.") {
        return conv_bn(unit, "1").map(|(layer, param)| format!("{layer}.{param}"));
    }
    let (stage, rest) = rest.strip_prefix("stage")?.split_once('.')?;
    let stage: u32 = stage.parse().ok().filter(|s| (2..=5).contains(s))?;
    let (block, rest) = rest.strip_prefix("block")?.split_once('.')?;
    let block: u32 = block.parse().ok()?;
    let (unit, rest) = rest.split_once('.')?;
    let layer = format!("layer{}.{block}", stage - 1);
    if unit == "down" {
        let (part, param) = rest.split_once('.')?;
        let index = match part {
            "conv" => 0,
            "bn" => 1,
            _ => return None,
        };
        return Some(format!("{layer}.downsample.{index}.{param}"));
    }
    let which = unit.strip_prefix('c').filter(|n| matches!(*n, "1" | "2" | "3"))?;
    conv_bn(rest, which).map(|(l, param)| format!("{layer}.{l}.{param}"))
}

/// `conv.weight` → (`conv{n}`, `weight`), `bn.running_mean` → (`bn{n}`, `running_mean`).
fn conv_bn(unit: &str, n: &str) -> Option<(String, String)> {
    let (part, param) = unit.split_once('.')?;
    match part {
        "conv" | "bn" => Some((format!("{part}{n}"), param.to_owned())),
        _ => None,
    }
}

/// `lateral{2..5}` → `inner_blocks.{0..3}.0`, `output{2..5}` → `layer_blocks.{0..3}.0`, `p6|p7` →
/// `extra_blocks.p6|p7`.
fn fpn_name(rest: &str) -> Option<String> {
    let (layer, param) = rest.split_once('.')?;
    if layer == "p6" || layer == "p7" {
        return Some(format!("extra_blocks.{layer}.{param}"));
    }
    let (kind, level) = if let Some(l) = layer.strip_prefix("lateral") {
        ("inner_blocks", l)
    } else {
        ("layer_blocks", layer.strip_prefix("output")?)
    };
    let level: u32 = level.parse().ok().filter(|l| (2..=5).contains(l))?;
    Some(format!("{kind}.{}.0.{param}", level - 2))
}

/// The exported tensors, sorted by name: every student variable renamed, plus a `num_batches_tracked`
/// (int64 scalar, `step`) beside each trunk batch norm's `running_mean`.
pub fn exported_tensors(variables: &[(String, Tensor)], step: u64) -> Result<Vec<(String, Tensor)>, String> {
    let mut out = Vec::with_capacity(variables.len() + variables.len() / 4);
    for (name, tensor) in variables {
        let Some(new) = exported_name(name)? else { continue };
        let host = tensor.detach().to_device(tch::Device::Cpu).contiguous();
        // Only the trunk has batch norms (the heads use group norm).
        if let Some(prefix) = new.strip_suffix(".running_mean") {
            out.push((format!("{prefix}.num_batches_tracked"), Tensor::from(step as i64)));
        }
        out.push((new, host));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("two variables are both exported as {:?}", w[0].0));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunk_names_are_torchvision_names() {
        let cases = [
            ("student.backbone.stem.conv.weight", "conv1.weight"),
            ("student.backbone.stem.bn.running_var", "bn1.running_var"),
            ("student.backbone.stage2.block0.c1.conv.weight", "layer1.0.conv1.weight"),
            ("student.backbone.stage3.block1.c2.bn.bias", "layer2.1.bn2.bias"),
            ("student.backbone.stage5.block2.c3.bn.weight", "layer4.2.bn3.weight"),
            ("student.backbone.stage3.block0.down.conv.weight", "layer2.0.downsample.0.weight"),
            ("student.backbone.stage3.block0.down.bn.running_mean", "layer2.0.downsample.1.running_mean"),
            ("student.cls_head.weight", "fc.weight"),
            ("student.fpn.lateral2.weight", "fpn.inner_blocks.0.0.weight"),
            ("student.fpn.output5.bias", "fpn.layer_blocks.3.0.bias"),
            ("student.fpn.p7.weight", "fpn.extra_blocks.p7.weight"),
            ("student.det_head.cls_tower.conv0.weight", "det_head.cls_tower.conv0.weight"),
            ("student.seg_head.pred.bias", "seg_head.pred.bias"),
        ];
        for (from, to) in cases {
            assert_eq!(exported_name(from).unwrap().as_deref(), Some(to), "{from}");
        }
        assert_eq!(exported_name("objective.log_var.cls").unwrap(), None);
        assert!(exported_name("student.backbone.stage6.block0.c1.conv.weight").is_err());
        assert!(exported_name("student.backbone.stem.pool.weight").is_err());
        assert!(exported_name("student.fpn.lateral9.weight").is_err());
    }

    #[test]
    fn batch_norms_get_num_batches_tracked() {
        let t = || Tensor::zeros([4], (tch::Kind::Float, tch::Device::Cpu));
        let vars = vec![
            ("student.backbone.stem.bn.running_mean".to_owned(), t()),
            ("student.backbone.stage2.block0.down.bn.running_mean".to_owned(), t()),
            ("objective.x".to_owned(), t()),
        ];
        let out = exported_tensors(&vars, 7).unwrap();
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "bn1.num_batches_tracked",
                "bn1.running_mean",
                "layer1.0.downsample.1.num_batches_tracked",
                "layer1.0.downsample.1.running_mean"
            ]
        );
        assert_eq!(out[0].1.kind(), tch::Kind::Int64);
        assert_eq!(out[0].1.int64_value(&[]), 7);
    }
}
