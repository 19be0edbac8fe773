//! `plexus node --config FILE`: one node in the foreground until SIGTERM or
//! SIGINT, then a graceful stop (hand leadership over, stop serving, stop replicas, flush the WAL).

use std::path::Path;

use std::sync::Arc;

use plexus_actors::clock::SystemClock;
use plexus_actors::{start_node_with, NodeConfig, NodeError, Workloads};
use plexus_empi_service::EmpiService;
use plexus_feed::{FeedService, FeedSettings};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{init_tracing, runtime, CliResult};
use crate::sd_notify;

/// Exit status of a node that cannot start because of its configuration, certificates, data
/// directory or stored data (sysexits' `EX_CONFIG`): started again unchanged, it would fail the
/// same way, so the systemd unit's `RestartPreventExitStatus=78` leaves it stopped, with its
/// error in the journal, instead of restarting it every `RestartSec`. Other failures (the
/// address still in use, say) exit with 1 and may be retried.
pub const EXIT_CONFIG: i32 = 78;

/// Prints the error as `main` would and exits with [`EXIT_CONFIG`].
fn exit_config(e: impl std::fmt::Display) -> ! {
    eprintln!("error: {e}");
    std::process::exit(EXIT_CONFIG)
}

pub fn run(config: &Path) -> CliResult {
    init_tracing();
    let cfg = NodeConfig::load(config).unwrap_or_else(|e| exit_config(e));
    let rt = match cfg.worker_threads {
        // One thread: tokio's current-thread runtime, so no task ever waits for a hand-off
        // between workers (`NodeConfig::worker_threads`).
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?,
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
        let workloads: Workloads = vec![
            Arc::new(FeedService::new(FeedSettings::from(&cfg.feed))),
            Arc::new(EmpiService::new()),
        ];
        let handle = match start_node_with(cfg, Arc::new(SystemClock), workloads).await {
            Ok(handle) => handle,
            Err(e @ (NodeError::Net(_) | NodeError::Actors(_))) => return Err(e.to_string()),
            Err(e @ (NodeError::DataDir(..) | NodeError::Storage(_) | NodeError::Tls(_) | NodeError::Model(..))) => {
                exit_config(e)
            }
        };
        println!(
            "node {node_id} listening on {} (pid {})",
            handle.addr(),
            std::process::id()
        );
        sd_notify::notify("READY=1");
        // With a unit watchdog, a node whose runtime stops scheduling tasks (a deadlock, say)
        // misses its pings and systemd restarts it.
        // It pings through the graceful stop too, which systemd bounds by TimeoutStopSec.
        if let Some(every) = sd_notify::watchdog_interval() {
            tokio::spawn(async move {
                loop {
                    sd_notify::notify("WATCHDOG=1");
                    tokio::time::sleep(every).await;
                }
            });
        }
        tokio::select! {
            _ = term.recv() => tracing::info!("sigterm: stopping"),
            _ = int.recv() => tracing::info!("sigint: stopping"),
        }
        sd_notify::notify("STOPPING=1");
        handle.shutdown().await;
        tracing::info!("node stopped");
        Ok(())
    })
}
