//! Blocking: rules (data, serde-configurable) that give each record a few keys, so that only records
//! sharing a key are ever compared. The union of rules decides recall (pair completeness); each rule's
//! key decides how big blocks get.
//!
//! Keys exist in two forms: readable strings `RULE_ID:VALUE` ([`BlockingSpec::keys`], for the
//! replicated index and for people) and 64-bit hashes of the same bytes ([`BlockingSpec::key_hashes`],
//! for the bulk path, allocation-free). Bulk pair generation sorts (key, record) per rule, skips blocks
//! over the size cap (and counts them), and emits each pair once: under the first rule that pairs it.
//! [`BlockIndex`] serves one-record look-ups. Nothing here compares or scores.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::normalize::NormalizedRecord;
use crate::util::{u64_map, Fnv, U64Map};

/// Most rules in a spec; keys of one record fit a fixed array.
pub const RULES_MAX: usize = 16;

/// Most candidate pairs one batch generates; past it, blocks are skipped and counted, so that a
/// pathological batch (every record sharing keys in blocks just under the size cap) cannot exhaust
/// memory. At 16 bytes per pair with its comparison vector, the cap is about 6.4 GB.
pub const CANDIDATE_PAIRS_MAX: usize = 400_000_000;

/// Default cap on a block's size, in records: a bigger block is skipped, since comparing all its pairs
/// would cost quadratic time for a key too common to discriminate.
pub const BLOCK_RECORDS_MAX: usize = 1000;

/// One part of a rule's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "part", rename_all = "snake_case")]
pub enum KeyPart {
    /// Primary Double Metaphone code of the family name.
    FamilyPhonetic,
    /// Primary Double Metaphone code of the given name.
    GivenPhonetic,
    /// Folded family name.
    FamilyName,
    /// First `chars` characters of the folded given name.
    GivenPrefix {
        /// Characters kept.
        chars: usize,
    },
    /// First `chars` characters of the folded family name.
    FamilyPrefix {
        /// Characters kept.
        chars: usize,
    },
    /// Year of birth.
    BirthYear,
    /// Full date of birth.
    BirthDate,
    /// Phone digits.
    Phone,
    /// E-mail.
    Email,
    /// Postcode.
    Postcode,
    /// National id.
    NationalId,
    /// Folded city.
    City,
}

/// A rule: the record's key is its parts joined; a record missing any part has no key for the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockingRule {
    /// Short id, the prefix of every key of the rule (no `:`).
    pub id: String,
    /// Parts, in key order.
    pub parts: Vec<KeyPart>,
}

/// A union of rules and the block-size cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockingSpec {
    /// The rules; a pair is a candidate when it shares a key under any of them.
    pub rules: Vec<BlockingRule>,
    /// Blocks with more records are skipped.
    #[serde(default = "default_block_records_max")]
    pub block_records_max: usize,
}

fn default_block_records_max() -> usize {
    BLOCK_RECORDS_MAX
}

/// Why a blocking spec cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BlockingError {
    /// No rules, or more than `RULES_MAX`.
    #[error("{0} rules; need 1 to {RULES_MAX}")]
    RuleCount(usize),
    /// A rule id is empty, repeated, or contains `:`.
    #[error("bad rule id {0:?} (empty, repeated, or containing ':')")]
    BadId(String),
    /// A rule has no parts.
    #[error("rule {0} has no parts")]
    NoParts(String),
}

/// Fixed-size per-record key hashes; 0 means "no key under this rule".
pub type KeyHashes = [u64; RULES_MAX];

