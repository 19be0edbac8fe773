//! The crate's error type. It covers malformed inputs (a CSR block or feature matrix that does not fit
//! together, a hostile weights or edge-list file) and backend failures; it is not used for programming
//! errors inside the crate, which are prevented by construction.

use thiserror::Error;

/// Every failure a kernel call, a loader or the benchmark can report.
#[derive(Debug, Error)]
pub enum KernelError {
    /// The CSR row offsets are not a non-decreasing sequence starting at 0 and ending at the edge count.
    #[error("invalid CSR: {0}")]
    InvalidCsr(String),
    /// A column index points past the rows of the source feature matrix.
    #[error("column index {index} out of range for {rows} source rows")]
    ColumnOutOfRange {
        /// The offending column index.
        index: u32,
        /// The number of rows in the source feature matrix.
        rows: usize,
    },
    /// Two buffers that must agree in length do not.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A size exceeds a documented limit of the crate.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// The requested backend cannot run on this machine; the text says why.
    #[error("backend {backend} unavailable: {reason}")]
    BackendUnavailable {
        /// The backend's name.
        backend: &'static str,
        /// Why it cannot run.
        reason: String,
    },
    /// The CUDA driver, NVRTC or a launch failed.
    #[error("cuda: {0}")]
    Cuda(String),
    /// A safetensors file is malformed or lacks a tensor the model needs.
    #[error("weights: {0}")]
    Weights(String),
    /// A graph or weights file could not be read or written.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// An edge-list line could not be parsed.
    #[error("edge list line {line}: {reason}")]
    EdgeList {
        /// One-based line number.
        line: usize,
        /// What was wrong with it.
        reason: String,
    },
}
