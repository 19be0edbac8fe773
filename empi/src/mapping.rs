//! Mapping configuration: which input column (CSV) or JSON path (NDJSON) feeds each canonical field,
//! with an optional date format per field, in TOML or JSON.
//!
//! ```toml
//! source = "HOSP_A"                 # a constant source system, when no column carries it
//! [fields]
//! source_id = "MRN"                 # shorthand: the column or path
//! given_name = "patient.name[0].given[0]"
//! birth_date = { from = "DOB", date_format = "%d/%m/%Y" }
//! ```
//!
//! Paths are dotted keys with array indices (`a.b[2].c`); keys containing `.` or `[` cannot be named.
//! A CSV column is matched by exact header, then by header ignoring case and surrounding spaces. This
//! module turns one input row or object into a [`PersonRecord`] and reports every problem per field; it
//! does not read files (see `ingest`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::date::Date;
use crate::schema::{
    Field, FieldIssue, FieldProblem, PersonRecord, Position, Reason, RecordError, RecordExt, FIELD_BYTES_MAX,
};

/// Longest mapping text accepted, in bytes.
pub const MAPPING_BYTES_MAX: usize = 64 * 1024;

/// Most segments in one JSON path.
pub const PATH_SEGMENTS_MAX: usize = 16;

/// Where one canonical field comes from: a bare column/path, or a table with a date format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldSource {
    /// A column name or JSON path.
    From(String),
    /// A column or path with options.
    Spec {
        /// The column name or JSON path.
        from: String,
        /// A `strftime`-style date format (`%Y`, `%y`, `%m`, `%d`, `%b`), for date fields.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        date_format: Option<String>,
    },
}

impl FieldSource {
    /// The column name or path.
    pub fn from(&self) -> &str {
        match self {
            FieldSource::From(s) | FieldSource::Spec { from: s, .. } => s,
        }
    }

    /// The date format, if any.
    pub fn date_format(&self) -> Option<&str> {
        match self {
            FieldSource::From(_) => None,
            FieldSource::Spec { date_format, .. } => date_format.as_deref(),
        }
    }
}

/// A mapping from input names to canonical fields.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// A constant source system for every record, used when no field maps to `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Canonical field → where its value comes from.
    #[serde(default)]
    pub fields: BTreeMap<Field, FieldSource>,
}

/// Why a mapping cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MappingError {
    /// The TOML or JSON text does not parse.
    #[error("mapping does not parse: {0}")]
    Syntax(String),
    /// The text is longer than `MAPPING_BYTES_MAX`.
    #[error("mapping is {0} bytes, more than {MAPPING_BYTES_MAX}")]
    TooLong(usize),
    /// Neither a `source` constant nor a `source` field.
    #[error("no source: map a column to `source` or set a constant `source`")]
    NoSource,
    /// No field maps to `source_id`.
    #[error("no column or path maps to `source_id`")]
    NoSourceId,
    /// A path is malformed.
    #[error("field {field}: bad path {path:?}: {reason}")]
    BadPath {
        /// The field.
        field: Field,
        /// The path.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A date format without year, month and day, or on a field that is not a date.
    #[error("field {field}: bad date format {format:?} (needs %Y or %y, %m or %b, and %d, on birth_date)")]
    BadDateFormat {
        /// The field.
        field: Field,
        /// The format.
        format: String,
    },
    /// A mapped CSV column is not in the header.
    #[error("field {field}: column {column:?} is not in the header")]
    MissingColumn {
        /// The field.
        field: Field,
        /// The column.
        column: String,
    },
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// An object key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Parses `a.b[2].c` into segments.
pub fn parse_path(path: &str) -> Result<Vec<Segment>, &'static str> {
    let mut out = Vec::new();
    if path.is_empty() {
        return Err("empty path");
    }
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty() && (out.is_empty() || rest.is_empty()) {
            return Err("empty key");
        }
        if !key.is_empty() {
            out.push(Segment::Key(key.to_string()));
        }
        while !rest.is_empty() {
            let close = rest.find(']').ok_or("unclosed '['")?;
            let index = rest[1..close].parse::<usize>().map_err(|_| "index is not a number")?;
            out.push(Segment::Index(index));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err("text after ']'");
            }
        }
        if out.len() > PATH_SEGMENTS_MAX {
            return Err("too many segments");
        }
    }
    Ok(out)
}

/// The value at `path` inside `value`, if any.
pub fn lookup<'a>(value: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, seg| match seg {
        Segment::Key(k) => v.get(k.as_str()),
        Segment::Index(i) => v.get(*i),
    })
}

impl Mapping {
    /// The identity mapping of canonical NDJSON: every field from its own name.
    pub fn canonical() -> Mapping {
        Mapping {
            source: None,
            fields: Field::ALL
                .iter()
                .map(|&f| (f, FieldSource::From(f.name().to_string())))
                .collect(),
        }
    }

