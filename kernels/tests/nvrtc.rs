//! Compiles every `.cu` source of the crate to PTX with NVRTC when the library can be found (on the loader
//! path, through `PLEXUS_NVRTC_PATH`, or as installed by `pip install nvidia-cuda-nvrtc-cu12`). Without it
//! the test prints why and passes: the machines this crate builds on need not have CUDA.

use std::path::PathBuf;
use std::process::Command;

use plexus_kernels::cuda;

/// Asks the local Python where pip put `libnvrtc.so.12`, if it did.
fn pip_nvrtc() -> Option<PathBuf> {
    let script = "import nvidia.cuda_nvrtc as m, os; print(os.path.join(list(m.__path__)[0], 'lib', 'libnvrtc.so.12'))";
    let out = Command::new("python3").args(["-c", script]).output().ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    path.is_file().then_some(path)
}

#[test]
fn every_cu_source_compiles_with_nvrtc() {
    if std::env::var_os(cuda::NVRTC_PATH_ENV).is_none() && cuda::probe_nvrtc().is_err() {
        if let Some(p) = pip_nvrtc() {
            if let Err(e) = cuda::preload_library(&p) {
                println!("pip's NVRTC at {} did not load: {e}", p.display());
            }
        }
    }
    if let Err(reason) = cuda::probe_nvrtc() {
        println!("SKIPPED: NVRTC not available: {reason}");
        return;
    }
    for arch in [None, Some("80"), Some("90")] {
        for (name, src) in cuda::SOURCES {
            let ptx = cuda::compile_ptx(src, name, arch).unwrap_or_else(|e| panic!("{name} for {arch:?}: {e}"));
            let text = ptx.to_src();
            for entry in entries(src) {
                assert!(
                    text.contains(&format!(".entry {entry}(")),
                    "{name}: PTX lacks entry {entry}"
                );
            }
            if let Some(a) = arch {
                assert!(text.contains(&format!(".target sm_{a}")), "{name}: PTX not for sm_{a}");
            }
            println!("compiled {name} for {arch:?}: {} bytes of PTX", text.len());
        }
    }
}

/// The `extern "C" __global__` function names of a source file.
fn entries(src: &str) -> Vec<String> {
    src.split("extern \"C\" __global__ void ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next().map(|n| n.trim().to_string()))
        .collect()
}
