//! Field comparison: a [`ComparisonSpec`] (data, serde-configurable) says, per field, an ordered list of
//! levels from best to worst, each a test on the two values (exact, nickname, Jaro-Winkler at least x,
//! dates swapped, ...); comparing two records yields a [`ComparisonVector`] with, per field, the index
//! of the first level whose test passes, the implicit "else" level when none does, or null when either
//! side lacks the value.
//!
//! The vector is four bits per field packed in a `u64`, so vectors are `Copy`, hash cheaply and count
//! into EM patterns directly. Comparison allocates nothing. This module does not weigh levels (that is
//! the model's job) and does not compute graph similarity (it only maps one to a level).

mod eval;
pub mod metrics;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::normalize::NormalizedRecord;
use crate::util::{u64_map, U64Map};
use eval::{compare_field, Eval};

/// Most fields in a spec: the vector packs four bits per field into a `u64`.
pub const FIELDS_MAX: usize = 16;

/// Most tested levels per field; with the implicit "else" level the indexes 0..=14 stay below [`NULL`].
pub const LEVELS_TESTED_MAX: usize = 14;

/// The nibble that marks a null comparison (a value missing on either side).
pub const NULL: u8 = 15;

/// Which value of a record a field compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    /// Folded given name (tests: exact, nickname, phonetic, string measures).
    GivenName,
    /// Folded family name.
    FamilyName,
    /// Date of birth (tests: exact, date_*).
    BirthDate,
    /// Sex (exact only).
    Sex,
    /// Standardised address (string measures and tfidf_cosine).
    Address,
    /// Folded city.
    City,
    /// Postcode.
    Postcode,
    /// Folded state.
    State,
    /// Phone digits.
    Phone,
    /// E-mail.
    Email,
    /// National id.
    NationalId,
    /// The graph signal: cosine of record embeddings, filled in by [`ComparisonSpec::set_graph`].
    Graph,
    /// Where and how to reach the person: a composite of address, postcode, city and phone whose levels
    /// test those attributes (every level names its attribute with `on`). One field instead of four,
    /// because they change together when a person moves and would otherwise be counted as four
    /// independent pieces of evidence.
    Contact,
}

/// The attributes a [`Attribute::Contact`] field is built from; it is null when none of them is
/// present on both sides.
pub const CONTACT_PARTS: [Attribute; 4] = [
    Attribute::Address,
    Attribute::Postcode,
    Attribute::City,
    Attribute::Phone,
];

/// One level's test. Tests that do not apply to an attribute are refused by [`ComparisonSpec::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "test", rename_all = "snake_case")]
pub enum Test {
    /// Values equal after normalisation.
    Exact,
    /// Given names share a formal name in the nickname table.
    Nickname,
    /// Names share a Double Metaphone code (primary or alternate, either way round).
    Phonetic,
    /// Jaro-Winkler at least `min`.
    JaroWinkler {
        /// Threshold.
        min: f64,
    },
    /// Optimal string alignment distance at most `max`.
    DamerauLevenshtein {
        /// Threshold.
        max: u32,
    },
    /// Bigram Jaccard at least `min`.
    BigramJaccard {
        /// Threshold.
        min: f64,
    },
    /// Bigram Dice at least `min`.
    BigramDice {
        /// Threshold.
        min: f64,
    },
    /// TF-IDF cosine of the address tokens at least `min`.
    TfidfCosine {
        /// Threshold.
        min: f64,
    },
    /// Same first `chars` characters.
    Prefix {
        /// Length compared.
        chars: usize,
    },
    /// Dates with day and month exchanged.
    DateSwapped,
    /// Dates equal in two of year, month, day.
    DateOneComponent,
    /// Dates whose years differ by at most `years`.
    DateWithinYears {
        /// Threshold.
        years: u16,
    },
    /// Graph cosine at least `min`.
    GraphCosine {
        /// Threshold.
        min: f32,
    },
}

