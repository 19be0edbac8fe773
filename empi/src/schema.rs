//! The canonical person record, its key, and the per-record validation that every ingest format ends in.
//!
//! This module is the wire shape of a person as plexus stores it: plain optional strings with the exact
//! canonical field names, so that NDJSON in canonical form needs no mapping and postcard carries it
//! compactly. It does not normalise or compare anything (see `normalize` and `compare`); it only says
//! whether a record is well formed and, when it is not, which field is wrong and why.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::normalize::Date;

/// Longest accepted value of any one field, in bytes; longer values are reported, never truncated silently.
pub const FIELD_BYTES_MAX: usize = 256;

/// Longest accepted source name or source record id, in bytes.
pub const KEY_PART_BYTES_MAX: usize = 128;

/// A person as one source system knows it: the wire type of `plexus-proto`, shared with the client
/// library and the nodes; [`RecordExt`] adds field access, keys and validation.
pub use plexus_proto::PersonRecord;

/// The canonical fields, in schema order; mappings name their targets with these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// `source`.
    Source,
    /// `source_id`.
    SourceId,
    /// `given_name`.
    GivenName,
    /// `family_name`.
    FamilyName,
    /// `birth_date`.
    BirthDate,
    /// `sex`.
    Sex,
    /// `street_number`.
    StreetNumber,
    /// `address_line`.
    AddressLine,
    /// `address_line2`.
    AddressLine2,
    /// `city`.
    City,
    /// `postcode`.
    Postcode,
    /// `state`.
    State,
    /// `phone`.
    Phone,
    /// `email`.
    Email,
    /// `national_id`.
    NationalId,
}

impl Field {
    /// Every field in schema order.
    pub const ALL: [Field; 15] = [
        Field::Source,
        Field::SourceId,
        Field::GivenName,
        Field::FamilyName,
        Field::BirthDate,
        Field::Sex,
        Field::StreetNumber,
        Field::AddressLine,
        Field::AddressLine2,
        Field::City,
        Field::Postcode,
        Field::State,
        Field::Phone,
        Field::Email,
        Field::NationalId,
    ];

