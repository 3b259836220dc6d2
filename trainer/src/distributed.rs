//! Data-parallel training over PyTorch's own distributed engine, c10d, reached through a small C++ shim
//! (`csrc/c10d_shim.cpp`, built by `build.rs` against the libtorch the trainer links). Nothing here is a
//! home-made collective: rendezvous is c10d's `TCPStore`, the all-reduce and broadcast are
//! `ProcessGroupGloo`'s on CPU and `ProcessGroupNCCL`'s on CUDA.
//!
//! What a data-parallel run does, and where:
//! - [`World::from_env`] reads the launcher's variables (torchrun's `RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
//!   `MASTER_ADDR`, `MASTER_PORT`; Slurm's `SLURM_PROCID`, `SLURM_LOCALID`, `SLURM_NTASKS` mapped onto
//!   them);
//! - [`ProcessGroup::broadcast_from_root`] makes every rank start from rank 0's weights and buffers;
//! - [`ProcessGroup::average_gradients`] all-reduces gradients in flat buckets after backward, before
//!   the optimiser step, so every rank applies the same update;
//! - [`GlobalCount`] turns the losses' local denominators (rows present, positive locations) into the
//!   global batch's, so averaging the ranks' gradients gives the single-process gradient of the global
//!   batch exactly (up to float summation order);
//! - [`sync_batch_norm`] computes batch-norm statistics over the global batch (differentiably: the
//!   shim's all-reduce passes gradients back to every rank);
//! - the loader gives each rank a disjoint slice of every global batch (`DataConfig::rank`), and only
//!   rank 0 writes checkpoints, metrics and plots (`train::run`).
//!
//! A rank that dies makes the others fail within the group's timeout with an error naming the
//! collective, rather than hang.

#![allow(unsafe_code)] // FFI to the c10d shim; every call is checked and documented below.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tch::{Device, Kind, Tensor};

/// Where this process stands in a data-parallel job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub local_rank: usize,
    pub size: usize,
    pub master_addr: String,
    pub master_port: u16,
}

/// A distributed setup that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("environment variable {var}={value:?}: {reason}")]
    Env { var: &'static str, value: String, reason: String },
    #[error("c10d {what} failed on rank {rank} of {size}: {message}")]
    Collective { what: &'static str, rank: usize, size: usize, message: String },
    #[error("joining the process group at {addr}:{port} as rank {rank} of {size}: {message}")]
    Join { addr: String, port: u16, rank: usize, size: usize, message: String },
}

impl World {
    /// The single-process world.
    pub fn single() -> World {
        World { rank: 0, local_rank: 0, size: 1, master_addr: "127.0.0.1".into(), master_port: 29500 }
    }

    /// Reads torchrun's variables, or Slurm's when torchrun's are absent; a single process when neither
    /// is set. `MASTER_ADDR` is required with more than one process; `MASTER_PORT` defaults to 29500.
    pub fn from_env() -> Result<World, DistError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`World::from_env`] over any variable source (tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<World, DistError> {
        let num = |var: &'static str| -> Result<Option<usize>, DistError> {
            match get(var) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|e| DistError::Env {
                    var,
                    value: v.clone(),
                    reason: format!("not a non-negative integer ({e})"),
                }),
            }
        };
        let (size_var, rank_var, size, rank, local) = if let Some(size) = num("WORLD_SIZE")? {
            ("WORLD_SIZE", "RANK", size, num("RANK")?, num("LOCAL_RANK")?)
        } else if let Some(size) = num("SLURM_NTASKS")? {
            ("SLURM_NTASKS", "SLURM_PROCID", size, num("SLURM_PROCID")?, num("SLURM_LOCALID")?)
        } else {
            return Ok(World::single());
        };
        if size == 0 {
            return Err(DistError::Env { var: size_var, value: "0".into(), reason: "must be at least 1".into() });
        }
        let rank = rank.unwrap_or(0);
        if rank >= size {
            return Err(DistError::Env {
                var: rank_var,
                value: rank.to_string(),
                reason: format!("must be below {size_var}={size}"),
            });
        }
        let master_addr = get("MASTER_ADDR").unwrap_or_default();
        if size > 1 && master_addr.trim().is_empty() {
            return Err(DistError::Env {
                var: "MASTER_ADDR",
                value: master_addr,
                reason: format!("{size_var}={size} needs the address of rank 0's rendezvous (torchrun sets it)"),
            });
        }
        let master_port = match get("MASTER_PORT") {
            None => 29500,
            Some(v) => v.trim().parse::<u16>().map_err(|e| DistError::Env {
                var: "MASTER_PORT",
                value: v.clone(),
                reason: format!("not a port number ({e})"),
            })?,
        };
        // Without LOCAL_RANK (one process per pod, as a PyTorchJob without torchrun runs it) the process
        // owns its machine's first GPU.
        Ok(World { rank, local_rank: local.unwrap_or(0), size, master_addr, master_port })
    }

    pub fn is_root(&self) -> bool {
        self.rank == 0
    }
}

