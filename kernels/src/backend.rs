//! Backend choice: which implementation runs a kernel, why it was chosen, and [`Kernels`], the one entry
//! point that dispatches aggregation and cosine scoring to it. This module decides; the arithmetic lives
//! in [`crate::cpu`] and [`crate::cuda`].

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::cpu::{self, Isa};
use crate::csr::{check_shapes, CsrRef, Features};
use crate::cuda::CudaEngine;
use crate::error::KernelError;
use crate::AggOp;

/// An implementation of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The scalar reference, single-threaded.
    Scalar,
    /// AVX2+FMA, multithreaded.
    Avx2,
    /// AVX-512F, multithreaded.
    Avx512,
    /// NEON, multithreaded.
    Neon,
    /// CUDA through NVRTC and cudarc.
    Cuda,
}

impl Backend {
    /// Every backend.
    pub const ALL: [Backend; 5] = [
        Backend::Scalar,
        Backend::Avx2,
        Backend::Avx512,
        Backend::Neon,
        Backend::Cuda,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
            Backend::Neon => "neon",
            Backend::Cuda => "cuda",
        }
    }

    /// Parses a name produced by [`Backend::name`].
    pub fn parse(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The CPU path behind a CPU backend.
    pub fn isa(self) -> Option<Isa> {
        match self {
            Backend::Scalar => Some(Isa::Scalar),
            Backend::Avx2 => Some(Isa::Avx2),
            Backend::Avx512 => Some(Isa::Avx512),
            Backend::Neon => Some(Isa::Neon),
            Backend::Cuda => None,
        }
    }

    /// Whether the backend can run here; for CUDA this probes the libraries (cached).
    pub fn available(self) -> Result<(), String> {
        match self.isa() {
            Some(isa) if isa.available() => Ok(()),
            Some(isa) => Err(format!("this CPU lacks {}", isa.name())),
            None => cuda_probe().clone().map(|_| ()),
        }
    }
}

/// Which backend runs and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// The chosen backend.
    pub backend: Backend,
    /// Its name, with the device or thread count (for example `"avx512 (2 threads)"`).
    pub name: String,
    /// Why it was chosen; when the CPU was chosen this names the missing CUDA library.
    pub reason: String,
}

/// The CUDA probe runs once per process: loading libraries is not free and the answer does not change.
fn cuda_probe() -> &'static Result<String, String> {
    static PROBE: OnceLock<Result<String, String>> = OnceLock::new();
    PROBE.get_or_init(crate::cuda::probe)
}

/// Chooses CUDA when the driver, a device and NVRTC are present, else the widest CPU path.
pub fn select_backend() -> BackendInfo {
    match cuda_probe() {
        Ok(found) => BackendInfo {
            backend: Backend::Cuda,
            name: "cuda".into(),
            reason: found.clone(),
        },
        Err(why) => {
            let isa = Isa::best();
            let backend = Backend::isa_backend(isa);
            BackendInfo {
                backend,
                name: format!("{} ({} threads)", backend.name(), cpu::default_threads()),
                reason: format!(
                    "CUDA unavailable: {why}; using the widest CPU SIMD path detected ({})",
                    isa.name()
                ),
            }
        }
    }
}

/// The backend [`select_backend`] picks, for `plexus kernels info`.
pub fn info() -> BackendInfo {
    select_backend()
}

impl Backend {
    fn isa_backend(isa: Isa) -> Backend {
        match isa {
            Isa::Scalar => Backend::Scalar,
            Isa::Avx2 => Backend::Avx2,
            Isa::Avx512 => Backend::Avx512,
            Isa::Neon => Backend::Neon,
        }
    }
}

/// One backend, ready to run: the single API over CPU and GPU implementations.
pub struct Kernels {
    backend: Backend,
    threads: usize,
    cuda: Option<CudaEngine>,
}

impl Kernels {
    /// Opens `backend` (device 0 for CUDA), failing with the reason when it cannot run here.
    pub fn new(backend: Backend) -> Result<Self, KernelError> {
        backend.available().map_err(|reason| KernelError::BackendUnavailable {
            backend: backend.name(),
            reason,
        })?;
        let cuda = if backend == Backend::Cuda {
            Some(CudaEngine::new(0)?)
        } else {
            None
        };
        Ok(Kernels {
            backend,
            threads: cpu::default_threads(),
            cuda,
        })
    }

    /// The backend [`select_backend`] picks; if CUDA was picked but fails to open, the best CPU path.
    pub fn auto() -> Self {
        let chosen = select_backend().backend;
        Kernels::new(chosen).unwrap_or_else(|_| Kernels {
            backend: Backend::isa_backend(Isa::best()),
            threads: cpu::default_threads(),
            cuda: None,
        })
    }

    /// Sets the number of CPU worker threads (the scalar reference always uses one).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The CUDA engine, when the backend is CUDA (for [`CudaEngine::upload`] and resident graphs).
    pub fn cuda(&self) -> Option<&CudaEngine> {
        self.cuda.as_ref()
    }

    /// Aggregates `x` over `csr` with `op` into `out` (`csr.num_rows() × x.dim()` `f32`, row-major).
    /// On CUDA this uploads, runs and downloads once; keep a [`crate::cuda::DeviceGraph`] to repeat.
    pub fn aggregate(&self, csr: &CsrRef<'_>, x: &Features<'_>, op: AggOp, out: &mut [f32]) -> Result<(), KernelError> {
        check_shapes(csr, x, out.len())?;
        match (&self.cuda, self.backend.isa()) {
            (Some(engine), _) => {
                let mut g = engine.upload(csr, x)?;
                engine.aggregate(&mut g, op)?;
                out.copy_from_slice(&engine.read_output(&g)?);
                Ok(())
            }
            (None, Some(isa)) => cpu::aggregate(isa, self.threads, csr, x, op, out),
            (None, None) => Err(KernelError::BackendUnavailable {
                backend: "cuda",
                reason: "engine not open".into(),
            }),
        }
    }

    /// Cosine similarity of `query` against `candidates` (`n × query.len()` row-major).
    pub fn cosine(&self, query: &[f32], candidates: &[f32]) -> Result<Vec<f32>, KernelError> {
        match &self.cuda {
            Some(engine) => engine.cosine(query, candidates),
            None => crate::similarity::cosine_scores(query, candidates, self.threads),
        }
    }
}
