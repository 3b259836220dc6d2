//! Optimisers and the learning-rate schedule, written out over named tensors.
//!
//! Why not `tch::nn::Optimizer`: it keeps its state (momentum buffers, Adam moments) inside libtorch with
//! no way to read or restore it, and a resumed run must continue *exactly* (MuST's runs are long and get
//! preempted). Here every buffer is a named tensor that goes into the checkpoint. The update rules are
//! PyTorch's: SGD `v ← μv + g (+ wd·p)`, `p ← p − lr·v` (Nesterov: `p ← p − lr·(g + μv)`); AdamW with
//! bias correction and decoupled decay `p ← p·(1 − lr·wd)`. Weight decay applies to tensors of rank > 1
//! only (conv and linear weights), not to biases or normalisation parameters.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use crate::config::{OptimSection, OptimizerKind};

/// Linear warm-up from 0 to `peak` over `warmup` steps, then cosine decay to 0 at `total`.
pub fn learning_rate(step: u64, peak: f64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let t = ((step - warmup) as f64 / span).min(1.0);
    0.5 * peak * (1.0 + (std::f64::consts::PI * t).cos())
}

/// An optimiser over a fixed set of named parameters, with state that can be saved and restored.
#[derive(Debug)]
pub struct Optimizer {
    cfg: OptimSection,
    params: Vec<(String, Tensor)>,
    /// SGD: momentum buffer per parameter. AdamW: first moment.
    first: BTreeMap<String, Tensor>,
    /// AdamW: second moment.
    second: BTreeMap<String, Tensor>,
    /// Updates applied so far.
    updates: u64,
}

/// A checkpoint's optimiser tensors do not fit the model.
#[derive(Debug, thiserror::Error)]
#[error("optimiser state: {0}")]
pub struct StateError(String);

impl Optimizer {
    /// `params`: the trainable variables by name (e.g. from `VarStore::variables` filtered by
    /// `requires_grad`).
    pub fn new(cfg: &OptimSection, mut params: Vec<(String, Tensor)>) -> Optimizer {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Optimizer { cfg: cfg.clone(), params, first: BTreeMap::new(), second: BTreeMap::new(), updates: 0 }
    }

    /// Sets every parameter's gradient to zero.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// The global L2 norm of the gradients.
    pub fn grad_norm(&self) -> f64 {
        tch::no_grad(|| {
            let mut total = 0.0;
            for (_, p) in &self.params {
                let g = p.grad();
                if g.defined() {
                    total += g.square().sum(Kind::Double).double_value(&[]);
                }
            }
            total.sqrt()
        })
    }

