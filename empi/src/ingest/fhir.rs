//! FHIR R4 `Patient` ingest: a single resource, a `Bundle` of entries, or bulk-export NDJSON (one
//! resource per line, streamed).
//!
//! Mapping: `id` → source id; source system from `meta.source`, else the system of the first
//! identifier (URLs lose their scheme and `:` becomes `_`, since a source name may not contain `:`);
//! the `official` name (else the first): first `given`, `family`; `birthDate` (a partial date such as
//! `1980` or `1980-03` is dropped, not refused); `gender`; the `home` address (else the first): lines,
//! `city`, `postalCode`, `state`; the first `phone` and `email` in `telecom`; the national id from an
//! `identifier` whose system is configured, or by default whose system or type mentions SSN, social
//! security or national id (type code `SS`/`NI`). Resources other than `Patient`, in a Bundle or in
//! bulk NDJSON, are reported (`unsupported: resourceType ...`) and skipped, like a bad record, so
//! an ingest's report accounts for every entry. It is not a FHIR validator and reads no other
//! resource type.

use std::io::{self, BufRead, Read};

use serde_json::Value;

use crate::ingest::ndjson::parse_object;
use crate::ingest::{read_capped, too_long, IngestError, Line, Lines, Records, DOCUMENT_BYTES_MAX};
use crate::mapping::json_type;
use crate::schema::{check, Field, FieldIssue, FieldProblem, PersonRecord, Position, Reason, RecordError, RecordExt};

/// FHIR mapping options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FhirOptions {
    /// A source name for every record, overriding `meta.source` and identifier systems.
    pub source: Option<String>,
    /// Identifier systems that carry the national id; empty means the default detection.
    pub national_id_systems: Vec<String>,
}

/// Reads a FHIR input: bulk-export NDJSON when the first line is a complete JSON resource other than
/// a `Bundle`, otherwise one JSON document (`Patient` or `Bundle`).
pub fn records<'a, R: BufRead + 'a>(mut reader: R, options: FhirOptions) -> Result<Records<'a>, IngestError> {
    let mut first = Vec::new();
    (&mut reader)
        .take(DOCUMENT_BYTES_MAX as u64 + 1)
        .read_until(b'\n', &mut first)?;
    let is_ndjson = serde_json::from_slice::<Value>(&first)
        .is_ok_and(|v| v.is_object() && v.get("resourceType").and_then(Value::as_str) != Some("Bundle"));
    let whole = io::Cursor::new(first).chain(reader);
    if is_ndjson {
        return Ok(Box::new(FhirNdjson {
            lines: Lines::new(whole, false),
            options,
        }));
    }
    let bytes = read_capped(whole, DOCUMENT_BYTES_MAX)?.ok_or(IngestError::DocumentTooLarge)?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| IngestError::Document(e.to_string()))?;
    Ok(Box::new(document(&doc, &options)?.into_iter()))
}

/// The records of one document: a `Patient` (entry 0) or each entry of a `Bundle`, where every
/// entry other than a `Patient` is an error saying what it is.
pub fn document(doc: &Value, options: &FhirOptions) -> Result<Vec<Result<PersonRecord, RecordError>>, IngestError> {
    match doc.get("resourceType").and_then(Value::as_str) {
        Some("Patient") => Ok(vec![patient(doc, options, Position::Entry(0))]),
        Some("Bundle") => {
            let entries = match doc.get("entry") {
                None => return Ok(Vec::new()),
                Some(Value::Array(e)) => e,
                Some(other) => return Err(IngestError::Document(format!("Bundle.entry is {}", json_type(other)))),
            };
            Ok(entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let position = Position::Entry(i as u64);
                    let resource = e.get("resource");
                    match resource.and_then(|r| r.get("resourceType")).and_then(Value::as_str) {
                        Some("Patient") => patient(resource.unwrap_or(e), options, position),
                        other => Err(RecordError::new(
                            position,
                            Reason::Unsupported(match (resource, other) {
                                (None, _) => "a Bundle entry without a resource".to_string(),
                                (Some(_), t) => format!("resourceType {}", t.unwrap_or("missing")),
                            }),
                        )),
                    }
                })
                .collect())
        }
        Some(other) => Err(IngestError::Document(format!(
            "resourceType {other} is neither Patient nor Bundle"
        ))),
        None => Err(IngestError::Document("no resourceType".into())),
    }
}