    /// The canonical (wire) name.
    pub fn name(self) -> &'static str {
        match self {
            Field::Source => "source",
            Field::SourceId => "source_id",
            Field::GivenName => "given_name",
            Field::FamilyName => "family_name",
            Field::BirthDate => "birth_date",
            Field::Sex => "sex",
            Field::StreetNumber => "street_number",
            Field::AddressLine => "address_line",
            Field::AddressLine2 => "address_line2",
            Field::City => "city",
            Field::Postcode => "postcode",
            Field::State => "state",
            Field::Phone => "phone",
            Field::Email => "email",
            Field::NationalId => "national_id",
        }
    }

    /// Parses a canonical name.
    pub fn parse(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether a JSON number is an acceptable spelling of this field (identifiers and codes are often
    /// exported as numbers; names and dates never are).
    pub fn accepts_number(self) -> bool {
        matches!(
            self,
            Field::SourceId | Field::StreetNumber | Field::Postcode | Field::Phone | Field::NationalId
        )
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Field access, keys and validation of a [`PersonRecord`].
pub trait RecordExt {
    /// A record with only its key set.
    fn new(source: impl Into<String>, source_id: impl Into<String>) -> Self;
    /// The value of a field.
    fn get(&self, field: Field) -> Option<&str>;
    /// Sets a field; an empty or blank value clears an optional field.
    fn set(&mut self, field: Field, value: String);
    /// The record's key; fails when `source` or `source_id` is not a valid key part.
    fn key(&self) -> Result<RecordKey, KeyError>;
    /// Checks every field and returns all problems found, so a steward sees every reason at once.
    fn validate(&self) -> Result<(), Vec<FieldIssue>>;
}

impl RecordExt for PersonRecord {
    fn new(source: impl Into<String>, source_id: impl Into<String>) -> Self {
        PersonRecord {
            source: source.into(),
            source_id: source_id.into(),
            ..PersonRecord::default()
        }
    }

    fn get(&self, field: Field) -> Option<&str> {
        slot(self, field).map(|s| s.as_deref()).unwrap_or(match field {
            Field::Source => Some(self.source.as_str()),
            Field::SourceId => Some(self.source_id.as_str()),
            _ => None,
        })
    }

    fn set(&mut self, field: Field, value: String) {
        match field {
            Field::Source => self.source = value,
            Field::SourceId => self.source_id = value,
            _ => {
                if let Some(slot) = slot_mut(self, field) {
                    *slot = if value.trim().is_empty() { None } else { Some(value) };
                }
            }
        }
    }

    fn key(&self) -> Result<RecordKey, KeyError> {
        RecordKey::new(&self.source, &self.source_id)
    }

    fn validate(&self) -> Result<(), Vec<FieldIssue>> {
        let mut issues = Vec::new();
        if let Err(e) = RecordKey::new(&self.source, &self.source_id) {
            let field = match e {
                KeyError::EmptySource | KeyError::ColonInSource | KeyError::SourceTooLong { .. } => Field::Source,
                _ => Field::SourceId,
            };
            let problem = match e {
                KeyError::EmptySource | KeyError::EmptyId => FieldProblem::Missing,
                other => FieldProblem::BadKey(other),
            };
            issues.push(FieldIssue { field, problem });
        }
        for field in Field::ALL {
            let Some(Some(value)) = slot(self, field) else { continue };
            if value.len() > FIELD_BYTES_MAX {
                issues.push(FieldIssue {
                    field,
                    problem: FieldProblem::TooLong { bytes: value.len() },
                });
            } else if value.chars().any(char::is_control) {
                issues.push(FieldIssue {
                    field,
                    problem: FieldProblem::ControlCharacter,
                });
            } else if field == Field::BirthDate && Date::parse_iso(value).is_none() {
                issues.push(FieldIssue {
                    field,
                    problem: FieldProblem::BadDate {
                        value: value.chars().take(40).collect(),
                    },
                });
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }
}

fn slot(r: &PersonRecord, field: Field) -> Option<&Option<String>> {
    Some(match field {
        Field::Source | Field::SourceId => return None,
        Field::GivenName => &r.given_name,
        Field::FamilyName => &r.family_name,
        Field::BirthDate => &r.birth_date,
        Field::Sex => &r.sex,
        Field::StreetNumber => &r.street_number,
        Field::AddressLine => &r.address_line,
        Field::AddressLine2 => &r.address_line2,
        Field::City => &r.city,
        Field::Postcode => &r.postcode,
        Field::State => &r.state,
        Field::Phone => &r.phone,
        Field::Email => &r.email,
        Field::NationalId => &r.national_id,
    })
}

fn slot_mut(r: &mut PersonRecord, field: Field) -> Option<&mut Option<String>> {
    Some(match field {
        Field::Source | Field::SourceId => return None,
        Field::GivenName => &mut r.given_name,
        Field::FamilyName => &mut r.family_name,
        Field::BirthDate => &mut r.birth_date,
        Field::Sex => &mut r.sex,
        Field::StreetNumber => &mut r.street_number,
        Field::AddressLine => &mut r.address_line,
        Field::AddressLine2 => &mut r.address_line2,
        Field::City => &mut r.city,
        Field::Postcode => &mut r.postcode,
        Field::State => &mut r.state,
        Field::Phone => &mut r.phone,
        Field::Email => &mut r.email,
        Field::NationalId => &mut r.national_id,
    })
}

/// A record's name, `SOURCE:SOURCE_RECORD_ID`: the source may not contain `:`, the id may.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordKey {
    /// Source system.
    pub source: String,
    /// Record id within the source.
    pub id: String,
}

/// Why a string is not a record key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// There is no `:` between source and id.
    #[error("record key has no ':' between source and id (expected SOURCE:SOURCE_RECORD_ID)")]
    MissingColon,
    /// The source part is empty.
    #[error("record key has an empty source")]
    EmptySource,
    /// The id part is empty.
    #[error("record key has an empty source record id")]
    EmptyId,
    /// A source name contains `:`, which would make the key ambiguous.
    #[error("source name contains ':'")]
    ColonInSource,
    /// The source name is longer than `KEY_PART_BYTES_MAX`.
    #[error("source name is {bytes} bytes, more than {KEY_PART_BYTES_MAX}")]
    SourceTooLong {
        /// Its length.
        bytes: usize,
    },
    /// The id is longer than `KEY_PART_BYTES_MAX`.
    #[error("source record id is {bytes} bytes, more than {KEY_PART_BYTES_MAX}")]
    IdTooLong {
        /// Its length.
        bytes: usize,
    },
    /// A key part contains a control character or surrounding whitespace.
    #[error("record key part has a control character or surrounding whitespace")]
    BadCharacter,
}

impl RecordKey {
    /// Checks and builds a key from its parts.
    pub fn new(source: &str, id: &str) -> Result<Self, KeyError> {
        if source.is_empty() {
            return Err(KeyError::EmptySource);
        }
        if id.is_empty() {
            return Err(KeyError::EmptyId);
        }
        if source.contains(':') {
            return Err(KeyError::ColonInSource);
        }
        if source.len() > KEY_PART_BYTES_MAX {
            return Err(KeyError::SourceTooLong { bytes: source.len() });
        }
        if id.len() > KEY_PART_BYTES_MAX {
            return Err(KeyError::IdTooLong { bytes: id.len() });
        }
        let bad = |s: &str| s.chars().any(char::is_control) || s.trim() != s;
        if bad(source) || bad(id) {
            return Err(KeyError::BadCharacter);
        }
        Ok(RecordKey {
            source: source.to_string(),
            id: id.to_string(),
        })
    }
}

impl FromStr for RecordKey {
    type Err = KeyError;

    /// Splits at the first `:`, since sources never contain one and ids may.
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let (source, id) = s.split_once(':').ok_or(KeyError::MissingColon)?;
        RecordKey::new(source, id)
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.id)
    }
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIssue {
    /// The field.
    pub field: Field,
    /// What is wrong with it.
    pub problem: FieldProblem,
}

impl fmt::Display for FieldIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// What can be wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FieldProblem {
    /// A required field is absent or empty.
    #[error("missing required field")]
    Missing,
    /// The value has the wrong JSON type (an object where a string belongs, say).
    #[error("wrong type: expected {expected}, found {found}")]
    WrongType {
        /// What the schema wants.
        expected: &'static str,
        /// What the input had.
        found: &'static str,
    },
    /// A date that no accepted format reads, or that does not exist.
    #[error("unparseable date {value:?}")]
    BadDate {
        /// The value (first 40 characters).
        value: String,
    },
    /// The value is longer than `FIELD_BYTES_MAX`.
    #[error("{bytes} bytes, more than {FIELD_BYTES_MAX}")]
    TooLong {
        /// Its length.
        bytes: usize,
    },
    /// The value contains a control character.
    #[error("contains a control character")]
    ControlCharacter,
    /// The source or id is not a valid key part.
    #[error("{0}")]
    BadKey(KeyError),
}

/// Where in its input a record sat, so a report points a person at the right line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Position {
    /// A 1-based line number in a text file (CSV, NDJSON).
    Line(u64),
    /// A 0-based entry index (a FHIR Bundle entry, an HL7 message in a file).
    Entry(u64),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(n) => write!(f, "line {n}"),
            Position::Entry(n) => write!(f, "entry {n}"),
        }
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Reason {
    /// One or more fields are invalid.
    #[error("{}", join_issues(.0))]
    Fields(Vec<FieldIssue>),
    /// The record's text is not syntactically valid (bad JSON, a CSV row of the wrong width).
    #[error("syntax: {0}")]
    Syntax(String),
    /// The record is longer than the format's cap.
    #[error("record is longer than {bytes_max} bytes")]
    TooLong {
        /// The cap it broke.
        bytes_max: usize,
    },
    /// The record is of a kind this ingest does not take (a FHIR resource that is not a Patient).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Reading the input failed; the stream ends after this item.
    #[error("read failed: {0}")]
    Io(String),
}

