//! Running `tools/export/torchscript_to_onnx.py`: only PyTorch's exporter turns TorchScript into ONNX.
//!
//! The script is compiled into the binary and run with `python -c`, so an installed `trainer` needs a
//! Python with torch and onnx but not the source tree. The interpreter is found like everywhere else in
//! the project: `$MUST_PYTHON`, else the workspace's `.venv/bin/python` (when the binary was built in
//! one), else `python3` on the `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = include_str!("../../../tools/export/torchscript_to_onnx.py");
/// The script's exit code when torch or onnx cannot be imported.
const MISSING_MODULE_EXIT: i32 = 3;

/// The Python to run, and where it came from (for messages).
pub(super) fn interpreter() -> Result<(PathBuf, &'static str), String> {
    if let Some(p) = std::env::var_os("MUST_PYTHON") {
        let p = PathBuf::from(p);
        if !p.exists() {
            return Err(format!("MUST_PYTHON is {}, which does not exist (run `make setup`)", p.display()));
        }
        return Ok((p, "MUST_PYTHON"));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if venv.exists() {
        return Ok((venv, "the workspace venv"));
    }
    Ok((PathBuf::from("python3"), "PATH"))
}

/// Runs the conversion script with `args`; returns what it printed (its own ONNX Runtime check).
pub(super) fn convert(args: &[std::ffi::OsString]) -> Result<String, String> {
    let (python, source) = interpreter()?;
    let out = Command::new(&python).arg("-c").arg(SCRIPT).args(args).output().map_err(|e| {
        format!(
            "cannot run {} (from {source}): {e}; export needs a Python with torch and onnx \
             (run `make setup`, or set MUST_PYTHON)",
            python.display()
        )
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        Some(MISSING_MODULE_EXIT) => Err(format!(
            "{} (from {source}): {}; run `make setup`, or set MUST_PYTHON to a Python with torch and onnx",
            python.display(),
            stderr.trim()
        )),
        _ => Err(format!(
            "tools/export/torchscript_to_onnx.py with {} failed ({}):\n{}",
            python.display(),
            out.status,
            tail(&stderr, 40)
        )),
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