/// A named level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelSpec {
    /// Shown in explanations.
    pub name: String,
    /// Its test.
    #[serde(flatten)]
    pub test: Test,
    /// The attribute the test reads, when not the field's own (required in a `contact` field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Attribute>,
    /// Further conditions that must all hold too.
    #[serde(default, rename = "and", skip_serializing_if = "Vec::is_empty")]
    pub and: Vec<Condition>,
}

impl LevelSpec {
    /// A level with one test on the field's own attribute.
    pub fn new(name: &str, test: Test) -> LevelSpec {
        LevelSpec {
            name: name.to_string(),
            test,
            on: None,
            and: Vec::new(),
        }
    }

    /// A level whose test reads another attribute.
    pub fn on(name: &str, test: Test, on: Attribute) -> LevelSpec {
        LevelSpec {
            on: Some(on),
            ..LevelSpec::new(name, test)
        }
    }

    /// Adds a condition.
    pub fn and(mut self, test: Test, on: Attribute) -> LevelSpec {
        self.and.push(Condition { on, test });
        self
    }
}

/// A test on a named attribute, for levels that combine several.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// The attribute read.
    pub on: Attribute,
    /// The test.
    #[serde(flatten)]
    pub test: Test,
}

/// One compared field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldSpec {
    /// Shown in explanations.
    pub name: String,
    /// The value compared.
    pub attribute: Attribute,
    /// Levels from best to worst; an implicit "else" level follows them.
    pub levels: Vec<LevelSpec>,
    /// Whether an exact match is weighted by the value's term frequency (rare names count more).
    #[serde(default)]
    pub tf_adjust: bool,
}

/// The comparison of every field of a pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonSpec {
    /// Fields in vector order.
    pub fields: Vec<FieldSpec>,
}

/// Why a spec cannot be used.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SpecError {
    /// More than `FIELDS_MAX` fields.
    #[error("{0} fields, more than {FIELDS_MAX}")]
    TooManyFields(usize),
    /// A field has more than `LEVELS_TESTED_MAX` levels.
    #[error("field {field} has {levels} levels, more than {LEVELS_TESTED_MAX}")]
    TooManyLevels {
        /// The field.
        field: String,
        /// Its level count.
        levels: usize,
    },
    /// A test that does not apply to the field's attribute.
    #[error("field {field}: test {test} does not apply to {attribute:?}")]
    TestNotApplicable {
        /// The field.
        field: String,
        /// The test's name.
        test: String,
        /// The attribute.
        attribute: Attribute,
    },
    /// Two graph fields, which would count one signal twice.
    #[error("more than one graph field")]
    DuplicateGraph,
}

/// Per field, a level index (0 best) or [`NULL`], four bits each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ComparisonVector(pub u64);

impl ComparisonVector {
    /// Every field null.
    pub const ALL_NULL: ComparisonVector = ComparisonVector(u64::MAX);

    /// The level of field `i`, `None` when null.
    pub fn get(self, i: usize) -> Option<u8> {
        let v = ((self.0 >> (4 * i)) & 0xf) as u8;
        (v != NULL).then_some(v)
    }

    /// Sets field `i` to `level` (`None` for null).
    pub fn set(&mut self, i: usize, level: Option<u8>) {
        let v = u64::from(level.unwrap_or(NULL).min(NULL));
        self.0 = (self.0 & !(0xf << (4 * i))) | (v << (4 * i));
    }
}