impl BlockingSpec {
    /// The default rules: family-name phonetic code with birth year, exact birth date, phone, e-mail,
    /// first three letters of the given name with postcode, and national id.
    pub fn person_default() -> BlockingSpec {
        let rule = |id: &str, parts: Vec<KeyPart>| BlockingRule { id: id.into(), parts };
        BlockingSpec {
            rules: vec![
                rule("fam_dm_year", vec![KeyPart::FamilyPhonetic, KeyPart::BirthYear]),
                rule("dob", vec![KeyPart::BirthDate]),
                rule("phone", vec![KeyPart::Phone]),
                rule("email", vec![KeyPart::Email]),
                rule(
                    "given3_post",
                    vec![KeyPart::GivenPrefix { chars: 3 }, KeyPart::Postcode],
                ),
                rule("nid", vec![KeyPart::NationalId]),
            ],
            block_records_max: BLOCK_RECORDS_MAX,
        }
    }

    /// Checks counts and ids.
    pub fn validate(&self) -> Result<(), BlockingError> {
        if self.rules.is_empty() || self.rules.len() > RULES_MAX {
            return Err(BlockingError::RuleCount(self.rules.len()));
        }
        for (i, r) in self.rules.iter().enumerate() {
            if r.id.is_empty() || r.id.contains(':') || self.rules[..i].iter().any(|o| o.id == r.id) {
                return Err(BlockingError::BadId(r.id.clone()));
            }
            if r.parts.is_empty() {
                return Err(BlockingError::NoParts(r.id.clone()));
            }
        }
        Ok(())
    }

    /// The readable keys of a record, `RULE_ID:VALUE`, one per rule it has every part of.
    pub fn keys(&self, r: &NormalizedRecord) -> Vec<String> {
        let mut out = Vec::new();
        for rule in &self.rules {
            let mut key = format!("{}:", rule.id);
            let mut ok = true;
            for (j, part) in rule.parts.iter().enumerate() {
                if j > 0 {
                    key.push('|');
                }
                ok &= write_part(r, *part, &mut |s| key.push_str(s));
            }
            if ok {
                out.push(key);
            }
        }
        out
    }

    /// The key hashes of a record (the same bytes as [`Self::keys`], hashed without allocating).
    pub fn key_hashes(&self, r: &NormalizedRecord) -> KeyHashes {
        let mut out = [0u64; RULES_MAX];
        for (slot, rule) in out.iter_mut().zip(&self.rules) {
            *slot = hash_rule(rule, r).unwrap_or(0);
        }
        out
    }

    /// Hash of a readable key string, equal to the matching entry of [`Self::key_hashes`].
    pub fn hash_key_string(key: &str) -> u64 {
        let h = Fnv::default().bytes(key.as_bytes()).finish();
        h.max(1)
    }
}

fn hash_rule(rule: &BlockingRule, r: &NormalizedRecord) -> Option<u64> {
    let mut h = Fnv::default();
    h.bytes(rule.id.as_bytes()).bytes(b":");
    for (j, part) in rule.parts.iter().enumerate() {
        if j > 0 {
            h.bytes(b"|");
        }
        if !write_part(r, *part, &mut |s| {
            h.bytes(s.as_bytes());
        }) {
            return None;
        }
    }
    Some(h.finish().max(1))
}