extern "C" {
    fn must_c10d_init(
        addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: c_int,
        nccl: c_int,
        serve: c_int,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn must_c10d_free(group: *mut c_void);
    fn must_c10d_free_error(err: *mut c_char);
    fn must_c10d_allreduce_sum(group: *mut c_void, tensor: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn must_c10d_broadcast(group: *mut c_void, tensor: *mut c_void, root: c_int, err: *mut *mut c_char) -> c_int;
    fn must_c10d_barrier(group: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn must_c10d_allreduce_sum_autograd(
        group: *mut c_void,
        x: *mut c_void,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
}

/// Takes the shim's error message (and frees it).
fn take_error(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error".into();
    }
    // SAFETY: the shim returns a NUL-terminated string from strdup, freed exactly once here.
    let message = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { must_c10d_free_error(err) };
    message
}

/// The tensor as the `at::Tensor*` the shim expects (what a `tch::Tensor` wraps).
fn raw(t: &Tensor) -> *mut c_void {
    t.as_ptr() as *mut c_void
}

/// A joined c10d process group (Gloo or NCCL).
pub struct ProcessGroup {
    ptr: NonNull<c_void>,
    world: World,
}

// SAFETY: c10d backends are thread-safe for issuing collectives; the trainer issues them from one thread
// at a time (the training loop), and the handle is only freed on drop.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup").field("world", &self.world).finish()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from must_c10d_init and is freed once.
        unsafe { must_c10d_free(self.ptr.as_ptr()) };
    }
}

impl ProcessGroup {
    /// Joins the group of `world` (rank 0 serves the rendezvous): NCCL on a CUDA device, Gloo otherwise.
    /// Every collective fails after `timeout` instead of waiting for a rank that is gone.
    pub fn join(world: &World, device: Device, timeout: Duration) -> Result<ProcessGroup, DistError> {
        let join_err = |message: String| DistError::Join {
            addr: world.master_addr.clone(),
            port: world.master_port,
            rank: world.rank,
            size: world.size,
            message,
        };
        let addr = CString::new(world.master_addr.clone()).map_err(|e| join_err(e.to_string()))?;
        let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as c_int;
        // torchrun's agent already serves the store on MASTER_PORT (and says so); rank 0 serves it otherwise.
        let agent_store = std::env::var("TORCHELASTIC_USE_AGENT_STORE").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let mut out: *mut c_void = std::ptr::null_mut();
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: pointers are valid for the call; the shim fills `out` or `err`.
        let rc = unsafe {
            must_c10d_init(
                addr.as_ptr(),
                c_int::from(world.master_port),
                world.rank as c_int,
                world.size as c_int,
                timeout_ms,
                c_int::from(device.is_cuda()),
                c_int::from(!agent_store),
                &mut out,
                &mut err,
            )
        };
        if rc != 0 {
            return Err(join_err(take_error(err)));
        }
        let ptr = NonNull::new(out).ok_or_else(|| join_err("the shim returned no group".into()))?;
        Ok(ProcessGroup { ptr, world: world.clone() })
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    fn check(&self, what: &'static str, rc: c_int, err: *mut c_char) -> Result<(), DistError> {
        if rc == 0 {
            return Ok(());
        }
        Err(DistError::Collective { what, rank: self.world.rank, size: self.world.size, message: take_error(err) })
    }

    /// In place: `t` becomes the sum of every rank's `t`. `t` must be contiguous.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<(), DistError> {
        let mut err = std::ptr::null_mut();
        // SAFETY: `t` outlives the call; the shim catches every C++ exception.
        let rc = unsafe { must_c10d_allreduce_sum(self.ptr.as_ptr(), raw(t), &mut err) };
        self.check("all-reduce", rc, err)
    }

    /// In place: `t` becomes rank `root`'s `t`. `t` must be contiguous.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), DistError> {
        let mut err = std::ptr::null_mut();
        // SAFETY: as in all_reduce_sum.
        let rc = unsafe { must_c10d_broadcast(self.ptr.as_ptr(), raw(t), root as c_int, &mut err) };
        self.check("broadcast", rc, err)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<(), DistError> {
        let mut err = std::ptr::null_mut();
        // SAFETY: as in all_reduce_sum.
        let rc = unsafe { must_c10d_barrier(self.ptr.as_ptr(), &mut err) };
        self.check("barrier", rc, err)
    }

    /// `Σ_ranks x` as a new tensor that autograd differentiates: each rank's `x` receives the sum over
    /// ranks of the result's gradient.
    pub fn all_reduce_sum_differentiable(&self, x: &Tensor) -> Result<Tensor, DistError> {
        let x = x.contiguous();
        let mut out: *mut c_void = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        // SAFETY: as in all_reduce_sum; on success `out` is a new `at::Tensor*` that the returned
        // `tch::Tensor` owns (and frees on drop).
        let rc = unsafe { must_c10d_allreduce_sum_autograd(self.ptr.as_ptr(), raw(&x), &mut out, &mut err) };
        self.check("differentiable all-reduce", rc, err)?;
        Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
    }

    /// Every tensor becomes rank 0's (parameters and buffers at the start of a run), in flat buckets
    /// of one dtype.
    pub fn broadcast_from_root(&self, tensors: &[Tensor]) -> Result<(), DistError> {
        for_buckets(tensors, |flat, _| self.broadcast(flat, 0))
    }

    /// Gradients of `params` become their mean over ranks, all-reduced in flat buckets of at most
    /// `bucket_bytes` (parameters without a gradient are skipped on every rank alike).
    pub fn average_gradients(&self, params: &[Tensor], bucket_bytes: usize) -> Result<(), DistError> {
        let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
        let scale = 1.0 / self.world.size as f64;
        let mut start = 0;
        while start < grads.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < grads.len() && (end == start || bytes + nbytes(&grads[end]) <= bucket_bytes) {
                bytes += nbytes(&grads[end]);
                end += 1;
            }
            for_buckets(&grads[start..end], |flat, _| {
                self.all_reduce_sum(flat)?;
                let _ = flat.shallow_clone().g_mul_scalar_(scale);
                Ok(())
            })?;
            start = end;
        }
        Ok(())
    }
}

