//! The CUDA backend: hand-written kernels in `kernels/cuda/*.cu`, compiled at run time by NVRTC and
//! launched through `cudarc` with dynamic loading, so the binary never links the CUDA libraries and
//! starts on machines without them. This module probes for `libcuda` and `libnvrtc` *before* the first
//! cudarc call (cudarc panics when a library is missing); [`crate::select_backend`] falls back to the
//! CPU and reports why. It does not implement the dense GraphSAGE steps on the GPU (they run on the CPU).

mod engine;

use std::panic::AssertUnwindSafe;
use std::path::Path;

pub use engine::{CudaEngine, DeviceGraph};

use crate::error::KernelError;

/// Source of the aggregation kernels.
pub const AGGREGATE_CU: &str = include_str!("../../cuda/aggregate.cu");
/// Source of the cosine-similarity kernel.
pub const SIMILARITY_CU: &str = include_str!("../../cuda/similarity.cu");
/// Every `.cu` source of the crate, by file name, for tests that compile them all.
pub const SOURCES: [(&str, &str); 2] = [("aggregate.cu", AGGREGATE_CU), ("similarity.cu", SIMILARITY_CU)];

/// Environment variable naming an explicit `libnvrtc` file to load (for example the one that
/// `pip install nvidia-cuda-nvrtc-cu12` puts in `site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12`).
pub const NVRTC_PATH_ENV: &str = "PLEXUS_NVRTC_PATH";

/// Loads a library by path and keeps it loaded for the life of the process. cudarc later opens NVRTC by
/// its soname (`libnvrtc.so.12`), which the dynamic loader resolves to this already-loaded copy.
pub fn preload_library(path: &Path) -> Result<(), String> {
    // SAFETY: loading runs the library's initialisers; NVRTC's and the driver's have no preconditions.
    match unsafe { libloading::Library::new(path) } {
        Ok(lib) => {
            // Deliberately leaked: unloading would invalidate the symbols cudarc caches.
            std::mem::forget(lib);
            Ok(())
        }
        Err(e) => Err(format!("cannot load {}: {e}", path.display())),
    }
}

/// Whether NVRTC can be loaded; the error names what was searched.
pub fn probe_nvrtc() -> Result<(), String> {
    if let Some(p) = std::env::var_os(NVRTC_PATH_ENV) {
        preload_library(Path::new(&p))?;
    }
    // SAFETY: `is_culib_present` only tries `dlopen` on candidate names; it never calls into the library.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(format!(
            "NVRTC library libnvrtc.so not found (searched the loader path for libnvrtc.so, libnvrtc.so.12, ...; \
             set LD_LIBRARY_PATH or {NVRTC_PATH_ENV})"
        ))
    }
}

/// Whether the CUDA driver library can be loaded and reports at least one device.
pub fn probe_driver() -> Result<usize, String> {
    // SAFETY: as in `probe_nvrtc`, this only attempts `dlopen`.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("CUDA driver library libcuda.so.1 not found (no NVIDIA driver on this machine)".into());
    }
    // The library loads, so cudarc will not panic for a missing library; catch_unwind guards against a
    // driver that lacks a symbol of the bindings' version, which cudarc also reports by panicking.
    let count = std::panic::catch_unwind(AssertUnwindSafe(cudarc::driver::CudaContext::device_count))
        .map_err(|_| "CUDA driver library is present but could not be initialised".to_string())?
        .map_err(|e| format!("CUDA driver error while counting devices: {e:?}"))?;
    if count <= 0 {
        return Err("CUDA driver library libcuda.so.1 loaded but reports no CUDA device".into());
    }
    Ok(count as usize)
}

/// Probes both libraries; `Ok` carries a description of what was found.
pub fn probe() -> Result<String, String> {
    let devices = probe_driver()?;
    probe_nvrtc()?;
    Ok(format!("{devices} CUDA device(s), NVRTC loaded"))
}

/// Compiles one `.cu` source to PTX for `compute_<arch>` (for example `"80"`), or NVRTC's default
/// architecture when `arch` is `None`. Call [`probe_nvrtc`] first: cudarc panics if NVRTC is missing.
pub fn compile_ptx(src: &str, name: &str, arch: Option<&str>) -> Result<cudarc::nvrtc::Ptx, KernelError> {
    let mut options = vec!["--std=c++17".to_string()];
    if let Some(a) = arch {
        options.push(format!("--gpu-architecture=compute_{a}"));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        fmad: Some(true),
        options,
        name: Some(name.to_string()),
        ..Default::default()
    };
    probe_nvrtc().map_err(KernelError::Cuda)?;
    cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| KernelError::Cuda(format!("NVRTC {name}: {e}")))
}
