//! Identity matching's wire types: the person record, master identities, change events, and the
//! requests and answers of the EMPI service.
//!
//! Where things live: a record on the shard of its key (`ShardKey::Name("r/SOURCE:ID")`), a
//! blocking-index entry on the shard of its blocking key (`"b/RULE:VALUE"`), a master identity on
//! the shard of its id (`ShardKey::Id(master)`), the model on the shard of `"empi/model"`. Change
//! events are kept per shard, on the master's shard, numbered per shard; a subscriber's cursor
//! holds one position per shard. This module holds data only.

use serde::{Deserialize, Serialize};

use crate::shard::{ShardId, ShardKey};

/// A master identity's id: its creation time in Unix milliseconds above 20 bits of a hash of
/// its founding record, so ids order identities by age; when identities merge, the smaller id
/// (the older) survives.
pub type MasterId = u64;

/// Most records in one `EmpiRequest::Ingest` batch.
pub const EMPI_INGEST_RECORDS_MAX: usize = 10_000;
/// Most candidates one `Match` answers.
pub const EMPI_MATCH_K_MAX: u32 = 100;
/// Most other members an identity may have for `EmpiRequest::Split` (one unlink each).
pub const EMPI_SPLIT_MEMBERS_MAX: usize = 1_000;
/// Most events one `Events` page holds.
pub const EMPI_EVENTS_PAGE_MAX: u32 = 10_000;
/// Most masters one `Clusters` page holds.
pub const EMPI_CLUSTERS_PAGE_MAX: u32 = 10_000;

/// The routing key of a record named `SOURCE:ID`.
pub fn record_shard_key(key: &str) -> ShardKey {
    ShardKey::Name(format!("r/{key}"))
}

/// The routing key of a blocking-index entry.
pub fn block_shard_key(block: &str) -> ShardKey {
    ShardKey::Name(format!("b/{block}"))
}

/// The routing key of a master identity.
pub fn master_shard_key(master: MasterId) -> ShardKey {
    ShardKey::Id(master)
}

/// The routing key of the matching model.
pub fn model_shard_key() -> ShardKey {
    ShardKey::Name("empi/model".into())
}

/// A person as one source system knows it. Every field but `source` and `source_id` is optional.
///
/// Absent fields serialise as `null` rather than being skipped: postcard is not
/// self-describing, so a skipped field would shift every later one. JSON input may omit them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonRecord {
    /// The system the record comes from (a hospital, a registry); no `:` allowed.
    pub source: String,
    /// The record's id inside its source; a record re-sent with the same pair is an update.
    pub source_id: String,
    /// First given name.
    #[serde(default)]
    pub given_name: Option<String>,
    /// Family name (surname).
    #[serde(default)]
    pub family_name: Option<String>,
    /// Date of birth as `YYYY-MM-DD`.
    #[serde(default)]
    pub birth_date: Option<String>,
    /// Administrative sex as the source wrote it (`M`, `female`, ...).
    #[serde(default)]
    pub sex: Option<String>,
    /// House number, when the source keeps it apart from the street.
    #[serde(default)]
    pub street_number: Option<String>,
    /// Street address (may include the house number).
    #[serde(default)]
    pub address_line: Option<String>,
    /// Second address line (apartment, building).
    #[serde(default)]
    pub address_line2: Option<String>,
    /// City or town.
    #[serde(default)]
    pub city: Option<String>,
    /// Postal code.
    #[serde(default)]
    pub postcode: Option<String>,
    /// State, province or region.
    #[serde(default)]
    pub state: Option<String>,
    /// Telephone number in any format.
    #[serde(default)]
    pub phone: Option<String>,
    /// E-mail address.
    #[serde(default)]
    pub email: Option<String>,
    /// National or social-security identifier.
    #[serde(default)]
    pub national_id: Option<String>,
}

impl PersonRecord {
    /// The record's name, `SOURCE:SOURCE_ID` (unchecked; `plexus-empi` validates).
    pub fn key_string(&self) -> String {
        format!("{}:{}", self.source, self.source_id)
    }
}