fn nbytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

/// Runs `f` on one flat copy of `tensors` per (kind, device) and copies the result back.
fn for_buckets(
    tensors: &[Tensor],
    mut f: impl FnMut(&Tensor, usize) -> Result<(), DistError>,
) -> Result<(), DistError> {
    let mut groups: Vec<((Kind, Device), Vec<&Tensor>)> = Vec::new();
    for t in tensors {
        let key = (t.kind(), t.device());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(t),
            None => groups.push((key, vec![t])),
        }
    }
    tch::no_grad(|| {
        for (_, ts) in &groups {
            let flat = Tensor::cat(&ts.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0);
            f(&flat, ts.len())?;
            let mut offset = 0;
            for t in ts {
                let n = t.numel() as i64;
                let mut dst = (*t).shallow_clone();
                dst.copy_(&flat.narrow(0, offset, n).view_as(t));
                offset += n;
            }
        }
        Ok(())
    })
}

/// How a loss turns a local count (rows present, positive locations) into its denominator.
///
/// One process: `max(count, floor)`. Data-parallel over `W` ranks: `max(Σ_ranks count, floor) / W`, so
/// each rank's loss is `W · (its share of the global sum) / global count` and the mean of the ranks'
/// gradients is exactly the gradient of the global batch's loss.
pub trait GlobalCount {
    fn denominator(&self, local: &Tensor, floor: f64) -> Tensor;
}

