//! The plexus deterministic simulator: a whole cluster — the real node code (actors, openraft
//! groups, shard state machines, gateway) and the real client library (`plexus-client`) — in one
//! process, on virtual time, driven by one seed.
//!
//! `run_seed(seed, options)` builds a current-thread tokio runtime with a paused clock, derives
//! every parameter from the seed (`params`), starts the nodes on a simulated network (`net`) and
//! simulated disks (`disk`), runs real `plexus_client::Client`s (`workload`, each over the
//! simulated transport in `client`, its RNG seeded from the seed), feed clients
//! (`feed_workload`) on the nodes' real feed service, and identity-matching clients
//! (`empi_workload`: upserts, re-upserts that move records between identities, small ingest
//! batches, steward links and unlinks, matches, and a change-event subscriber) on the nodes'
//! real EMPI service, while `faults` injects
//! faults, heals the cluster, waits for it to converge and runs the `checkers`. Every delivered
//! message, fault, crash, restart and client operation is a line of the event `trace`, whose hash
//! is the run's fingerprint: the same seed gives the same hash. A panic in any node task is a
//! violation too (`panics`). `SimOptions::canary` runs every node with a deliberate bug
//! (`plexus_raft::sim_hooks`) that the checkers must catch.
//!
//! What it is not: the QUIC stack (the network, the client's included, is replaced at the
//! message level: `plexus-client`'s `Transport` seam on the client side, `RaftTransport` between
//! nodes). It never reads the wall clock except to report how fast a run was.

pub mod checkers;
pub mod client;
pub mod cluster;
pub mod disk;
pub mod empi_workload;
pub mod faults;
pub mod feed_workload;
pub mod lease_probe;
pub mod net;
pub mod panics;
pub mod params;
pub mod run;
pub mod trace;
pub mod workload;

pub use params::{SimOptions, SimParams};
pub use run::{run_seed, SeedReport};