struct FhirNdjson<R> {
    lines: Lines<R>,
    options: FhirOptions,
}

impl<R: BufRead> Iterator for FhirNdjson<R> {
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
            return Some(parse_object(&bytes, position).and_then(
                |v| match v.get("resourceType").and_then(Value::as_str) {
                    Some("Patient") => patient(&v, &self.options, position),
                    other => Err(RecordError::new(
                        position,
                        Reason::Unsupported(format!("resourceType {}", other.unwrap_or("missing"))),
                    )),
                },
            ));
        }
    }
}

/// Drops a URL or URN scheme and makes the rest a valid source name.
pub fn source_name(system: &str) -> String {
    let mut s = system.trim();
    for prefix in ["https://", "http://", "urn:oid:", "urn:uuid:", "urn:"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            s = rest;
            break;
        }
    }
    s.trim_end_matches('/').replace(':', "_")
}

/// Collects typed look-ups and the problems they find.
struct Reader {
    issues: Vec<FieldIssue>,
}

impl Reader {
    /// `v[key]` as a string (numbers accepted for identifiers), recording a type problem for `field`.
    fn string(&mut self, v: &Value, key: &str, field: Field) -> Option<String> {
        match v.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) if field.accepts_number() => Some(n.to_string()),
            Value::Null => None,
            other => {
                self.wrong(field, "string", other);
                None
            }
        }
    }

    /// `v[key]` as an array (absent = empty), recording a type problem for `field`.
    fn array<'v>(&mut self, v: &'v Value, key: &str, field: Field) -> &'v [Value] {
        match v.get(key) {
            Some(Value::Array(a)) => a,
            None | Some(Value::Null) => &[],
            Some(other) => {
                self.wrong(field, "array", other);
                &[]
            }
        }
    }

    fn wrong(&mut self, field: Field, expected: &'static str, found: &Value) {
        self.issues.push(FieldIssue {
            field,
            problem: FieldProblem::WrongType {
                expected,
                found: json_type(found),
            },
        });
    }
}

/// Prefers the element whose `use` is `preferred`, else the first.
fn pick<'a>(items: &'a [Value], preferred: &str) -> Option<&'a Value> {
    items
        .iter()
        .find(|x| x.get("use").and_then(Value::as_str) == Some(preferred))
        .or_else(|| items.first())
}

fn mentions_national(text: &str) -> bool {
    let t = text.to_lowercase();
    t.contains("ssn") || t.contains("social") || t.contains("national") || t.contains("us-ssn")
}