/// A record as its shard holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmpiRecord {
    /// The record.
    pub record: PersonRecord,
    /// The master identity it belongs to.
    pub master: MasterId,
    /// Records a steward linked this one to: they stay in one identity.
    pub links: Vec<String>,
    /// Records a steward unlinked from this one: automatic matching never joins them.
    pub unlinks: Vec<String>,
    /// The blocking keys it is indexed under.
    pub blocks: Vec<String>,
    /// When its fields were last written (the proposing leader's clock, Unix milliseconds; one
    /// more than the last time where the clock has not moved on). Identity moves and steward
    /// constraints leave it: it is the version a put is placed against (`EmpiPut::base`).
    pub updated_millis: u64,
}

/// A master identity as its shard holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmpiMaster {
    /// Its id.
    pub id: MasterId,
    /// Its member records, ascending.
    pub members: Vec<String>,
    /// When its first record joined (Unix milliseconds).
    pub created_millis: u64,
    /// The identity it was merged into, if it was.
    pub merged_into: Option<MasterId>,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EmpiEventKind {
    /// A master identity was created for its first record.
    Created,
    /// A record joined the identity.
    Linked,
    /// A record left the identity (a steward's unlink, an update that re-linked it elsewhere).
    Unlinked,
    /// The identity was merged into another; its records follow as `Linked` events there.
    Merged {
        /// The surviving identity.
        into: MasterId,
    },
}

/// One change of a master identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmpiEvent {
    /// The shard whose log holds it (the master's).
    pub shard: ShardId,
    /// Its number in that shard's log (from 1, no gaps).
    pub seq: u64,
    /// The identity.
    pub master: MasterId,
    /// The record concerned, if any (`SOURCE:ID`).
    pub record: Option<String>,
    /// What changed.
    pub kind: EmpiEventKind,
    /// When (the proposing leader's clock, Unix milliseconds).
    pub millis: u64,
}

/// Calls of the EMPI service, answered by the node that leads the shard they are routed to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EmpiRequest {
    /// Link one record (insert, or update of the same `SOURCE:ID`); `EmpiReply::Upserted`.
    Upsert {
        /// The record.
        record: PersonRecord,
    },
    /// The best candidates for a record, without writing it; `EmpiReply::Matches`.
    Match {
        /// The record.
        record: PersonRecord,
        /// Most candidates (1..=`EMPI_MATCH_K_MAX`).
        k: u32,
    },
    /// Why two records are or are not linked; `EmpiReply::Explanation`.
    Explain {
        /// One record (`SOURCE:ID`); the routing key.
        a: String,
        /// The other.
        b: String,
    },
    /// A steward's link: the two records' identities become one and stay one; `Done`.
    Link {
        /// One record; the routing key.
        a: String,
        /// The other.
        b: String,
    },
    /// A steward's unlink: the records go to separate identities and automatic matching never
    /// joins them again; `Done`.
    Unlink {
        /// One record; the routing key.
        a: String,
        /// The other.
        b: String,
    },
    /// A batch of records from a bulk ingest (at most `EMPI_INGEST_RECORDS_MAX`), linked
    /// together and against what is held; `EmpiReply::Ingested`. Every batch goes to the node
    /// leading the model's shard.
    Ingest {
        /// The records.
        records: Vec<PersonRecord>,
    },
    /// One record as held; `EmpiReply::Record`.
    Get {
        /// The record (`SOURCE:ID`).
        key: String,
    },
    /// A page of master identities in id order, with their members; `EmpiReply::Clusters`.
    Clusters {
        /// Start after this id.
        after: Option<MasterId>,
        /// Most identities (1..=`EMPI_CLUSTERS_PAGE_MAX`).
        limit: u32,
    },
    /// Change events after a cursor; `EmpiReply::Events`.
    Events {
        /// The cursor of the last page (empty: from the beginning).
        cursor: String,
        /// Most events (1..=`EMPI_EVENTS_PAGE_MAX`).
        limit: u32,
    },
    /// A steward's split: the record leaves its identity for one of its own, unlinked from every
    /// other member (at most `EMPI_SPLIT_MEMBERS_MAX`), so automatic matching never joins it
    /// with any of them again; `EmpiReply::Split`.
    Split {
        /// The record (`SOURCE:ID`); the routing key.
        key: String,
    },
}

