//! Embed libtorch's library directory as an rpath so the end-to-end tests (which link the trainer) run
//! without `LD_LIBRARY_PATH`. torch-sys reports the directory through its `links = "tch"` metadata.

fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    } else {
        println!("cargo:warning=torch-sys did not report libtorch's lib directory; binaries may need LD_LIBRARY_PATH");
    }
}