impl ComparisonSpec {
    /// The default person comparison: names (exact, nickname, close spellings, phonetic), birth date
    /// (exact, day/month swapped, one component off), sex, contact (address and phone, address, phone,
    /// postcode, city), e-mail, national id, and the graph signal.
    pub fn person_default() -> ComparisonSpec {
        use Attribute as A;
        let l = LevelSpec::new;
        let jw = |min| Test::JaroWinkler { min };
        let f = |name: &str, attribute, tf_adjust, levels| FieldSpec {
            name: name.to_string(),
            attribute,
            levels,
            tf_adjust,
        };
        ComparisonSpec {
            fields: vec![
                f(
                    "given_name",
                    A::GivenName,
                    true,
                    vec![
                        l("exact", Test::Exact),
                        l("nickname", Test::Nickname),
                        l("jw>=0.92", jw(0.92)),
                        l("phonetic", Test::Phonetic),
                        l("jw>=0.80", jw(0.80)),
                    ],
                ),
                f(
                    "family_name",
                    A::FamilyName,
                    true,
                    vec![
                        l("exact", Test::Exact),
                        l("jw>=0.92", jw(0.92)),
                        l("phonetic", Test::Phonetic),
                        l("jw>=0.80", jw(0.80)),
                    ],
                ),
                f(
                    "birth_date",
                    A::BirthDate,
                    false,
                    vec![
                        l("exact", Test::Exact),
                        l("day/month swapped", Test::DateSwapped),
                        l("one component off", Test::DateOneComponent),
                    ],
                ),
                f("sex", A::Sex, false, vec![l("exact", Test::Exact)]),
                f(
                    "contact",
                    A::Contact,
                    false,
                    vec![
                        LevelSpec::on("address+phone", Test::TfidfCosine { min: 0.6 }, A::Address)
                            .and(Test::Exact, A::Phone),
                        LevelSpec::on("address", Test::TfidfCosine { min: 0.6 }, A::Address),
                        LevelSpec::on("phone", Test::DamerauLevenshtein { max: 1 }, A::Phone),
                        LevelSpec::on("postcode", Test::Exact, A::Postcode),
                        LevelSpec::on("city", Test::Exact, A::City),
                    ],
                ),
                f(
                    "email",
                    A::Email,
                    false,
                    // No "close" level: different people with common names have near-identical
                    // addresses (john.smith42@, john.smith43@), which a typo level would reward.
                    vec![l("exact", Test::Exact)],
                ),
                f(
                    "national_id",
                    A::NationalId,
                    false,
                    vec![
                        l("exact", Test::Exact),
                        l("1 edit", Test::DamerauLevenshtein { max: 1 }),
                    ],
                ),
                f(
                    "graph",
                    A::Graph,
                    false,
                    vec![
                        l("cos>=0.9", Test::GraphCosine { min: 0.9 }),
                        l("cos>=0.7", Test::GraphCosine { min: 0.7 }),
                        l("cos>=0.4", Test::GraphCosine { min: 0.4 }),
                    ],
                ),
            ],
        }
    }

