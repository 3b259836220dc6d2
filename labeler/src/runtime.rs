//! The one ONNX Runtime environment of the process, and sessions built from it.
//!
//! ONNX Runtime allows one environment per process, so it lives in a `OnceLock`. The shared library is
//! loaded at run time (`load-dynamic`): `ORT_DYLIB_PATH` if set, else the library `make setup` installed,
//! whose path the build script embedded. Execution providers are requested explicitly; a provider that
//! cannot be registered is an error, never a silent fall-back to CPU.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;

/// Execution providers the labeler can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// CPU (always available).
    Cpu,
    /// CUDA (needs the `onnxruntime-gpu` wheel and a GPU).
    Cuda,
    /// TensorRT (needs an ONNX Runtime build with TensorRT).
    Tensorrt,
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "tensorrt" | "trt" => Ok(Self::Tensorrt),
            other => Err(format!("unknown execution provider {other:?} (expected cpu, cuda or tensorrt)")),
        }
    }
}

/// Errors setting up ONNX Runtime or a session.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime shared library not found: set ORT_DYLIB_PATH to libonnxruntime.so, or run `make setup` and rebuild"
    )]
    LibraryNotFound,
    #[error("loading ONNX Runtime from {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("creating the ONNX Runtime environment: {0}")]
    Environment(String),
    #[error("teacher {teacher:?}: loading model {path}: {message}")]
    Session { teacher: String, path: PathBuf, message: String },
    #[error(
        "teacher {teacher:?}: execution provider {provider:?} could not be started with ONNX Runtime from {library}: \
         {message} (the CUDA and TensorRT providers need ONNX Runtime's GPU build, installed by `make setup GPU=1`, \
         NVIDIA's libraries and a GPU)"
    )]
    ProviderMissing { teacher: String, provider: Provider, library: String, message: String },
    #[error(
        "execution provider {provider:?} needs ONNX Runtime's GPU build, which is not installed: run `make setup GPU=1` \
         (it installs onnxruntime-gpu into {dir}) or set ORT_DYLIB_PATH to its libonnxruntime.so"
    )]
    GpuLibraryNotFound { provider: Provider, dir: String },
}

static ENVIRONMENT: OnceLock<Result<(Environment, PathBuf), String>> = OnceLock::new();

/// Where `make setup GPU=1` installs ONNX Runtime's GPU build (`pip install --target`), beside the CPU build.
const GPU_BUILD_DIR: &str = env!("MUST_ORT_GPU_DIR");

/// Path of the ONNX Runtime library this process loads for `provider`: `ORT_DYLIB_PATH` if set; else the
/// CPU build `make setup` installed, or for CUDA and TensorRT the GPU build `make setup GPU=1` installed.
pub fn library_path(provider: Provider) -> Result<PathBuf, RuntimeError> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    if provider != Provider::Cpu {
        let capi = Path::new(GPU_BUILD_DIR).join("onnxruntime/capi");
        let found = std::fs::read_dir(&capi).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so")))
                .max()
        });
        return found.ok_or(RuntimeError::GpuLibraryNotFound { provider, dir: GPU_BUILD_DIR.to_owned() });
    }
    let embedded = env!("MUST_ORT_DYLIB_DEFAULT");
    if embedded.is_empty() || !Path::new(embedded).exists() {
        return Err(RuntimeError::LibraryNotFound);
    }
    Ok(PathBuf::from(embedded))
}

/// The process-wide environment on the CPU build, created on first use.
pub fn environment() -> Result<&'static Environment, RuntimeError> {
    environment_for(Provider::Cpu)
}

/// The process-wide environment on the library `provider` needs ([`library_path`]), created on first use.
/// A process loads one library: asking for another afterwards is an error that names both.
pub fn environment_for(provider: Provider) -> Result<&'static Environment, RuntimeError> {
    let path = library_path(provider)?;
    let result = ENVIRONMENT.get_or_init(|| {
        if provider != Provider::Cpu {
            preload_cuda_libraries();
        }
        let builder = ort::init_from(&path).map_err(|e| format!("loading {}: {e}", path.display()))?;
        let env = builder.with_name("must-labeler").build().map_err(|e| e.to_string())?;
        Ok((env, path.clone()))
    });
    match result {
        Ok((env, loaded)) if *loaded == path => Ok(env),
        Ok((_, loaded)) => Err(RuntimeError::Environment(format!(
            "this process already loaded ONNX Runtime from {}; provider {provider:?} needs {} (one provider per process)",
            loaded.display(),
            path.display()
        ))),
        Err(e) => Err(RuntimeError::Environment(e.clone())),
    }
}

