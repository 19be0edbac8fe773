//! `plexus`: the operator binary.
//!
//! One binary runs a node (`plexus node`), a local development cluster
//! (`plexus up`), makes certificates (`plexus certs`), reports status, wraps
//! the client library for people (`graph`, `timeline`, `filter`, `features`,
//! `score`) and drives benchmarks (`plexus bench`, `plexus kernels bench`). It holds no cluster logic of its own: nodes
//! are `plexus-actors`, clients are `plexus-client`.

mod bench;
mod bench_empi;
mod bench_feed;
mod certs;
mod cli;
mod client_cmds;
mod empi_cmd;
mod empi_ingest;
mod feed_cmd;
mod feed_import;
mod kernels_cmd;
mod node_cmd;
mod score_cmd;
mod sd_notify;
mod sim_cmd;
mod up;

use clap::Parser;

/// mimalloc instead of glibc's malloc: a node allocates and frees many small buffers per request
/// on several threads (frames, Raft entries, futures), where glibc's arenas spent about 7% of
/// the CPU of a loaded local cluster.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Behave like other Unix tools when stdout is a closed pipe (`| head`):
    // exit quietly instead of panicking on the failed write.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = cli::Cli::parse();
    let code = match cli::run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    std::process::exit(code);
}
