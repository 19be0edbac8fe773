//! Term frequencies of field values, built from the data, for the term-frequency adjustment of exact
//! matches (a shared rare surname says more than a shared common one). Counts only; the adjustment
//! itself is in [`super::Model::tf_adjustment`].

use super::TfValues;
use crate::compare::{Attribute, ComparisonSpec};
use crate::normalize::NormalizedRecord;
use crate::util::{fnv64, u64_map, U64Map};

/// How often each value of the term-frequency-adjusted fields occurs, built from the data.
#[derive(Debug, Clone, Default)]
pub struct TermFrequencies {
    fields: Vec<Option<(Attribute, U64Map<u32>)>>,
    records: u64,
}

impl TermFrequencies {
    /// Counts the values of every `tf_adjust` field of `spec` over `records`.
    pub fn build<'a>(spec: &ComparisonSpec, records: impl IntoIterator<Item = &'a NormalizedRecord>) -> Self {
        let mut tf = TermFrequencies {
            fields: spec
                .fields
                .iter()
                .map(|f| f.tf_adjust.then(|| (f.attribute, u64_map(1024))))
                .collect(),
            records: 0,
        };
        for r in records {
            tf.add(r);
        }
        tf
    }

    /// Counts one more record.
    pub fn add(&mut self, r: &NormalizedRecord) {
        self.records += 1;
        for (attribute, map) in self.fields.iter_mut().flatten() {
            if let Some(h) = value_hash(r, *attribute) {
                let c = map.entry(h).or_insert(0);
                *c = c.saturating_add(1);
            }
        }
    }

    /// Relative frequency of `r`'s value of field `field` (0 when the field is not adjusted or empty).
    pub fn tf(&self, field: usize, r: &NormalizedRecord) -> f32 {
        let Some(Some((attribute, map))) = self.fields.get(field) else {
            return 0.0;
        };
        let Some(h) = value_hash(r, *attribute) else { return 0.0 };
        let count = map.get(&h).copied().unwrap_or(0).max(1);
        (f64::from(count) / self.records.max(1) as f64) as f32
    }

    /// The frequencies of every adjusted field of `r`; a pair's [`TfValues`] are those of either side
    /// (an exact match shares the value), which [`super::Model::score`] applies only on exact levels.
    pub fn values(&self, r: &NormalizedRecord) -> TfValues {
        let mut out = TfValues::NONE;
        for (i, slot) in out.0.iter_mut().enumerate().take(self.fields.len()) {
            *slot = self.tf(i, r);
        }
        out
    }

    /// Per field, the value counts as `(value hash, count)` pairs ascending (empty for a field that
    /// is not adjusted), and the record count (for storage).
    pub fn to_parts(&self) -> (Vec<Vec<(u64, u32)>>, u64) {
        let fields = self
            .fields
            .iter()
            .map(|f| {
                let mut v: Vec<(u64, u32)> = f
                    .as_ref()
                    .map(|(_, m)| m.iter().map(|(k, c)| (*k, *c)).collect())
                    .unwrap_or_default();
                v.sort_unstable();
                v
            })
            .collect();
        (fields, self.records)
    }

    /// The table `to_parts` gave, for `spec` (which says which fields are adjusted, and how).
    pub fn from_parts(spec: &ComparisonSpec, parts: &(Vec<Vec<(u64, u32)>>, u64)) -> Self {
        let mut tf = TermFrequencies::build(spec, []);
        for ((_, map), counts) in tf
            .fields
            .iter_mut()
            .flatten()
            .zip(tf_adjusted(spec).map(|i| parts.0.get(i).map(Vec::as_slice).unwrap_or(&[])))
        {
            map.extend(counts.iter().copied());
        }
        tf.records = parts.1;
        tf
    }

    /// Number of records counted.
    pub fn records(&self) -> u64 {
        self.records
    }
}

/// The indexes of the fields `spec` adjusts by term frequency.
fn tf_adjusted(spec: &ComparisonSpec) -> impl Iterator<Item = usize> + '_ {
    spec.fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.tf_adjust)
        .map(|(i, _)| i)
}

fn value_hash(r: &NormalizedRecord, a: Attribute) -> Option<u64> {
    let s = match a {
        Attribute::GivenName => r.given(),
        Attribute::FamilyName => r.family(),
        Attribute::Address => r.address(),
        Attribute::City => r.city(),
        Attribute::Postcode => r.postcode(),
        Attribute::State => r.state(),
        Attribute::Phone => r.phone(),
        Attribute::Email => r.email(),
        Attribute::NationalId => r.national_id(),
        Attribute::BirthDate => return r.birth.map(|d| u64::from(d.packed())),
        Attribute::Sex | Attribute::Graph | Attribute::Contact => return None,
    };
    (!s.is_empty()).then(|| fnv64(s.as_bytes()))
}
