//! `plexus node --config FILE`: one node in the foreground until SIGTERM or
//! SIGINT, then a graceful stop (hand leadership over, stop serving, stop replicas, flush the WAL).

use std::path::Path;

use plexus_actors::{start_node, NodeConfig};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{init_tracing, runtime, CliResult};

pub fn run(config: &Path) -> CliResult {
    init_tracing();
    let cfg = NodeConfig::load(config).map_err(|e| e.to_string())?;
    let rt = match cfg.worker_threads {
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.clamp(1, 256))
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?,
        None => runtime()?,
    };
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate()).map_err(|e| format!("signal handler: {e}"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("signal handler: {e}"))?;
        let node_id = cfg.node_id;
        let handle = start_node(cfg).await.map_err(|e| e.to_string())?;
        println!(
            "node {node_id} listening on {} (pid {})",
            handle.addr(),
            std::process::id()
        );
        tokio::select! {
            _ = term.recv() => tracing::info!("sigterm: stopping"),
            _ = int.recv() => tracing::info!("sigint: stopping"),
        }
        handle.shutdown().await;
        tracing::info!("node stopped");
        Ok(())
    })
}