impl EmpiRequest {
    /// Whether the service writes this request under the client's session, so that a retry or a
    /// late copy of it never applies twice: an upsert (its one put) and a steward's link or
    /// unlink (its constraint). A bulk ingest batch writes to many shards and resumes from its
    /// own checkpoint instead; reads need none.
    pub fn takes_session(&self) -> bool {
        matches!(
            self,
            EmpiRequest::Upsert { .. } | EmpiRequest::Link { .. } | EmpiRequest::Unlink { .. }
        )
    }

    /// The key the request is routed by.
    pub fn shard_key(&self) -> ShardKey {
        match self {
            EmpiRequest::Upsert { record } | EmpiRequest::Match { record, .. } => {
                record_shard_key(&record.key_string())
            }
            EmpiRequest::Explain { a, .. } | EmpiRequest::Link { a, .. } | EmpiRequest::Unlink { a, .. } => {
                record_shard_key(a)
            }
            EmpiRequest::Get { key } | EmpiRequest::Split { key } => record_shard_key(key),
            // Bulk batches all go to one node, which offers the records it linked in the last
            // batches as candidates of the next (their index entries are still in flight).
            // Listings read every shard; routed anywhere stable.
            EmpiRequest::Ingest { .. } | EmpiRequest::Clusters { .. } | EmpiRequest::Events { .. } => model_shard_key(),
        }
    }
}

/// One candidate of a match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmpiMatch {
    /// The candidate record (`SOURCE:ID`).
    pub key: String,
    /// Its identity.
    pub master: MasterId,
    /// The match weight (log2 of the odds, Fellegi-Sunter).
    pub weight: f64,
    /// The match probability.
    pub probability: f64,
    /// Whether it is above the linking threshold.
    pub linked: bool,
}

/// One field's part in a pair's weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmpiFieldWeight {
    /// The field (or comparison) name.
    pub field: String,
    /// The comparison level it reached.
    pub level: String,
    /// Its weight (log2(m/u)), including any term-frequency adjustment.
    pub weight: f64,
    /// The term-frequency adjustment in it.
    pub tf_adjustment: f64,
}

/// Why two records are or are not linked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmpiExplanation {
    /// The two records.
    pub a: String,
    /// The other.
    pub b: String,
    /// Each field's comparison level and weight.
    pub fields: Vec<EmpiFieldWeight>,
    /// The prior's weight (log2 of the prior odds).
    pub prior: f64,
    /// The total weight.
    pub total: f64,
    /// The match probability.
    pub probability: f64,
    /// Whether they are in one identity now.
    pub same_master: bool,
    /// The reason in words (threshold, guard, steward).
    pub reason: String,
    /// The full explanation as text.
    pub text: String,
}

/// One record's outcome in a bulk ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EmpiIngested {
    /// Linked: its identity.
    Linked {
        /// The record.
        key: String,
        /// Its identity.
        master: MasterId,
    },
    /// Refused, with the reason (the rest of the batch goes in).
    Refused {
        /// The record as given (may be unparseable).
        key: String,
        /// Why.
        reason: String,
    },
}

