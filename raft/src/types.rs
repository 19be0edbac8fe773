//! The openraft type configuration. The replicated command itself lives in `plexus-core`.

pub use plexus_core::{Command, EdgeUpdate, META_GROUP};
use plexus_proto::Response;

openraft::declare_raft_types!(
    /// openraft types for every plexus group (shards and meta).
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);