    /// Multiplies every gradient by `factor` (gradient clipping, loss-scale removal).
    pub fn scale_grads(&mut self, factor: f64) {
        tch::no_grad(|| {
            for (_, p) in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(factor);
                }
            }
        });
    }

    /// One update at learning rate `lr` from the current gradients.
    pub fn step(&mut self, lr: f64) {
        self.updates += 1;
        let c = self.cfg.clone();
        let t = self.updates as i32;
        tch::no_grad(|| {
            for (name, p) in &mut self.params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let decay = if p.dim() > 1 { c.weight_decay } else { 0.0 };
                match c.optimizer {
                    OptimizerKind::Sgd => {
                        let mut d = if decay > 0.0 { &g + &*p * decay } else { g.shallow_clone() };
                        if c.momentum > 0.0 {
                            let buf = self.first.entry(name.clone()).or_insert_with(|| d.zeros_like());
                            let _ = buf.g_mul_scalar_(c.momentum).g_add_(&d);
                            d = if c.nesterov { &d + &*buf * c.momentum } else { buf.shallow_clone() };
                        }
                        let _ = p.g_sub_(&(d * lr));
                    }
                    OptimizerKind::Adamw => {
                        if decay > 0.0 {
                            let _ = p.g_mul_scalar_(1.0 - lr * decay);
                        }
                        let m = self.first.entry(name.clone()).or_insert_with(|| g.zeros_like());
                        let _ = m.g_mul_scalar_(c.beta1).g_add_(&(&g * (1.0 - c.beta1)));
                        let v = self.second.entry(name.clone()).or_insert_with(|| g.zeros_like());
                        let _ = v.g_mul_scalar_(c.beta2).g_add_(&(g.square() * (1.0 - c.beta2)));
                        let bc1 = 1.0 - c.beta1.powi(t);
                        let bc2 = 1.0 - c.beta2.powi(t);
                        let denom = (&*v / bc2).sqrt() + c.eps;
                        let _ = p.g_sub_(&((&*m / &denom) * (lr / bc1)));
                    }
                }
            }
        });
    }

    /// Updates applied so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The state as named tensors (`first/<param>`, `second/<param>`) plus the update count.
    pub fn state(&self) -> (Vec<(String, Tensor)>, u64) {
        let mut v = Vec::new();
        for (name, t) in &self.first {
            v.push((format!("first/{name}"), t.shallow_clone()));
        }
        for (name, t) in &self.second {
            v.push((format!("second/{name}"), t.shallow_clone()));
        }
        (v, self.updates)
    }

    /// Restores a state returned by [`Optimizer::state`] (tensors moved to each parameter's device).
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>, updates: u64) -> Result<(), StateError> {
        let shapes: BTreeMap<&str, (Vec<i64>, tch::Device)> =
            self.params.iter().map(|(n, p)| (n.as_str(), (p.size(), p.device()))).collect();
        let mut first = BTreeMap::new();
        let mut second = BTreeMap::new();
        for (key, t) in tensors {
            let (slot, name) = match key.split_once('/') {
                Some(("first", n)) => (&mut first, n.to_owned()),
                Some(("second", n)) => (&mut second, n.to_owned()),
                _ => return Err(StateError(format!("unexpected tensor {key:?}"))),
            };
            let Some((shape, device)) = shapes.get(name.as_str()) else {
                return Err(StateError(format!("{key:?} belongs to no parameter of this model")));
            };
            if &t.size() != shape {
                return Err(StateError(format!("{key:?} has shape {:?}, the parameter {:?}", t.size(), shape)));
            }
            slot.insert(name, t.to_device(*device));
        }
        self.first = first;
        self.second = second;
        self.updates = updates;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(kind: OptimizerKind) -> OptimSection {
        OptimSection {
            optimizer: kind,
            lr: 0.1,
            steps: 10,
            warmup_steps: 0,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_grad_norm: None,
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((learning_rate(0, 1.0, 4, 20) - 0.25).abs() < 1e-12);
        assert!((learning_rate(3, 1.0, 4, 20) - 1.0).abs() < 1e-12);
        assert!((learning_rate(4, 1.0, 4, 20) - 1.0).abs() < 1e-12);
        assert!((learning_rate(12, 1.0, 4, 20) - 0.5).abs() < 1e-12);
        assert!(learning_rate(20, 1.0, 4, 20).abs() < 1e-12);
        assert!(learning_rate(19, 1.0, 4, 20) > 0.0);
    }

    /// Minimise (p − 3)² and compare with the closed-form first updates of each rule.
    #[test]
    fn updates_follow_pytorchs_rules() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adamw] {
            let p = Tensor::from_slice(&[0.0f32]).set_requires_grad(true);
            let mut opt = Optimizer::new(&section(kind), vec![("p".into(), p.shallow_clone())]);
            let mut values = Vec::new();
            for _ in 0..2 {
                opt.zero_grad();
                (&p - 3.0).square().sum(Kind::Float).backward();
                opt.step(0.1);
                values.push(p.double_value(&[0]));
            }
            match kind {
                // g = -6: v = -6, p = 0.6; g = -4.8: v = 0.9·-6 - 4.8 = -10.2, p = 0.6 + 1.02 = 1.62
                OptimizerKind::Sgd => {
                    assert!((values[0] - 0.6).abs() < 1e-6 && (values[1] - 1.62).abs() < 1e-5, "{values:?}")
                }
                // Adam's first steps move by ≈ lr whatever the gradient's size.
                OptimizerKind::Adamw => {
                    assert!((values[0] - 0.1).abs() < 1e-4 && (values[1] - 0.2).abs() < 1e-3, "{values:?}")
                }
            }
        }
    }

    #[test]
    fn state_round_trips_and_continues_identically() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adamw] {
            let run = |split: Option<usize>| {
                let p = Tensor::from_slice(&[0.5f32, -1.0]).set_requires_grad(true);
                let mut opt = Optimizer::new(&section(kind), vec![("w".into(), p.shallow_clone())]);
                for i in 0..6 {
                    if split == Some(i) {
                        let (tensors, n) = opt.state();
                        let copies = tensors.into_iter().map(|(k, t)| (k, t.copy())).collect();
                        opt = Optimizer::new(&section(kind), vec![("w".into(), p.shallow_clone())]);
                        opt.load_state(copies, n).unwrap();
                    }
                    opt.zero_grad();
                    (&p * &p * 2.0 - &p).sum(Kind::Float).backward();
                    opt.step(0.05);
                }
                Vec::<f32>::try_from(p.detach()).unwrap()
            };
            assert_eq!(run(None), run(Some(3)), "{kind:?}");
        }
    }

    #[test]
    fn foreign_state_is_refused() {
        let p = Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let mut opt = Optimizer::new(&section(OptimizerKind::Sgd), vec![("w".into(), p)]);
        let wrong = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu));
        assert!(opt.load_state(vec![("first/w".into(), wrong.shallow_clone())], 1).is_err());
        assert!(opt.load_state(vec![("first/other".into(), wrong)], 1).is_err());
    }
}