/// Answers of the EMPI service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EmpiReply {
    /// A record was linked.
    Upserted {
        /// The record.
        key: String,
        /// Its identity.
        master: MasterId,
        /// Whether the identity is new.
        created: bool,
        /// Identities merged into it by this record.
        merged: Vec<MasterId>,
    },
    /// Candidates, best first.
    Matches(Vec<EmpiMatch>),
    /// A pair explained.
    Explanation(Box<EmpiExplanation>),
    /// A bulk batch's outcomes, in input order.
    Ingested(Vec<EmpiIngested>),
    /// One record.
    Record(Box<EmpiRecord>),
    /// A page of identities; `next` continues it.
    Clusters {
        /// The identities.
        masters: Vec<EmpiMaster>,
        /// Pass as `after` for the next page; `None` at the end.
        next: Option<MasterId>,
    },
    /// A page of events and the cursor after it.
    Events {
        /// The events, per shard in log order.
        events: Vec<EmpiEvent>,
        /// The cursor to continue from.
        cursor: String,
    },
    /// A steward action was applied.
    Done,
    /// A split was applied.
    Split {
        /// The record.
        key: String,
        /// Its identity now (its own).
        master: MasterId,
        /// The members of its old identity it is now unlinked from.
        unlinked: Vec<String>,
    },
}

/// What one shard's blocking index holds for some blocking keys (a node-internal read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EmpiBlocks {
    /// Per blocking key asked that the index holds: its records, ascending, at most the
    /// server's per-block cap.
    pub found: Vec<(String, Vec<String>)>,
    /// Blocking keys whose record lists were longer than the cap (cut to it).
    pub oversize: Vec<String>,
    /// Keys the shard's Bloom filter rejected before any lookup.
    pub rejected: u32,
}

/// One shard's events after a position (a node-internal read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EmpiEventPage {
    /// The events, in log order.
    pub events: Vec<EmpiEvent>,
    /// The shard's next event number (one past its last).
    pub next_seq: u64,
    /// The oldest number the shard still holds (events before it were dropped by retention).
    pub first_retained: u64,
}

/// The node-internal EMPI reads of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EmpiRead {
    /// The records under these blocking keys (all of this shard); `EmpiState::Blocks`.
    Blocks {
        /// The blocking keys.
        blocks: Vec<String>,
    },
    /// These records (all of this shard), `None` for an unknown one; `EmpiState::Records`.
    Records {
        /// The records' keys.
        keys: Vec<String>,
    },
    /// These identities (all of this shard), `None` for an unknown one; `EmpiState::Masters`.
    Masters {
        /// The ids.
        ids: Vec<MasterId>,
    },
    /// This shard's identities in id order after `after`; `EmpiState::MasterPage`.
    MasterPage {
        /// The shard scanned.
        shard: ShardId,
        /// Start after this id.
        after: Option<MasterId>,
        /// Most identities.
        limit: u32,
    },
    /// This shard's events from `from_seq`; `EmpiState::Events`.
    Events {
        /// The shard.
        shard: ShardId,
        /// The first event number wanted.
        from_seq: u64,
        /// Most events.
        limit: u32,
    },
    /// The stored matching model; `EmpiState::Model`.
    Model,
}

impl EmpiRead {
    /// The routing key: the first key named, or the shard scanned.
    pub fn shard_key(&self) -> ShardKey {
        match self {
            EmpiRead::Blocks { blocks } => block_shard_key(blocks.first().map(String::as_str).unwrap_or("")),
            EmpiRead::Records { keys } => record_shard_key(keys.first().map(String::as_str).unwrap_or("")),
            EmpiRead::Masters { ids } => master_shard_key(ids.first().copied().unwrap_or(0)),
            EmpiRead::MasterPage { shard, .. } | EmpiRead::Events { shard, .. } => ShardKey::Shard(*shard),
            EmpiRead::Model => model_shard_key(),
        }
    }
}

/// Answers of `EmpiRead`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EmpiState {
    /// Answer to `Blocks`.
    Blocks(EmpiBlocks),
    /// Answer to `Records`, in request order.
    Records(Vec<Option<EmpiRecord>>),
    /// Answer to `Masters`, in request order.
    Masters(Vec<Option<EmpiMaster>>),
    /// Answer to `MasterPage`.
    MasterPage(Vec<EmpiMaster>),
    /// Answer to `Events`.
    Events(EmpiEventPage),
    /// Answer to `Model`: its version and bytes (JSON), if one is stored.
    Model(Option<(u64, Vec<u8>)>),
}