fn is_national_id(identifier: &Value, options: &FhirOptions) -> bool {
    let system = identifier.get("system").and_then(Value::as_str).unwrap_or("");
    if !options.national_id_systems.is_empty() {
        return options.national_id_systems.iter().any(|s| s == system);
    }
    let ty = identifier.get("type");
    let codes = ty
        .and_then(|t| t.get("coding"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let coded = codes
        .iter()
        .any(|c| matches!(c.get("code").and_then(Value::as_str), Some("SS" | "NI" | "SB")));
    let text = ty.and_then(|t| t.get("text")).and_then(Value::as_str).unwrap_or("");
    coded || mentions_national(system) || mentions_national(text)
}

/// Maps one `Patient` resource.
pub fn patient(v: &Value, options: &FhirOptions, position: Position) -> Result<PersonRecord, RecordError> {
    let mut rd = Reader { issues: Vec::new() };
    let mut r = PersonRecord {
        source_id: rd.string(v, "id", Field::SourceId).unwrap_or_default(),
        ..PersonRecord::default()
    };
    let identifiers = rd.array(v, "identifier", Field::NationalId);
    let first_system = identifiers
        .first()
        .and_then(|i| i.get("system"))
        .and_then(Value::as_str);
    let meta_source = v.get("meta").and_then(|m| m.get("source")).and_then(Value::as_str);
    r.source = match (&options.source, meta_source, first_system) {
        (Some(s), _, _) => s.clone(),
        (None, Some(m), _) => source_name(m),
        (None, None, Some(s)) => source_name(s),
        (None, None, None) => String::new(),
    };
    let names = rd.array(v, "name", Field::GivenName);
    if let Some(name) = pick(names, "official") {
        r.family_name = rd.string(name, "family", Field::FamilyName);
        r.given_name = match name.get("given") {
            Some(Value::Array(g)) => g.first().and_then(Value::as_str).map(str::to_string),
            Some(Value::String(s)) => Some(s.clone()),
            None | Some(Value::Null) => None,
            Some(other) => {
                rd.wrong(Field::GivenName, "array", other);
                None
            }
        };
    }
    if let Some(d) = rd.string(v, "birthDate", Field::BirthDate) {
        // FHIR allows YYYY and YYYY-MM; the schema keeps only full dates.
        if d.len() > 7 {
            r.birth_date = Some(d);
        }
    }
    r.sex = rd.string(v, "gender", Field::Sex);
    let addresses = rd.array(v, "address", Field::AddressLine);
    if let Some(a) = pick(addresses, "home") {
        let lines = rd.array(a, "line", Field::AddressLine);
        r.address_line = lines.first().and_then(Value::as_str).map(str::to_string);
        r.address_line2 = lines.get(1).and_then(Value::as_str).map(str::to_string);
        r.city = rd.string(a, "city", Field::City);
        r.postcode = rd.string(a, "postalCode", Field::Postcode);
        r.state = rd.string(a, "state", Field::State);
    }
    for t in rd.array(v, "telecom", Field::Phone) {
        match t.get("system").and_then(Value::as_str) {
            Some("phone") if r.phone.is_none() => r.phone = rd.string(t, "value", Field::Phone),
            Some("email") if r.email.is_none() => r.email = rd.string(t, "value", Field::Email),
            _ => {}
        }
    }
    if let Some(id) = identifiers.iter().find(|i| is_national_id(i, options)) {
        r.national_id = rd.string(id, "value", Field::NationalId);
    }
    for f in Field::ALL {
        if let Some(value) = r.get(f).map(str::to_string) {
            r.set(f, value.trim().to_string());
        }
    }
    if !rd.issues.is_empty() {
        return Err(RecordError {
            position,
            key: r.key().ok().map(|k| k.to_string()),
            reason: Reason::Fields(rd.issues),
        });
    }
    check(r, position)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENT: &str = r#"{
  "resourceType": "Patient",
  "id": "pat-1",
  "meta": {"source": "http://hospital.example.org/fhir"},
  "identifier": [
    {"system": "http://hospital.example.org/mrn", "value": "MRN-1"},
    {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "078-05-1120"}
  ],
  "name": [
    {"use": "nickname", "given": ["Peggy"]},
    {"use": "official", "family": "Smith", "given": ["Margaret", "Ann"]}
  ],
  "gender": "female",
  "birthDate": "1980-03-04",
  "address": [
    {"use": "work", "line": ["1 Office Park"], "city": "Dover"},
    {"use": "home", "line": ["12 Main St", "Apt 4"], "city": "Springfield", "state": "IL", "postalCode": "62701"}
  ],
  "telecom": [
    {"system": "email", "value": "peggy@example.org"},
    {"system": "phone", "use": "home", "value": "(217) 555-0100"}
  ]
}"#;

    #[test]
    fn single_patient() {
        let out: Vec<_> = records(PATIENT.as_bytes(), FhirOptions::default()).unwrap().collect();
        let r = out[0].as_ref().unwrap();
        assert_eq!(r.source, "hospital.example.org/fhir");
        assert_eq!(r.source_id, "pat-1");
        assert_eq!(
            (r.given_name.as_deref(), r.family_name.as_deref()),
            (Some("Margaret"), Some("Smith"))
        );
        assert_eq!(r.birth_date.as_deref(), Some("1980-03-04"));
        assert_eq!(r.sex.as_deref(), Some("female"));
        assert_eq!(r.address_line.as_deref(), Some("12 Main St"));
        assert_eq!(r.address_line2.as_deref(), Some("Apt 4"));
        assert_eq!(
            (r.city.as_deref(), r.state.as_deref(), r.postcode.as_deref()),
            (Some("Springfield"), Some("IL"), Some("62701"))
        );
        assert_eq!(r.phone.as_deref(), Some("(217) 555-0100"));
        assert_eq!(r.email.as_deref(), Some("peggy@example.org"));
        assert_eq!(r.national_id.as_deref(), Some("078-05-1120"));
        assert_eq!(r.key().unwrap().to_string(), "hospital.example.org/fhir:pat-1");
    }

    #[test]
    fn bundle_reports_other_resources_and_bad_patients() {
        let bundle = r#"{"resourceType":"Bundle","type":"collection","entry":[
          {"resource":{"resourceType":"Patient","id":"a","identifier":[{"system":"urn:oid:1.2.3","value":"9"}],"name":[{"family":"Lee","given":["Ann"]}],"birthDate":"1975"}},
          {"resource":{"resourceType":"Observation","id":"o1"}},
          {"resource":{"resourceType":"Patient","id":"b","meta":{"source":"lab"},"birthDate":"1975-02-30"}},
          {"resource":{"resourceType":"Patient","id":"c","meta":{"source":"lab"},"name":{"family":"x"}}},
          {"fullUrl":"urn:uuid:nothing"}
        ]}"#;
        let out: Vec<_> = records(bundle.as_bytes(), FhirOptions::default()).unwrap().collect();
        assert_eq!(out.len(), 5, "every entry is accounted for");
        let a = out[0].as_ref().unwrap();
        assert_eq!(a.source, "1.2.3");
        assert_eq!(a.birth_date, None, "partial dates are dropped");
        assert_eq!(a.national_id, None);
        assert_eq!(
            out[1].as_ref().unwrap_err().to_string(),
            "entry 1: unsupported: resourceType Observation"
        );
        assert_eq!(
            out[2].as_ref().unwrap_err().to_string(),
            "entry 2 (lab:b): birth_date: unparseable date \"1975-02-30\""
        );
        assert_eq!(
            out[3].as_ref().unwrap_err().to_string(),
            "entry 3 (lab:c): given_name: wrong type: expected array, found object"
        );
        assert_eq!(
            out[4].as_ref().unwrap_err().to_string(),
            "entry 4: unsupported: a Bundle entry without a resource"
        );
    }

    #[test]
    fn bulk_ndjson_with_options() {
        let input = concat!(
            r#"{"resourceType":"Patient","id":"1","identifier":[{"system":"urn:ssn","value":"078051120"}],"gender":"male"}"#,
            "\n",
            r#"{"resourceType":"Encounter","id":"e"}"#,
            "\n\n",
            r#"{"resourceType":"Patient","id":"2","identifier":[{"type":{"coding":[{"code":"SS"}]},"value":"219-09-9999"}]}"#,
            "\n",
            r#"{"resourceType":"Patient"}"#,
            "\n"
        );
        let options = FhirOptions {
            source: Some("EXPORT".into()),
            national_id_systems: vec![],
        };
        let out: Vec<_> = records(input.as_bytes(), options).unwrap().collect();
        assert_eq!(out.len(), 4);
        assert_eq!(out[0].as_ref().unwrap().national_id.as_deref(), Some("078051120"));
        assert_eq!(
            out[1].as_ref().unwrap_err().to_string(),
            "line 2: unsupported: resourceType Encounter"
        );
        assert_eq!(out[2].as_ref().unwrap().national_id.as_deref(), Some("219-09-9999"));
        assert_eq!(
            out[3].as_ref().unwrap_err().to_string(),
            "line 5: source_id: missing required field"
        );
        let configured = FhirOptions {
            source: Some("EXPORT".into()),
            national_id_systems: vec!["urn:other".into()],
        };
        let out: Vec<_> = records(input.as_bytes(), configured).unwrap().collect();
        assert_eq!(
            out[0].as_ref().unwrap().national_id,
            None,
            "only configured systems count"
        );
    }

    #[test]
    fn documents_that_are_not_patients_are_refused() {
        let err = records(
            "{\n \"resourceType\": \"Observation\"\n}".as_bytes(),
            FhirOptions::default(),
        )
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "FHIR document: resourceType Observation is neither Patient nor Bundle"
        );
        // On one line it reads as bulk NDJSON, where the same resource is one unsupported record.
        let out: Vec<_> = records(r#"{"resourceType":"Observation"}"#.as_bytes(), FhirOptions::default())
            .unwrap()
            .collect();
        assert_eq!(
            out[0].as_ref().unwrap_err().to_string(),
            "line 1: unsupported: resourceType Observation"
        );
        assert!(records("not json".as_bytes(), FhirOptions::default()).is_err());
        assert_eq!(source_name("https://example.org/a:b/"), "example.org/a_b");
    }
}
