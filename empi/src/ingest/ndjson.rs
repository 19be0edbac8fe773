//! NDJSON ingest: one JSON object per line, canonical field names (no mapping needed) or any names and
//! nested paths through a mapping. Streamed line by line; blank lines are skipped.
//!
//! A line that is not a JSON object, has a field of the wrong type, or fails validation is reported
//! with its line number. It does not handle JSON arrays of records (that is not NDJSON).

use std::io::BufRead;

use serde_json::Value;

use crate::ingest::{too_long, IngestError, Line, Lines};
use crate::mapping::{json_type, Mapping};
use crate::schema::{PersonRecord, Position, Reason, RecordError};

/// Lines of an NDJSON input as records.
pub struct NdjsonRecords<R> {
    lines: Lines<R>,
    mapping: Mapping,
}

impl<R: BufRead> NdjsonRecords<R> {
    /// Reads `reader` with `mapping`, or the canonical names when `None`.
    pub fn new(reader: R, mapping: Option<Mapping>) -> Result<Self, IngestError> {
        let mapping = match mapping {
            Some(m) => {
                m.check()?;
                m
            }
            None => Mapping::canonical(),
        };
        Ok(NdjsonRecords {
            lines: Lines::new(reader, false),
            mapping,
        })
    }
}

/// Parses one line as a JSON object.
pub(crate) fn parse_object(bytes: &[u8], position: Position) -> Result<Value, RecordError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| RecordError::new(position, Reason::Syntax(e.to_string())))?;
    if !value.is_object() {
        return Err(RecordError::new(
            position,
            Reason::Syntax(format!("expected a JSON object, found {}", json_type(&value))),
        ));
    }
    Ok(value)
}

impl<R: BufRead> Iterator for NdjsonRecords<R> {
    type Item = Result<PersonRecord, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let line = self.lines.next_line()?;
            let position = Position::Line(self.lines.number);
            let bytes = match line {
                Err(e) => return Some(Err(RecordError::new(position, Reason::Io(e.to_string())))),
                Ok(Line::TooLong) => return Some(Err(too_long(position))),
                Ok(Line::Text(t)) => t,
            };
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(parse_object(&bytes, position).and_then(|v| self.mapping.from_json(&v, position)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = r#"{"source":"HOSP_A","source_id":"1","given_name":"Ann","family_name":"Lee","birth_date":"1980-03-04","phone":"555-123-4567"}

{"source":"HOSP_A","source_id":"2","birth_date":"1980-02-30"}
{"source":"HOSP_A","source_id":"3","given_name":["Bob"]}
not json
[1,2]
{"source":"HOSP_A","given_name":"Nobody"}
{"source":"HOSP_B","source_id":77,"national_id":"078-05-1120","postcode":2139}
"#;

    #[test]
    fn canonical_lines_and_bad_lines() {
        let out: Vec<_> = NdjsonRecords::new(INPUT.as_bytes(), None).unwrap().collect();
        assert_eq!(out.len(), 7);
        assert_eq!(out[0].as_ref().unwrap().given_name.as_deref(), Some("Ann"));
        let errors: Vec<String> = out
            .iter()
            .filter_map(|r| r.as_ref().err())
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 5);
        assert_eq!(
            errors[0],
            "line 3 (HOSP_A:2): birth_date: unparseable date \"1980-02-30\""
        );
        assert_eq!(
            errors[1],
            "line 4 (HOSP_A:3): given_name: wrong type: expected string, found array"
        );
        assert!(errors[2].starts_with("line 5: syntax: expected ident"), "{}", errors[2]);
        assert_eq!(errors[3], "line 6: syntax: expected a JSON object, found array");
        assert_eq!(errors[4], "line 7: source_id: missing required field");
        let last = out[6].as_ref().unwrap();
        assert_eq!(last.source_id, "77");
        assert_eq!(last.postcode.as_deref(), Some("2139"));
    }

    #[test]
    fn mapped_nested_paths() {
        let mapping = Mapping::parse(
            r#"source = "APP"
[fields]
source_id = "id"
given_name = "person.names[0].first"
family_name = "person.names[0].last"
birth_date = { from = "person.dob", date_format = "%d.%m.%Y" }"#,
        )
        .unwrap();
        let input = r#"{"id":"a1","person":{"names":[{"first":"Jo","last":"Ray"}],"dob":"04.03.1980"}}"#;
        let out: Vec<_> = NdjsonRecords::new(input.as_bytes(), Some(mapping)).unwrap().collect();
        let r = out[0].as_ref().unwrap();
        assert_eq!(
            (r.source.as_str(), r.given_name.as_deref(), r.birth_date.as_deref()),
            ("APP", Some("Jo"), Some("1980-03-04"))
        );
    }
}