/// Writes one part's text through `emit`; false when the record lacks it.
fn write_part(r: &NormalizedRecord, part: KeyPart, emit: &mut dyn FnMut(&str)) -> bool {
    let prefix = |s: &str, n: usize| -> Option<usize> {
        let end = s.char_indices().nth(n).map(|(i, _)| i).unwrap_or(s.len());
        (!s.is_empty()).then_some(end)
    };
    let text = |s: &str, emit: &mut dyn FnMut(&str)| {
        if s.is_empty() {
            false
        } else {
            emit(s);
            true
        }
    };
    let code = |c: u32, emit: &mut dyn FnMut(&str)| {
        let bytes = c.to_be_bytes();
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(4);
        match std::str::from_utf8(&bytes[..len]) {
            Ok(s) if !s.is_empty() => {
                emit(s);
                true
            }
            _ => false,
        }
    };
    match part {
        KeyPart::FamilyPhonetic => code(r.family_dm[0], emit),
        KeyPart::GivenPhonetic => code(r.given_dm[0], emit),
        KeyPart::FamilyName => text(r.family(), emit),
        KeyPart::GivenPrefix { chars } => match prefix(r.given(), chars) {
            Some(end) => text(&r.given()[..end], emit),
            None => false,
        },
        KeyPart::FamilyPrefix { chars } => match prefix(r.family(), chars) {
            Some(end) => text(&r.family()[..end], emit),
            None => false,
        },
        KeyPart::BirthYear | KeyPart::BirthDate => match r.birth {
            Some(d) => {
                // YYYY-MM-DD written on the stack: this runs for every record of a bulk batch.
                let mut buf = *b"0000-00-00";
                for (i, v) in [
                    (0, u32::from(d.year) / 100),
                    (2, u32::from(d.year) % 100),
                    (5, d.month.into()),
                    (8, d.day.into()),
                ] {
                    buf[i] = b'0' + (v / 10 % 10) as u8;
                    buf[i + 1] = b'0' + (v % 10) as u8;
                }
                let len = if part == KeyPart::BirthYear { 4 } else { 10 };
                match std::str::from_utf8(&buf[..len]) {
                    Ok(s) => {
                        emit(s);
                        true
                    }
                    Err(_) => false,
                }
            }
            None => false,
        },
        KeyPart::Phone => text(r.phone(), emit),
        KeyPart::Email => text(r.email(), emit),
        KeyPart::Postcode => text(r.postcode(), emit),
        KeyPart::NationalId => text(r.national_id(), emit),
        KeyPart::City => text(r.city(), emit),
    }
}

/// Key hashes of many records, `rules` per record, stored flat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyTable {
    rules: usize,
    data: Vec<u64>,
}

impl KeyTable {
    /// An empty table for `rules` rules.
    pub fn new(rules: usize) -> KeyTable {
        KeyTable {
            rules: rules.min(RULES_MAX),
            data: Vec::new(),
        }
    }

    /// Appends one record's keys.
    pub fn push(&mut self, keys: &KeyHashes) {
        self.data.extend_from_slice(&keys[..self.rules]);
    }

    /// Replaces record `r`'s keys (for an update).
    pub fn set(&mut self, r: u32, keys: &KeyHashes) {
        let start = r as usize * self.rules;
        if let Some(slot) = self.data.get_mut(start..start + self.rules) {
            slot.copy_from_slice(&keys[..self.rules]);
        }
    }

    /// Record `r`'s keys (empty past the end).
    pub fn get(&self, r: u32) -> &[u64] {
        let start = r as usize * self.rules;
        self.data.get(start..start + self.rules).unwrap_or(&[])
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.rules).unwrap_or(0)
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Rules per record.
    pub fn rules(&self) -> usize {
        self.rules
    }
}

/// Candidate pairs of a batch and what the size cap cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CandidatePairs {
    /// Distinct pairs `(a, b)` with `a < b`, grouped by the rule that found them.
    pub pairs: Vec<(u32, u32)>,
    /// Blocks (keys shared by at least two records) compared.
    pub blocks: u64,
    /// Blocks skipped for exceeding the cap.
    pub oversize_blocks: u64,
    /// Pairs those skipped blocks would have produced.
    pub oversize_pairs: u64,
    /// Per rule: pairs it found first.
    pub pairs_per_rule: Vec<u64>,
    /// Blocks skipped because the batch reached its pair cap.
    pub capped_blocks: u64,
}