/// The single-process denominator.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalCount;

impl GlobalCount for LocalCount {
    fn denominator(&self, local: &Tensor, floor: f64) -> Tensor {
        local.clamp_min(floor)
    }
}

impl GlobalCount for ProcessGroup {
    fn denominator(&self, local: &Tensor, floor: f64) -> Tensor {
        let global = local.detach().to_kind(Kind::Float).contiguous().copy();
        if let Err(e) = self.all_reduce_sum(&global) {
            // A peer is gone: recorded for the training loop, which fails with it after the forward pass.
            FAILED.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            return Tensor::full([], f64::NAN, (Kind::Float, local.device()));
        }
        global.clamp_min(floor) / self.world.size as f64
    }
}

static SYNC_BN: OnceLock<Arc<ProcessGroup>> = OnceLock::new();

/// Makes every batch norm of this process compute training statistics over all ranks of `group`.
/// Process-wide (there is one training group per process); the first call wins.
pub fn enable_sync_batch_norm(group: Arc<ProcessGroup>) {
    let _ = SYNC_BN.set(group);
}

/// The group whose ranks share batch-norm statistics, if synchronised batch norm is on.
pub(crate) fn sync_batch_norm_group() -> Option<&'static ProcessGroup> {
    SYNC_BN.get().map(|g| g.as_ref())
}

static FAILED: Mutex<Option<DistError>> = Mutex::new(None);