    /// Checks limits and that each test applies to its attribute.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.fields.len() > FIELDS_MAX {
            return Err(SpecError::TooManyFields(self.fields.len()));
        }
        if self.fields.iter().filter(|f| f.attribute == Attribute::Graph).count() > 1 {
            return Err(SpecError::DuplicateGraph);
        }
        for f in &self.fields {
            if f.levels.len() > LEVELS_TESTED_MAX {
                return Err(SpecError::TooManyLevels {
                    field: f.name.clone(),
                    levels: f.levels.len(),
                });
            }
            for l in &f.levels {
                let own = l.on.unwrap_or(f.attribute);
                let conditions = std::iter::once((l.test, own)).chain(l.and.iter().map(|c| (c.test, c.on)));
                for (test, attribute) in conditions {
                    let graph_mix = (f.attribute == Attribute::Graph) != (attribute == Attribute::Graph);
                    if attribute == Attribute::Contact || graph_mix || !applies(test, attribute) {
                        return Err(SpecError::TestNotApplicable {
                            field: f.name.clone(),
                            test: format!("{test:?}"),
                            attribute,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The index of the graph field, if the spec has one.
    pub fn graph_field(&self) -> Option<usize> {
        self.fields.iter().position(|f| f.attribute == Attribute::Graph)
    }

    /// The name of level `level` of field `field` ("else" past the tested levels, "null" for `None`).
    pub fn level_name(&self, field: usize, level: Option<u8>) -> &str {
        match level {
            None => "null",
            Some(l) => self.fields[field]
                .levels
                .get(usize::from(l))
                .map(|l| l.name.as_str())
                .unwrap_or("else"),
        }
    }

    /// Number of levels of field `i`, including "else".
    pub fn level_count(&self, i: usize) -> usize {
        self.fields[i].levels.len() + 1
    }

    /// Compares two records field by field; the graph field stays null (see [`Self::set_graph`]).
    pub fn compare(&self, a: &NormalizedRecord, b: &NormalizedRecord) -> ComparisonVector {
        let mut v = ComparisonVector::ALL_NULL;
        let mut eval = Eval::new(a, b);
        for (i, f) in self.fields.iter().enumerate() {
            v.set(i, compare_field(f, &mut eval));
        }
        v
    }

    /// Sets the graph field of `v` from a cosine (`None` when either record has no graph attributes).
    pub fn set_graph(&self, v: &mut ComparisonVector, similarity: Option<f32>) {
        let Some(i) = self.graph_field() else { return };
        let level = similarity.map(|s| {
            let f = &self.fields[i];
            let hit = f
                .levels
                .iter()
                .position(|l| matches!(l.test, Test::GraphCosine { min } if s >= min));
            hit.unwrap_or(f.levels.len()) as u8
        });
        v.set(i, level);
    }
}

fn applies(test: Test, attribute: Attribute) -> bool {
    use Attribute as A;
    let text = !matches!(attribute, A::BirthDate | A::Sex | A::Graph | A::Contact);
    match test {
        Test::Exact => !matches!(attribute, A::Graph | A::Contact),
        Test::Nickname => attribute == A::GivenName,
        Test::Phonetic => matches!(attribute, A::GivenName | A::FamilyName),
        Test::JaroWinkler { .. }
        | Test::DamerauLevenshtein { .. }
        | Test::BigramJaccard { .. }
        | Test::BigramDice { .. }
        | Test::Prefix { .. } => text,
        Test::TfidfCosine { .. } => attribute == A::Address,
        Test::DateSwapped | Test::DateOneComponent | Test::DateWithinYears { .. } => attribute == A::BirthDate,
        Test::GraphCosine { .. } => attribute == A::Graph,
    }
}

/// Document frequencies of address tokens, from which TF-IDF weights come.
#[derive(Debug, Clone, Default)]
pub struct Idf {
    df: U64Map<u32>,
    docs: u32,
}

impl Idf {
    /// Counts the distinct tokens of every record.
    pub fn build<'a>(records: impl IntoIterator<Item = &'a NormalizedRecord>) -> Idf {
        let mut idf = Idf {
            df: u64_map(1024),
            docs: 0,
        };
        for r in records {
            idf.add(r);
        }
        idf
    }

    /// Counts one more record.
    pub fn add(&mut self, r: &NormalizedRecord) {
        self.docs = self.docs.saturating_add(1);
        for t in r.address_tokens.iter() {
            let c = self.df.entry(u64::from(t.hash)).or_insert(0);
            *c = c.saturating_add(1);
        }
    }

    /// The table as `(token hash, count)` pairs ascending, and the record count (for storage).
    pub fn to_parts(&self) -> (Vec<(u64, u32)>, u32) {
        let mut df: Vec<(u64, u32)> = self.df.iter().map(|(k, v)| (*k, *v)).collect();
        df.sort_unstable();
        (df, self.docs)
    }

    /// The table `to_parts` gave.
    pub fn from_parts(parts: &(Vec<(u64, u32)>, u32)) -> Idf {
        let mut df = u64_map(parts.0.len());
        df.extend(parts.0.iter().copied());
        Idf { df, docs: parts.1 }
    }

    /// Smoothed inverse document frequency, `ln((1 + N) / (1 + df)) + 1`; unseen tokens get the largest.
    pub fn weight(&self, token: u32) -> f32 {
        let df = self.df.get(&u64::from(token)).copied().unwrap_or(0);
        ((1.0 + f64::from(self.docs)) / (1.0 + f64::from(df))).ln() as f32 + 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;
    use crate::schema::{PersonRecord, RecordExt};

    fn rec(given: &str, family: &str, dob: &str) -> NormalizedRecord {
        let mut r = PersonRecord::new("S", "1");
        r.given_name = (!given.is_empty()).then(|| given.to_string());
        r.family_name = Some(family.to_string());
        r.birth_date = (!dob.is_empty()).then(|| dob.to_string());
        normalize(&r)
    }

    #[test]
    fn default_spec_is_valid_and_round_trips() {
        let spec = ComparisonSpec::person_default();
        spec.validate().unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert!(
            json.contains(r#"{"name":"jw>=0.92","test":"jaro_winkler","min":0.92}"#),
            "{json}"
        );
        let back: ComparisonSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn validation_refuses_misapplied_tests() {
        let mut spec = ComparisonSpec::person_default();
        spec.fields[1].levels.push(LevelSpec::new("nick", Test::Nickname));
        assert!(matches!(spec.validate(), Err(SpecError::TestNotApplicable { .. })));
    }

    #[test]
    fn levels_of_a_pair() {
        let spec = ComparisonSpec::person_default();
        let a = rec("Robert", "Smith", "1980-03-04");
        let b = rec("Bob", "Smyth", "1980-04-03");
        let v = spec.compare(&a, &b);
        assert_eq!(spec.level_name(0, v.get(0)), "nickname");
        // SMITH/SMYTH: Jaro-Winkler 0.893, under 0.92, but both code SM0.
        assert_eq!(spec.level_name(1, v.get(1)), "phonetic");
        assert_eq!(spec.level_name(2, v.get(2)), "day/month swapped");
        assert_eq!(spec.level_name(3, v.get(3)), "null");
        let c = rec("", "Jones", "1990-01-01");
        let w = spec.compare(&a, &c);
        assert_eq!(w.get(0), None);
        assert_eq!(spec.level_name(1, w.get(1)), "else");
        assert_eq!(spec.level_name(2, w.get(2)), "else");
        // Comparison is symmetric.
        assert_eq!(spec.compare(&b, &a), v);
    }

    #[test]
    fn graph_levels_and_vector_packing() {
        let spec = ComparisonSpec::person_default();
        let g = spec.graph_field().unwrap();
        let mut v = ComparisonVector::ALL_NULL;
        spec.set_graph(&mut v, Some(0.95));
        assert_eq!(v.get(g), Some(0));
        spec.set_graph(&mut v, Some(0.5));
        assert_eq!(v.get(g), Some(2));
        spec.set_graph(&mut v, Some(-0.2));
        assert_eq!(spec.level_name(g, v.get(g)), "else");
        spec.set_graph(&mut v, None);
        assert_eq!(v, ComparisonVector::ALL_NULL);
        v.set(3, Some(7));
        assert_eq!(v.get(3), Some(7));
        assert_eq!(v.get(2), None);
    }

    #[test]
    fn idf_weights_rare_tokens_higher() {
        let mut records = Vec::new();
        for (i, line) in ["1 Main St", "2 Main St", "3 Oak St", "4 Elm Ave"].iter().enumerate() {
            let mut r = PersonRecord::new("S", i.to_string());
            r.address_line = Some(line.to_string());
            records.push(normalize(&r));
        }
        let idf = Idf::build(&records);
        let st = crate::normalize::token_hash("ST");
        let elm = crate::normalize::token_hash("ELM");
        assert!(idf.weight(elm) > idf.weight(st));
        assert!(idf.weight(crate::normalize::token_hash("NEVER")) > idf.weight(elm));
    }
}
