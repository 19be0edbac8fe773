//! plexus identity matching: the pure pipeline of a master patient index.
//!
//! Person records from many sources ([`schema::PersonRecord`], ingested from CSV, NDJSON, FHIR R4 or
//! HL7 v2 by [`ingest`]) are normalised ([`normalize`]), grouped by blocking keys ([`blocking`]),
//! compared field by field into comparison vectors ([`compare`]), scored with a Fellegi-Sunter model
//! whose m and u come from the data ([`model`]) plus a graph signal from aggregation over the
//! record-attribute graph ([`graph`], on `plexus-kernels`), and clustered into master identities with
//! stable ids and steward constraints ([`cluster`]). [`linker::Linker`] runs the whole pipeline in
//! memory, in bulk and one record at a time; [`synth`] and [`eval`] measure it against ground truth.
//!
//! This crate is deliberately pure: no network, no async runtime, no clock, no files (callers hand it
//! readers), no randomness except seeded generators. The replicated node-side module reuses its pieces
//! one by one; this crate knows nothing of shards, Raft or QUIC.

pub mod blocking;
pub mod cluster;
pub mod compare;
pub mod context;
pub mod date;
pub mod eval;
pub mod graph;
pub mod ingest;
pub mod linker;
pub mod mapping;
pub mod model;
pub mod nicknames;
pub mod normalize;
pub mod phonetic;
pub mod schema;
pub mod synth;
pub mod util;