/// The first collective failure inside a forward pass (synchronised batch norm cannot return an error
/// through `forward_t`); the training loop checks it after every forward and fails with it.
pub fn take_forward_error() -> Option<DistError> {
    FAILED.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// Training-mode batch norm over the global batch of `group`: mean and variance from all ranks' sums
/// (two differentiable all-reduces), running statistics updated with the global values (unbiased
/// variance, as `torch.nn.SyncBatchNorm`), so every rank keeps identical running statistics. On a
/// collective failure it records the error (see [`take_forward_error`]) and returns NaNs.
pub(crate) fn sync_batch_norm(
    group: &ProcessGroup,
    x: &Tensor,
    bn: &tch::nn::BatchNorm,
    eps: f64,
    momentum: f64,
) -> Tensor {
    match try_sync_batch_norm(group, x, bn, eps, momentum) {
        Ok(y) => y,
        Err(e) => {
            FAILED.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            x.full_like(f64::NAN)
        }
    }
}

fn try_sync_batch_norm(
    group: &ProcessGroup,
    x: &Tensor,
    bn: &tch::nn::BatchNorm,
    eps: f64,
    momentum: f64,
) -> Result<Tensor, DistError> {
    let dims = [0i64, 2, 3];
    let channels = x.size()[1];
    let local_n = (x.numel() as i64 / channels) as f64;
    let count = Tensor::full([1], local_n, (Kind::Float, x.device()));
    let sums = group.all_reduce_sum_differentiable(&Tensor::cat(
        &[x.sum_dim_intlist(dims.as_slice(), false, Kind::Float), count],
        0,
    ))?;
    let n = sums.get(channels).double_value(&[]);
    let mean = sums.narrow(0, 0, channels) / n;
    let centred = x - mean.view([1, -1, 1, 1]);
    let sq = group.all_reduce_sum_differentiable(&(&centred * &centred).sum_dim_intlist(
        dims.as_slice(),
        false,
        Kind::Float,
    ))?;
    let var = &sq / n;
    tch::no_grad(|| {
        let unbiased = var.detach() * (n / (n - 1.0).max(1.0));
        let mut rm = bn.running_mean.shallow_clone();
        let mut rv = bn.running_var.shallow_clone();
        rm.copy_(&(&rm * (1.0 - momentum) + mean.detach() * momentum));
        rv.copy_(&(&rv * (1.0 - momentum) + unbiased * momentum));
    });
    let mut y = centred * (var + eps).rsqrt().view([1, -1, 1, 1]);
    if let Some(w) = &bn.ws {
        y *= w.view([1, -1, 1, 1]);
    }
    if let Some(b) = &bn.bs {
        y += b.view([1, -1, 1, 1]);
    }
    Ok(y.to_kind(x.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let owned: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| owned.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn reads_torchrun_and_slurm_variables() {
        assert_eq!(World::from_vars(vars(&[])).unwrap(), World::single());
        let w = World::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ]))
        .unwrap();
        assert_eq!((w.rank, w.local_rank, w.size, w.master_addr.as_str(), w.master_port), (3, 1, 4, "node0", 1234));
        let s = World::from_vars(vars(&[
            ("SLURM_NTASKS", "2"),
            ("SLURM_PROCID", "1"),
            ("SLURM_LOCALID", "0"),
            ("MASTER_ADDR", "n1"),
        ]))
        .unwrap();
        assert_eq!((s.rank, s.local_rank, s.size, s.master_port), (1, 0, 2, 29500));
    }

    #[test]
    fn bad_variables_are_named() {
        let e = World::from_vars(vars(&[("WORLD_SIZE", "two")])).unwrap_err().to_string();
        assert!(e.contains("WORLD_SIZE") && e.contains("two"), "{e}");
        let e = World::from_vars(vars(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "a")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("RANK") && e.contains("below"), "{e}");
        let e = World::from_vars(vars(&[("WORLD_SIZE", "2"), ("RANK", "0")])).unwrap_err().to_string();
        assert!(e.contains("MASTER_ADDR"), "{e}");
    }

    #[test]
    fn a_group_of_one_reduces_and_broadcasts_to_itself() {
        // A real Gloo group of one process on loopback: the collectives run through c10d end to end.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let world = World { master_port: port, ..World::single() };
        let g = ProcessGroup::join(&world, Device::Cpu, Duration::from_secs(30)).unwrap();
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        g.all_reduce_sum(&t).unwrap();
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.0, 2.0, 3.0]);
        let x = Tensor::from_slice(&[2.0f32, 4.0]).set_requires_grad(true);
        let y = g.all_reduce_sum_differentiable(&x).unwrap();
        (&y * &y).sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(&x.grad()).unwrap(), vec![4.0, 8.0]);
        g.barrier().unwrap();

        // Synchronised batch norm over a group of one is batch norm: outputs, gradients, running stats.
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let cfg = tch::nn::BatchNormConfig::default();
        let (native, synced) =
            (tch::nn::batch_norm2d(vs.root() / "a", 3, cfg), tch::nn::batch_norm2d(vs.root() / "b", 3, cfg));
        tch::no_grad(|| {
            synced.ws.as_ref().unwrap().shallow_clone().copy_(native.ws.as_ref().unwrap());
        });
        let x = (Tensor::randn([4, 3, 5, 5], (Kind::Float, Device::Cpu)) * 3.0 + 1.0).set_requires_grad(true);
        let ya = x.apply_t(&native, true);
        let yb = sync_batch_norm(&g, &x, &synced, cfg.eps, cfg.momentum);
        let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        assert!(diff(&ya, &yb) < 1e-5, "outputs differ by {}", diff(&ya, &yb));
        assert!(diff(&native.running_mean, &synced.running_mean) < 1e-6);
        assert!(
            diff(&native.running_var, &synced.running_var) < 1e-5,
            "running var {:?} vs {:?}",
            Vec::<f32>::try_from(&native.running_var).unwrap(),
            Vec::<f32>::try_from(&synced.running_var).unwrap()
        );
        let ga = tch::Tensor::run_backward(&[(&ya * &ya).sum(Kind::Float)], &[&x], false, false);
        let gb = tch::Tensor::run_backward(&[(&yb * &yb).sum(Kind::Float)], &[&x], false, false);
        assert!(diff(&ga[0], &gb[0]) < 1e-4, "input gradients differ by {}", diff(&ga[0], &gb[0]));
    }

    #[test]
    fn synchronised_batch_norm_over_two_ranks_is_batch_norm_over_the_global_batch() {
        // Two ranks as two threads of this process, each with its own Gloo group on loopback.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let x = Tensor::randn([6, 4, 5, 5], (Kind::Float, Device::Cpu)) * 2.0 + 0.5;
        let up = Tensor::randn([6, 4, 5, 5], (Kind::Float, Device::Cpu));
        let conv_w = Tensor::randn([4, 4, 3, 3], (Kind::Float, Device::Cpu)) * 0.3;
        // Reference: one process, the whole batch, libtorch's batch norm.
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let cfg = tch::nn::BatchNormConfig { ws_init: tch::nn::Init::Const(1.0), ..Default::default() };
        let native = tch::nn::batch_norm2d(vs.root(), 4, cfg);
        let w = conv_w.copy().set_requires_grad(true);
        let y = x.conv2d(&w, None::<Tensor>, [1], [1], [1], 1).apply_t(&native, true);
        let reference_loss = (&y * &up).sum(Kind::Float) / 6.0;
        let g_ref = Tensor::run_backward(&[&reference_loss], &[&w], false, false).remove(0);

        let ranks: Vec<_> = (0..2usize)
            .map(|rank| {
                let (x, up, conv_w) =
                    (x.narrow(0, 3 * rank as i64, 3).copy(), up.narrow(0, 3 * rank as i64, 3).copy(), conv_w.copy());
                std::thread::spawn(move || {
                    let world =
                        World { rank, local_rank: rank, size: 2, master_addr: "127.0.0.1".into(), master_port: port };
                    let g = ProcessGroup::join(&world, Device::Cpu, Duration::from_secs(30)).unwrap();
                    let vs = tch::nn::VarStore::new(Device::Cpu);
                    let cfg = tch::nn::BatchNormConfig { ws_init: tch::nn::Init::Const(1.0), ..Default::default() };
                    let bn = tch::nn::batch_norm2d(vs.root(), 4, cfg);
                    let w = conv_w.set_requires_grad(true);
                    let h = x.conv2d(&w, None::<Tensor>, [1], [1], [1], 1);
                    let y = sync_batch_norm(&g, &h, &bn, 1e-5, 0.1);
                    // This rank's share of the global mean loss, scaled as the trainer's losses are.
                    let loss = (&y * &up).sum(Kind::Float) / 3.0;
                    let gw = Tensor::run_backward(&[&loss], &[&w], false, false).remove(0);
                    g.all_reduce_sum(&gw).unwrap();
                    let gw = gw / 2.0;
                    (Vec::<f32>::try_from(gw.flatten(0, -1)).unwrap(), Vec::<f32>::try_from(&bn.running_var).unwrap())
                })
            })
            .collect();
        let results: Vec<_> = ranks.into_iter().map(|h| h.join().unwrap()).collect();
        let reference = Vec::<f32>::try_from(g_ref.flatten(0, -1)).unwrap();
        let running = Vec::<f32>::try_from(&native.running_var).unwrap();
        for (gw, rv) in &results {
            let worst = gw.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "conv gradient differs by {worst}");
            let worst = rv.iter().zip(&running).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "running variance differs by {worst}");
        }
    }
}