/// Generates the candidate pairs of the records in `keys`, at most `pairs_max` of them. A pair found by
/// an earlier rule is not emitted again by a later one, unless the earlier rule's block was skipped.
pub fn candidate_pairs(keys: &KeyTable, block_records_max: usize, pairs_max: usize) -> CandidatePairs {
    let rules = keys.rules();
    let mut out = CandidatePairs {
        pairs_per_rule: vec![0; rules],
        ..CandidatePairs::default()
    };
    let mut oversize: Vec<U64Map<()>> = (0..rules).map(|_| u64_map(16)).collect();
    let mut entries: Vec<(u64, u32)> = Vec::with_capacity(keys.len());
    for rule in 0..rules {
        entries.clear();
        entries.extend(
            (0..keys.len() as u32)
                .map(|i| (keys.get(i)[rule], i))
                .filter(|e| e.0 != 0),
        );
        entries.sort_unstable();
        let before = out.pairs.len();
        let mut start = 0;
        while start < entries.len() {
            let key = entries[start].0;
            let end = start + entries[start..].iter().take_while(|e| e.0 == key).count();
            let size = end - start;
            let block_pairs = (size as u64) * (size as u64).saturating_sub(1) / 2;
            if size > block_records_max {
                out.oversize_blocks += 1;
                out.oversize_pairs += block_pairs;
                oversize[rule].insert(key, ());
            } else if size > 1 && out.pairs.len() as u64 + block_pairs > pairs_max as u64 {
                out.capped_blocks += 1;
                oversize[rule].insert(key, ());
            } else if size > 1 {
                out.blocks += 1;
                for x in start..end {
                    let a = entries[x].1;
                    let ka = keys.get(a);
                    for &(_, b) in &entries[x + 1..end] {
                        let kb = keys.get(b);
                        let earlier =
                            (0..rule).any(|r| ka[r] != 0 && ka[r] == kb[r] && !oversize[r].contains_key(&ka[r]));
                        if !earlier {
                            out.pairs.push((a.min(b), a.max(b)));
                        }
                    }
                }
            }
            start = end;
        }
        out.pairs_per_rule[rule] = (out.pairs.len() - before) as u64;
    }
    out
}

/// Key hash → records, for one-record look-ups: a sorted base built in bulk plus a map of later
/// additions. Entries of records whose keys changed are filtered by the caller against current keys.
#[derive(Debug, Clone, Default)]
pub struct BlockIndex {
    base: Vec<(u64, u32)>,
    added: U64Map<Vec<u32>>,
}

impl BlockIndex {
    /// Builds the index of a batch.
    pub fn build(keys: &KeyTable) -> BlockIndex {
        let mut base: Vec<(u64, u32)> = (0..keys.len() as u32)
            .flat_map(|i| keys.get(i).iter().filter(|&&h| h != 0).map(move |&h| (h, i)))
            .collect();
        base.sort_unstable();
        BlockIndex {
            base,
            added: u64_map(1024),
        }
    }

    /// Adds a record's keys.
    pub fn insert(&mut self, record: u32, keys: &KeyHashes) {
        for &h in keys.iter().filter(|&&h| h != 0) {
            self.added.entry(h).or_default().push(record);
        }
    }

    /// Records filed under `key`, calling `f` on each; returns false (calling nothing) when the block
    /// exceeds `block_records_max`.
    pub fn for_each(&self, key: u64, block_records_max: usize, mut f: impl FnMut(u32)) -> bool {
        let lo = self.base.partition_point(|e| e.0 < key);
        let hi = lo + self.base[lo..].iter().take_while(|e| e.0 == key).count();
        let added = self.added.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        if hi - lo + added.len() > block_records_max {
            return false;
        }
        self.base[lo..hi].iter().for_each(|e| f(e.1));
        added.iter().for_each(|&r| f(r));
        true
    }

