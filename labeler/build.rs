//! Find the ONNX Runtime shared library installed by `make setup` and embed its path, so the labeler runs
//! without anyone exporting `ORT_DYLIB_PATH` or `LD_LIBRARY_PATH`. `ORT_DYLIB_PATH` still wins at run time.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MUST_PYTHON");
    println!("cargo:rerun-if-env-changed=ORT_DYLIB_PATH");
    let workspace = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let python = std::env::var("MUST_PYTHON").map(PathBuf::from).unwrap_or_else(|_| workspace.join(".venv/bin/python"));
    let found = Command::new(&python)
        .args([
            "-c",
            "import glob, os, onnxruntime; d = os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'); \
             print(sorted(glob.glob(os.path.join(d, 'libonnxruntime.so*')) + glob.glob(os.path.join(d, 'libonnxruntime*.dylib')))[-1])",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|p| !p.is_empty());
    // `make setup GPU=1` installs ONNX Runtime's GPU build here; the labeler looks for it at run time.
    println!("cargo:rustc-env=MUST_ORT_GPU_DIR={}", workspace.join(".venv/ort-gpu").display());
    match found {
        Some(path) => {
            println!("cargo:rerun-if-changed={path}");
            println!("cargo:rustc-env=MUST_ORT_DYLIB_DEFAULT={path}");
        }
        None => {
            // Watch the interpreter so that running `make setup` after a build makes the next build look again.
            println!("cargo:rerun-if-changed={}", python.display());
            println!(
                "cargo:warning=ONNX Runtime not found through {}; run `make setup` or set ORT_DYLIB_PATH at run time",
                python.display()
            );
            println!("cargo:rustc-env=MUST_ORT_DYLIB_DEFAULT=");
        }
    }
}