/// Load NVIDIA's CUDA libraries from the virtualenv's `nvidia/*/lib` (the wheels torch and `make setup GPU=1`
/// install) with global symbols, as the onnxruntime Python package's `preload_dlls` does: ONNX Runtime's CUDA
/// provider library then finds them without `LD_LIBRARY_PATH`. Libraries that are missing or fail to load
/// are skipped; the provider's own error then names what it could not find.
fn preload_cuda_libraries() {
    let embedded = Path::new(env!("MUST_ORT_DYLIB_DEFAULT"));
    // …/site-packages/onnxruntime/capi/libonnxruntime.so.X → …/site-packages/nvidia
    let Some(nvidia) = embedded.ancestors().nth(3).map(|site| site.join("nvidia")) else { return };
    let mut pending: Vec<PathBuf> = std::fs::read_dir(&nvidia)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("lib")))
        .flat_map(|lib| std::fs::read_dir(lib).into_iter().flatten().filter_map(|e| e.ok().map(|e| e.path())))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(".so")))
        .collect();
    pending.sort();
    // Dependencies first, whatever their names: retry what failed while a pass still loads something.
    loop {
        let before = pending.len();
        pending.retain(|lib| load_global(lib).is_err());
        if pending.is_empty() || pending.len() == before {
            break;
        }
    }
}

#[allow(unsafe_code)] // loading a shared library runs its initialisers; these are NVIDIA's own CUDA libraries
fn load_global(lib: &Path) -> Result<(), libloading::Error> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: see above; the handle is leaked on purpose so the library stays loaded for the process.
    let handle = unsafe { Library::open(Some(lib), RTLD_NOW | RTLD_GLOBAL) }?;
    std::mem::forget(handle);
    Ok(())
}

/// Where teachers' per-pixel and per-class post-processing runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Postprocess {
    /// On the device with a GPU provider, on the host with the CPU provider (where the host loops are the
    /// faster of the two).
    #[default]
    Auto,
    /// In a small ONNX Runtime graph on the teacher's execution provider (`crate::postgraph`): only the
    /// compact result (class map, probabilities) crosses to the host.
    Device,
    /// In the labeler's own Rust code on the host, from the teacher's full outputs.
    Host,
}

/// How each teacher's session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSettings {
    pub provider: Provider,
    /// Intra-op threads per session.
    pub intra_threads: usize,
    /// Let idle intra-op threads busy-wait for the next parallel section (ONNX Runtime's default). Off, they
    /// sleep and leave the cores to other work, at some cost in inference throughput.
    pub spin_wait: bool,
    /// Where post-processing runs.
    pub postprocess: Postprocess,
}

impl SessionSettings {
    /// CPU, `threads` intra-op threads, ONNX Runtime's default busy-waiting, post-processing where it is faster.
    pub fn cpu(threads: usize) -> Self {
        Self { provider: Provider::Cpu, intra_threads: threads, spin_wait: true, postprocess: Postprocess::Auto }
    }
}

/// Build a session for `model` with the given settings.
pub fn session(teacher: &str, model: &Path, settings: &SessionSettings) -> Result<Session, RuntimeError> {
    builder(teacher, model, settings)?.commit_from_file(model).map_err(|e| session_error(teacher, model, e))
}

fn session_error(teacher: &str, model: &Path, e: ort::Error) -> RuntimeError {
    RuntimeError::Session { teacher: teacher.to_owned(), path: model.to_owned(), message: e.to_string() }
}

/// A session builder with the given settings (threads, spinning, execution provider) for `teacher`'s
/// model, or for a graph built in memory for it (`model` then names it in errors).
pub fn builder(teacher: &str, model: &Path, settings: &SessionSettings) -> Result<SessionBuilder, RuntimeError> {
    let (provider, threads) = (settings.provider, settings.intra_threads);
    let env = environment_for(provider)?;
    let fail = |e: ort::Error| session_error(teacher, model, e);
    let builder = Session::builder(env)
        .map_err(fail)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| fail(e.into()))?
        .with_intra_threads(threads.max(1))
        .map_err(|e| fail(e.into()))?
        .with_intra_op_spinning(settings.spin_wait)
        .map_err(|e| fail(e.into()))?;
    let library = library_path(provider)?.display().to_string();
    let missing = |e: ort::Error| RuntimeError::ProviderMissing {
        teacher: teacher.to_owned(),
        provider,
        library: library.clone(),
        message: e.to_string(),
    };
    Ok(match provider {
        Provider::Cpu => builder,
        Provider::Cuda => builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| missing(e.into()))?,
        Provider::Tensorrt => builder
            .with_execution_providers([ort::ep::TensorRT::default().build().error_on_failure()])
            .map_err(|e| missing(e.into()))?,
    })
}

/// At most two glibc malloc arenas (call first thing in a binary's `main`). By default glibc gives each
/// thread that allocates concurrently its own arena (up to 8 per core) and keeps freed chunk buffers in
/// them; with a thread per pipeline stage plus decode and ONNX Runtime pools that held hundreds of MB
/// (BENCHMARKS.md, labeler memory).
#[allow(unsafe_code)] // one libc call, no memory is touched
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; meant to be called first thing in `main`.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
