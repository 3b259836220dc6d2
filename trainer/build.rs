//! Two jobs:
//! - embed libtorch's library directory as an rpath so the trainer's binaries and tests run without
//!   `LD_LIBRARY_PATH` (torch-sys reports the directory through its `links = "tch"` metadata);
//! - compile `csrc/c10d_shim.cpp`, the C ABI over PyTorch's distributed engine (c10d) that
//!   `trainer::distributed` calls, against the same libtorch (the way torch-sys builds its own wrappers).
//!
//! Gloo's C++ headers are not in the torch wheel: `make setup` unpacks Debian's `libgloo-dev` into
//! `.venv/gloo` (override with `MUST_GLOO_INCLUDE`). With the `nccl` feature the shim also builds
//! ProcessGroupNCCL, from the NCCL and CUDA headers that the CUDA torch wheel's `nvidia-*` packages ship.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=csrc/c10d_shim.cpp");
    println!("cargo:rerun-if-env-changed=MUST_GLOO_INCLUDE");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report libtorch's lib directory; binaries may need LD_LIBRARY_PATH");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let lib = PathBuf::from(lib);
    let torch = lib.parent().expect("libtorch's lib directory has a parent").to_path_buf();
    let gloo = gloo_include();

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(torch.join("include"))
        .include(torch.join("include/torch/csrc/api/include"))
        .include(&gloo)
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_DISTRIBUTED", None)
        .define("USE_C10D_GLOO", None)
        .define("GLOG_USE_GLOG_EXPORT", None)
        .file("csrc/c10d_shim.cpp");
    if std::env::var_os("CARGO_FEATURE_NCCL").is_some() {
        let site = torch.parent().expect("torch sits in site-packages").to_path_buf();
        let nccl = site.join("nvidia/nccl/include");
        let cuda = std::fs::read_dir(site.join("nvidia"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("include"))
            .find(|p| p.join("cuda_runtime_api.h").is_file());
        let complete = |c: &Path| c.join("crt/host_config.h").is_file() && c.join("nv/target").is_file();
        let (true, Some(cuda)) = (nccl.join("nccl.h").is_file(), cuda.filter(|c| complete(c))) else {
            panic!(
                "the `nccl` feature needs nccl.h and the CUDA headers (cuda_runtime_api.h, crt/host_config.h, \
                 nv/target) from the CUDA torch wheel's nvidia packages, looked for under {}: run `make setup \
                 GPU=1`, which installs `nvidia-cuda-crt` and `nvidia-cuda-cccl` next to torch",
                site.join("nvidia").display()
            );
        };
        build.include(nccl).include(cuda).define("USE_C10D_NCCL", None).define("USE_CUDA", None);
        build.define("MUST_WITH_NCCL", None);
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
    build.compile("must_c10d_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    for l in ["torch", "torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
}

/// Gloo's headers: `MUST_GLOO_INCLUDE`, or what `make setup` unpacked under the workspace's `.venv`.
fn gloo_include() -> PathBuf {
    let dir = match std::env::var("MUST_GLOO_INCLUDE") {
        Ok(d) => PathBuf::from(d),
        Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/gloo/usr/include"),
    };
    if !dir.join("gloo/algorithm.h").is_file() {
        panic!(
            "Gloo's C++ headers are missing (no gloo/algorithm.h under {}): run `make setup`, which unpacks \
             Debian's libgloo-dev there, or point MUST_GLOO_INCLUDE at a directory holding gloo/",
            dir.display()
        );
    }
    dir
}