fn join_issues(issues: &[FieldIssue]) -> String {
    issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// A refused record: where it was and why. Ingest yields these in place of the record and goes on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{position}{}: {reason}", .key.as_ref().map(|k| format!(" ({k})")).unwrap_or_default())]
pub struct RecordError {
    /// Where the record was.
    pub position: Position,
    /// Its key, when it could be read.
    pub key: Option<String>,
    /// Why it was refused.
    pub reason: Reason,
}

impl RecordError {
    /// An error at `position` with no key.
    pub fn new(position: Position, reason: Reason) -> Self {
        RecordError {
            position,
            key: None,
            reason,
        }
    }
}

/// Validates `record` found at `position`, turning problems into a [`RecordError`] that names its key.
pub fn check(record: PersonRecord, position: Position) -> Result<PersonRecord, RecordError> {
    match record.validate() {
        Ok(()) => Ok(record),
        Err(issues) => Err(RecordError {
            position,
            key: record.key().ok().map(|k| k.to_string()),
            reason: Reason::Fields(issues),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parses_and_displays() {
        let k: RecordKey = "HOSP_A:123:x".parse().unwrap();
        assert_eq!(k.source, "HOSP_A");
        assert_eq!(k.id, "123:x");
        assert_eq!(k.to_string(), "HOSP_A:123:x");
        assert_eq!("nocolon".parse::<RecordKey>(), Err(KeyError::MissingColon));
        assert_eq!(":1".parse::<RecordKey>(), Err(KeyError::EmptySource));
        assert_eq!("A:".parse::<RecordKey>(), Err(KeyError::EmptyId));
        assert_eq!("A: 1".parse::<RecordKey>(), Err(KeyError::BadCharacter));
        let long = format!("A:{}", "9".repeat(KEY_PART_BYTES_MAX + 1));
        assert_eq!(
            long.parse::<RecordKey>(),
            Err(KeyError::IdTooLong {
                bytes: KEY_PART_BYTES_MAX + 1
            })
        );
    }

    #[test]
    fn canonical_json_and_postcard_round_trip() {
        let json = r#"{"source":"S","source_id":"1","given_name":"Ann","birth_date":"1980-02-29","national_id":"123"}"#;
        let r: PersonRecord = serde_json::from_str(json).unwrap();
        assert_eq!(r.given_name.as_deref(), Some("Ann"));
        assert_eq!(r.birth_date.as_deref(), Some("1980-02-29"));
        assert_eq!(r.validate(), Ok(()));
        let out = serde_json::to_string(&r).unwrap();
        assert!(
            out.starts_with(r#"{"source":"S","source_id":"1","given_name":"Ann","family_name":null,"#),
            "{out}"
        );
        assert_eq!(serde_json::from_str::<PersonRecord>(&out).unwrap(), r);
        let bytes = postcard::to_allocvec(&r).unwrap();
        // 2 + 2 key bytes, 5 + 12 + 5 for the three values, one byte for each of the ten absent fields.
        assert_eq!(bytes.len(), 36);
        assert_eq!(postcard::from_bytes::<PersonRecord>(&bytes).unwrap(), r);
        let key = r.key().unwrap();
        assert_eq!(
            postcard::from_bytes::<RecordKey>(&postcard::to_allocvec(&key).unwrap()).unwrap(),
            key
        );
    }

    #[test]
    fn validation_lists_every_problem() {
        let mut r = PersonRecord::new("", "7");
        r.birth_date = Some("1981-02-29".into());
        r.city = Some("x".repeat(FIELD_BYTES_MAX + 1));
        let issues = r.validate().unwrap_err();
        assert_eq!(
            issues,
            vec![
                FieldIssue {
                    field: Field::Source,
                    problem: FieldProblem::Missing
                },
                FieldIssue {
                    field: Field::BirthDate,
                    problem: FieldProblem::BadDate {
                        value: "1981-02-29".into()
                    }
                },
                FieldIssue {
                    field: Field::City,
                    problem: FieldProblem::TooLong {
                        bytes: FIELD_BYTES_MAX + 1
                    }
                },
            ]
        );
        let err = check(r, Position::Line(4)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 4: source: missing required field; birth_date: unparseable date \"1981-02-29\"; city: 257 bytes, more than 256"
        );
    }

    #[test]
    fn set_clears_blank_optional_fields() {
        let mut r = PersonRecord::new("S", "1");
        r.set(Field::Email, "  ".into());
        assert_eq!(r.email, None);
        r.set(Field::Email, "a@b.c".into());
        assert_eq!(r.get(Field::Email), Some("a@b.c"));
        assert_eq!(r.get(Field::Source), Some("S"));
        assert_eq!(Field::parse("address_line2"), Some(Field::AddressLine2));
    }
}
