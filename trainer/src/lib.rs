//! The trainer: streams committed shards and trains one multi-task student (MuST §3.2).
//!
//! Work in progress (see the trainer issue). What is here proves the native half of the foundation:
//! libtorch from the project venv links through `tch`, and the rpath embedded by `build.rs` lets the
//! test binary load it with no `LD_LIBRARY_PATH`.

#[cfg(test)]
mod tests {
    #[test]
    fn libtorch_loads_and_computes() {
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        assert_eq!(t.sum(tch::Kind::Float).double_value(&[]), 6.0);
    }
}