    /// Parses a mapping from TOML or JSON (JSON when the text starts with `{`) and checks it.
    pub fn parse(text: &str) -> Result<Mapping, MappingError> {
        if text.len() > MAPPING_BYTES_MAX {
            return Err(MappingError::TooLong(text.len()));
        }
        let mapping: Mapping = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| MappingError::Syntax(e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| MappingError::Syntax(e.to_string()))?
        };
        mapping.check()?;
        Ok(mapping)
    }

    /// Checks that the mapping can produce keyed records and that paths and formats are well formed.
    pub fn check(&self) -> Result<(), MappingError> {
        if self.source.is_none() && !self.fields.contains_key(&Field::Source) {
            return Err(MappingError::NoSource);
        }
        if !self.fields.contains_key(&Field::SourceId) {
            return Err(MappingError::NoSourceId);
        }
        for (&field, src) in &self.fields {
            parse_path(src.from()).map_err(|reason| MappingError::BadPath {
                field,
                path: src.from().to_string(),
                reason,
            })?;
            if let Some(format) = src.date_format() {
                let has = |a: &str, b: &str| format.contains(a) || format.contains(b);
                if field != Field::BirthDate || !has("%Y", "%y") || !has("%m", "%b") || !format.contains("%d") {
                    return Err(MappingError::BadDateFormat {
                        field,
                        format: format.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Resolves the mapped CSV columns against a header row.
    pub fn columns(&self, header: &[&str]) -> Result<Vec<(Field, usize)>, MappingError> {
        let mut out = Vec::new();
        for (&field, src) in &self.fields {
            let name = src.from();
            let index = header.iter().position(|h| *h == name).or_else(|| {
                let want = name.trim().to_lowercase();
                header.iter().position(|h| h.trim().to_lowercase() == want)
            });
            match index {
                Some(i) => out.push((field, i)),
                None => {
                    return Err(MappingError::MissingColumn {
                        field,
                        column: name.to_string(),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Builds a record from CSV cells (`columns` from [`Self::columns`]); every problem is reported.
    pub fn from_row(
        &self,
        columns: &[(Field, usize)],
        row: &[&str],
        position: Position,
    ) -> Result<PersonRecord, RecordError> {
        let mut record = PersonRecord::default();
        let mut issues = Vec::new();
        if let Some(s) = &self.source {
            record.source = s.clone();
        }
        for &(field, i) in columns {
            let cell = row.get(i).copied().unwrap_or("").trim();
            if !cell.is_empty() {
                self.put(&mut record, field, cell.to_string(), &mut issues);
            }
        }
        finish(record, issues, position)
    }

    /// Builds a record from a JSON object; every problem is reported.
    pub fn from_json(&self, value: &Value, position: Position) -> Result<PersonRecord, RecordError> {
        let mut record = PersonRecord::default();
        let mut issues = Vec::new();
        if let Some(s) = &self.source {
            record.source = s.clone();
        }
        for (&field, src) in &self.fields {
            // Paths were checked by `check`; an unparseable one here simply finds nothing.
            let Ok(path) = parse_path(src.from()) else { continue };
            let text = match lookup(value, &path) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.trim().to_string(),
                Some(Value::Number(n)) if field.accepts_number() => n.to_string(),
                Some(other) => {
                    issues.push(FieldIssue {
                        field,
                        problem: FieldProblem::WrongType {
                            expected: if field.accepts_number() {
                                "string or number"
                            } else {
                                "string"
                            },
                            found: json_type(other),
                        },
                    });
                    continue;
                }
            };
            if !text.is_empty() {
                self.put(&mut record, field, text, &mut issues);
            }
        }
        finish(record, issues, position)
    }

    /// Sets one field, converting dates to the wire form.
    fn put(&self, record: &mut PersonRecord, field: Field, value: String, issues: &mut Vec<FieldIssue>) {
        if value.len() > FIELD_BYTES_MAX {
            issues.push(FieldIssue {
                field,
                problem: FieldProblem::TooLong { bytes: value.len() },
            });
            return;
        }
        if field == Field::BirthDate {
            let format = self.fields.get(&field).and_then(FieldSource::date_format);
            let date = match format {
                Some(f) => Date::parse_with_format(&value, f),
                None => Date::parse_any(&value),
            };
            match date {
                Some(d) => record.set(field, d.to_iso()),
                None => issues.push(FieldIssue {
                    field,
                    problem: FieldProblem::BadDate {
                        value: value.chars().take(40).collect(),
                    },
                }),
            }
            return;
        }
        record.set(field, value);
    }
}

/// Validates a built record, merging earlier issues with validation's.
fn finish(record: PersonRecord, mut issues: Vec<FieldIssue>, position: Position) -> Result<PersonRecord, RecordError> {
    if let Err(more) = record.validate() {
        for m in more {
            if !issues.iter().any(|i| i.field == m.field) {
                issues.push(m);
            }
        }
    }
    if issues.is_empty() {
        return Ok(record);
    }
    issues.sort_by_key(|i| i.field);
    Err(RecordError {
        position,
        key: record.key().ok().map(|k| k.to_string()),
        reason: Reason::Fields(issues),
    })
}

/// The JSON type name of a value, for error messages.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
source = "HOSP_A"
[fields]
source_id = "MRN"
given_name = "First Name"
family_name = { from = "Surname" }
birth_date = { from = "DOB", date_format = "%d/%m/%Y" }
phone = "Phone"
"#;

    #[test]
    fn toml_and_json_mappings_parse_and_check() {
        let m = Mapping::parse(TOML).unwrap();
        assert_eq!(m.source.as_deref(), Some("HOSP_A"));
        assert_eq!(m.fields[&Field::GivenName], FieldSource::From("First Name".into()));
        assert_eq!(m.fields[&Field::BirthDate].date_format(), Some("%d/%m/%Y"));
        let json = r#"{"fields": {"source": "sys", "source_id": "id", "given_name": "name[0].given[1]"}}"#;
        let j = Mapping::parse(json).unwrap();
        assert_eq!(j.fields[&Field::GivenName].from(), "name[0].given[1]");
        assert_eq!(
            Mapping::parse("[fields]\nsource_id = \"x\"").unwrap_err(),
            MappingError::NoSource
        );
        assert_eq!(Mapping::parse("source = \"S\"").unwrap_err(), MappingError::NoSourceId);
        assert!(matches!(
            Mapping::parse(
                "source = \"S\"\n[fields]\nsource_id = \"x\"\ncity = { from = \"c\", date_format = \"%d\" }"
            ),
            Err(MappingError::BadDateFormat { field: Field::City, .. })
        ));
        assert!(matches!(
            Mapping::parse("source = \"S\"\n[fields]\nsourceid = \"x\""),
            Err(MappingError::Syntax(_))
        ));
        assert!(matches!(Mapping::parse("bogus = 1"), Err(MappingError::Syntax(_))));
    }

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("a.b[2][0].c").unwrap(),
            vec![
                Segment::Key("a".into()),
                Segment::Key("b".into()),
                Segment::Index(2),
                Segment::Index(0),
                Segment::Key("c".into())
            ]
        );
        assert_eq!(parse_path("a..b"), Err("empty key"));
        assert_eq!(parse_path("a[x]"), Err("index is not a number"));
        assert_eq!(parse_path("a[1"), Err("unclosed '['"));
        assert_eq!(parse_path("a[1]b"), Err("text after ']'"));
        let v: Value = serde_json::json!({"a": {"b": [0, 0, [{"c": "hit"}]]}});
        assert_eq!(
            lookup(&v, &parse_path("a.b[2][0].c").unwrap()),
            Some(&Value::String("hit".into()))
        );
        assert_eq!(lookup(&v, &parse_path("a.b[9]").unwrap()), None);
    }

    #[test]
    fn rows_become_records_with_per_field_reasons() {
        let m = Mapping::parse(TOML).unwrap();
        let header = ["MRN", "First Name", "surname ", "DOB", "Phone", "Extra"];
        let cols = m.columns(&header).unwrap();
        let r = m
            .from_row(
                &cols,
                &["77", "Ann", "Lee", "04/03/1980", "555 1234", "x"],
                Position::Line(2),
            )
            .unwrap();
        assert_eq!(r.source, "HOSP_A");
        assert_eq!(r.source_id, "77");
        assert_eq!(r.family_name.as_deref(), Some("Lee"));
        assert_eq!(r.birth_date.as_deref(), Some("1980-03-04"));
        let err = m
            .from_row(&cols, &["", "Ann", "Lee", "1980-03-04", "", ""], Position::Line(3))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3: source_id: missing required field; birth_date: unparseable date \"1980-03-04\""
        );
        assert!(matches!(m.columns(&["MRN"]), Err(MappingError::MissingColumn { .. })));
    }

    #[test]
    fn json_values_are_typed() {
        let m = Mapping::canonical();
        let v = serde_json::json!({"source": "S", "source_id": 12, "given_name": {"x": 1}, "postcode": 2139, "birth_date": "3/4/1980"});
        let err = m.from_json(&v, Position::Line(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 1 (S:12): given_name: wrong type: expected string, found object"
        );
        let v = serde_json::json!({"source": "S", "source_id": "12", "postcode": 2139, "birth_date": "3/4/1980", "city": null});
        let r = m.from_json(&v, Position::Line(1)).unwrap();
        assert_eq!(r.postcode.as_deref(), Some("2139"));
        assert_eq!(r.birth_date.as_deref(), Some("1980-03-04"));
        assert_eq!(r.city, None);
    }
}