    /// Entries held, for memory accounting.
    pub fn len(&self) -> usize {
        self.base.len() + self.added.values().map(Vec::len).sum::<usize>()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;
    use crate::schema::{PersonRecord, RecordExt};

    fn rec(given: &str, family: &str, dob: &str, phone: &str, postcode: &str) -> NormalizedRecord {
        let mut r = PersonRecord::new("S", "1");
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        r.given_name = opt(given);
        r.family_name = opt(family);
        r.birth_date = opt(dob);
        r.phone = opt(phone);
        r.postcode = opt(postcode);
        normalize(&r)
    }

    #[test]
    fn keys_are_readable_and_hash_consistently() {
        let spec = BlockingSpec::person_default();
        spec.validate().unwrap();
        let r = rec("Robert", "Smith", "1980-03-04", "555-123-4567", "02139");
        let keys = spec.keys(&r);
        assert_eq!(
            keys,
            vec![
                "fam_dm_year:SM0|1980",
                "dob:1980-03-04",
                "phone:5551234567",
                "given3_post:ROB|02139"
            ]
        );
        let hashes = spec.key_hashes(&r);
        let present: Vec<u64> = hashes.iter().copied().filter(|&h| h != 0).collect();
        let from_strings: Vec<u64> = keys.iter().map(|k| BlockingSpec::hash_key_string(k)).collect();
        assert_eq!(present, from_strings);
    }

    #[test]
    fn spec_validation() {
        let mut spec = BlockingSpec::person_default();
        spec.rules[1].id = "fam_dm_year".into();
        assert_eq!(spec.validate(), Err(BlockingError::BadId("fam_dm_year".into())));
        spec.rules.clear();
        assert_eq!(spec.validate(), Err(BlockingError::RuleCount(0)));
        let json = serde_json::to_string(&BlockingSpec::person_default()).unwrap();
        assert!(json.contains(r#"{"part":"given_prefix","chars":3}"#), "{json}");
    }

    #[test]
    fn pairs_are_unique_and_oversize_blocks_are_counted() {
        let spec = BlockingSpec::person_default();
        let records = [
            rec("Ann", "Lee", "1980-01-01", "5550000001", ""),
            rec("Anne", "Lee", "1980-01-01", "5550000001", ""),
            rec("Bob", "Kay", "1980-01-01", "", ""),
            rec("Cy", "Zed", "1990-05-05", "5550000001", ""),
        ];
        let mut keys = KeyTable::new(spec.rules.len());
        records.iter().for_each(|r| keys.push(&spec.key_hashes(r)));
        let c = candidate_pairs(&keys, 10, CANDIDATE_PAIRS_MAX);
        // Rule 0 (fam+year) pairs 0-1; rule 1 (dob) adds 0-2 and 1-2; rule 2 (phone) adds 0-3, 1-3.
        assert_eq!(c.pairs, vec![(0, 1), (0, 2), (1, 2), (0, 3), (1, 3)]);
        assert_eq!(c.pairs_per_rule, vec![1, 2, 2, 0, 0, 0]);
        assert_eq!(c.oversize_blocks, 0);
        let capped = candidate_pairs(&keys, 2, CANDIDATE_PAIRS_MAX);
        // The dob block (3 records) and the phone block (3 records) are skipped; 0-1 still comes from rule 0.
        assert_eq!(capped.pairs, vec![(0, 1)]);
        assert_eq!(capped.oversize_blocks, 2);
        assert_eq!(capped.oversize_pairs, 6);
        // A pair cap of 2: rule 0 gives one pair, the dob block (3 pairs) no longer fits, and the phone
        // block is then the same size and skipped too; their pairs are not claimed by rule 1.
        let limited = candidate_pairs(&keys, 10, 2);
        assert_eq!(limited.pairs, vec![(0, 1)]);
        assert_eq!(limited.capped_blocks, 2);
    }

    #[test]
    fn index_lookups() {
        let spec = BlockingSpec::person_default();
        let a = rec("Ann", "Lee", "1980-01-01", "", "");
        let b = rec("Anne", "Lee", "1980-01-01", "", "");
        let mut table = KeyTable::new(spec.rules.len());
        table.push(&spec.key_hashes(&a));
        let mut index = BlockIndex::build(&table);
        index.insert(1, &spec.key_hashes(&b));
        let dob = spec.key_hashes(&a)[1];
        let mut seen = Vec::new();
        assert!(index.for_each(dob, 10, |r| seen.push(r)));
        assert_eq!(seen, vec![0, 1]);
        assert!(!index.for_each(dob, 1, |_| unreachable!()));
        assert_eq!(index.len(), 4);
    }
}
