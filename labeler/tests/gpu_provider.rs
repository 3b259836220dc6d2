//! Asking for a GPU provider on a machine without one fails at start, before any image is read, with a
//! message that says what is missing: the GPU build of ONNX Runtime (`make setup GPU=1`), or, when that is
//! installed, the library or device the CUDA provider could not load. Its own test binary, because a process
//! loads one ONNX Runtime library and this one must not have loaded the CPU build first.

mod common;

use common::workspace;
use labeler::config::load_teacher_file;
use labeler::runtime::{Provider, SessionSettings};
use labeler::spec::Thresholds;
use labeler::teacher::Teacher;

#[test]
fn a_gpu_provider_without_a_gpu_is_a_clear_error_at_load() {
    if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        return; // the library is the caller's choice then; the message depends on it
    }
    if std::path::Path::new("/dev/nvidiactl").exists() {
        return; // a GPU machine: the providers may well start
    }
    let file = workspace().join("teachers/demo.toml");
    let entries = load_teacher_file(&file, &Thresholds::default()).unwrap();
    for provider in [Provider::Cuda, Provider::Tensorrt] {
        let settings = SessionSettings { provider, ..SessionSettings::cpu(1) };
        let err = match Teacher::load(&entries[0].spec, &entries[0].file, &settings) {
            Ok(_) => panic!("{provider:?} loaded on a machine the tests run on without a GPU"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&format!("{provider:?}")) && err.contains("make setup GPU=1"), "{err}");
    }
}
