//! Identity matching's typed calls: link records (one at a time or in bulk batches), look up
//! candidates, explain a pair, steward links and unlinks, list identities, and follow the
//! change-event stream with a cursor.
//!
//! Records are named `SOURCE:SOURCE_ID`. The node that leads a record's shard serves its calls;
//! identity listings and event pages read every shard.

use plexus_proto::{
    Consistency, EmpiExplanation, EmpiIngested, EmpiMatch, EmpiRecord, EmpiReply, EmpiRequest, MasterId, Op,
    PersonRecord, Reply,
};

use crate::client::Client;
use crate::error::ClientError;

fn unexpected(op: &'static str, reply: Reply) -> ClientError {
    ClientError::UnexpectedReply {
        op,
        reply: format!("{reply:?}"),
    }
}

/// What an upsert did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upserted {
    /// The record (`SOURCE:SOURCE_ID`).
    pub key: String,
    /// Its master identity.
    pub master: MasterId,
    /// Whether the identity is new.
    pub created: bool,
    /// Identities this record bridged, merged into `master`.
    pub merged: Vec<MasterId>,
}

impl Client {
    async fn empi(&self, req: EmpiRequest) -> Result<EmpiReply, ClientError> {
        match self.call(Op::Empi(Box::new(req)), Consistency::Linearizable).await? {
            Reply::Empi(r) => Ok(r),
            r => Err(unexpected("empi", r)),
        }
    }

    /// Links one record (a new one, or an update of the same `SOURCE:SOURCE_ID`) and answers its
    /// master identity.
    pub async fn empi_upsert(&self, record: PersonRecord) -> Result<Upserted, ClientError> {
        match self.empi(EmpiRequest::Upsert { record }).await? {
            EmpiReply::Upserted {
                key,
                master,
                created,
                merged,
            } => Ok(Upserted {
                key,
                master,
                created,
                merged,
            }),
            r => Err(unexpected("empi_upsert", Reply::Empi(r))),
        }
    }

    /// The best `k` candidates for a record, with weights and probabilities, without storing it.
    pub async fn empi_match(&self, record: PersonRecord, k: u32) -> Result<Vec<EmpiMatch>, ClientError> {
        match self.empi(EmpiRequest::Match { record, k }).await? {
            EmpiReply::Matches(m) => Ok(m),
            r => Err(unexpected("empi_match", Reply::Empi(r))),
        }
    }

    /// Links a batch of records (at most `EMPI_INGEST_RECORDS_MAX`) together and against what is
    /// held; each record's outcome, in order (a bad record is refused with its reason, the rest
    /// go in).
    pub async fn empi_ingest(&self, records: Vec<PersonRecord>) -> Result<Vec<EmpiIngested>, ClientError> {
        match self.empi(EmpiRequest::Ingest { records }).await? {
            EmpiReply::Ingested(o) => Ok(o),
            r => Err(unexpected("empi_ingest", Reply::Empi(r))),
        }
    }

    /// Why two records are or are not linked: every field's level and weight and the total.
    pub async fn empi_explain(&self, a: &str, b: &str) -> Result<EmpiExplanation, ClientError> {
        let req = EmpiRequest::Explain {
            a: a.to_string(),
            b: b.to_string(),
        };
        match self.empi(req).await? {
            EmpiReply::Explanation(e) => Ok(*e),
            r => Err(unexpected("empi_explain", Reply::Empi(r))),
        }
    }

    /// A steward's link (`true`: the records' identities become one and stay one) or unlink
    /// (`false`: they are separated, and automatic matching never joins them again).
    pub async fn empi_steward(&self, a: &str, b: &str, link: bool) -> Result<(), ClientError> {
        let (a, b) = (a.to_string(), b.to_string());
        let req = if link {
            EmpiRequest::Link { a, b }
        } else {
            EmpiRequest::Unlink { a, b }
        };
        match self.empi(req).await? {
            EmpiReply::Done => Ok(()),
            r => Err(unexpected("empi_steward", Reply::Empi(r))),
        }
    }

    /// A steward's split: the record leaves its identity for one of its own and is unlinked from
    /// every other member, so automatic matching never joins it with them again. Answers its
    /// identity now and the records it was unlinked from.
    pub async fn empi_split(&self, key: &str) -> Result<(MasterId, Vec<String>), ClientError> {
        match self.empi(EmpiRequest::Split { key: key.to_string() }).await? {
            EmpiReply::Split { master, unlinked, .. } => Ok((master, unlinked)),
            r => Err(unexpected("empi_split", Reply::Empi(r))),
        }
    }

    /// One record as held, with its identity and steward constraints.
    pub async fn empi_get(&self, key: &str) -> Result<EmpiRecord, ClientError> {
        match self.empi(EmpiRequest::Get { key: key.to_string() }).await? {
            EmpiReply::Record(r) => Ok(*r),
            r => Err(unexpected("empi_get", Reply::Empi(r))),
        }
    }

    /// A page of master identities in id order after `after`, with their members; and the
    /// `after` of the next page (`None` at the end).
    pub async fn empi_clusters(
        &self,
        after: Option<MasterId>,
        limit: u32,
    ) -> Result<(Vec<plexus_proto::EmpiMaster>, Option<MasterId>), ClientError> {
        match self.empi(EmpiRequest::Clusters { after, limit }).await? {
            EmpiReply::Clusters { masters, next } => Ok((masters, next)),
            r => Err(unexpected("empi_clusters", Reply::Empi(r))),
        }
    }

    /// Change events after `cursor` (empty: from the beginning), at most `limit`, and the cursor
    /// to continue from. Keep the cursor durably: a page after it never repeats or skips an
    /// event.
    pub async fn empi_events(
        &self,
        cursor: &str,
        limit: u32,
    ) -> Result<(Vec<plexus_proto::EmpiEvent>, String), ClientError> {
        let req = EmpiRequest::Events {
            cursor: cursor.to_string(),
            limit,
        };
        match self.empi(req).await? {
            EmpiReply::Events { events, cursor } => Ok((events, cursor)),
            r => Err(unexpected("empi_events", Reply::Empi(r))),
        }
    }
}
