//! Ingest: person records from CSV, NDJSON, FHIR R4 and HL7 v2, each read as an iterator of
//! `Result<PersonRecord, RecordError>` so that one bad record is reported (with its line or entry and
//! the reason) and the rest of the batch goes on.
//!
//! Readers are streamed: CSV and NDJSON (canonical or FHIR bulk export) and HL7 v2 hold one record at a
//! time, never the file; only a single FHIR JSON document (a `Patient` or a `Bundle`) is read whole, up
//! to `DOCUMENT_BYTES_MAX`. An I/O error ends the stream after one error item. The caller opens files
//! and decides what to do with errors; this module neither opens files nor links records.

pub mod csv;
pub mod fhir;
pub mod hl7v2;
pub mod ndjson;

use std::io::{self, BufRead, Read};

use thiserror::Error;

use crate::mapping::{Mapping, MappingError};
use crate::schema::{PersonRecord, Position, Reason, RecordError};

/// Longest NDJSON line or HL7 segment, in bytes; longer ones are reported and skipped.
pub const LINE_BYTES_MAX: usize = 1 << 20;

/// Largest single FHIR JSON document (a `Bundle` read whole), in bytes.
pub const DOCUMENT_BYTES_MAX: usize = 256 << 20;

/// Most segments in one HL7 v2 message.
pub const SEGMENTS_PER_MESSAGE_MAX: usize = 1000;

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// CSV with a header row; needs a mapping.
    Csv,
    /// One JSON object per line; canonical field names unless a mapping is given.
    Ndjson,
    /// FHIR R4: one `Patient`, a `Bundle`, or bulk-export NDJSON (one resource per line).
    Fhir,
    /// HL7 v2 messages (ADT), PID segment.
    Hl7v2,
}

impl Format {
    /// Parses `csv`, `ndjson`, `fhir` or `hl7v2`.
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" => Some(Format::Ndjson),
            "fhir" => Some(Format::Fhir),
            "hl7v2" | "hl7" => Some(Format::Hl7v2),
            _ => None,
        }
    }
}

/// Why an input cannot be read at all (as opposed to one bad record in it).
#[derive(Debug, Error)]
pub enum IngestError {
    /// Reading failed before the first record.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    /// The mapping is unusable for this input.
    #[error("mapping: {0}")]
    Mapping(#[from] MappingError),
    /// CSV input needs a mapping (column names are arbitrary).
    #[error("CSV input needs a mapping")]
    MappingRequired,
    /// The CSV header row cannot be read.
    #[error("CSV header: {0}")]
    Header(String),
    /// A FHIR document is not JSON, or not a `Patient` or `Bundle`.
    #[error("FHIR document: {0}")]
    Document(String),
    /// A FHIR document is larger than `DOCUMENT_BYTES_MAX`.
    #[error("FHIR document is larger than {DOCUMENT_BYTES_MAX} bytes; use bulk-export NDJSON")]
    DocumentTooLarge,
}

/// A stream of records.
pub type Records<'a> = Box<dyn Iterator<Item = Result<PersonRecord, RecordError>> + 'a>;

/// Opens `reader` as `format`. `mapping` is required for CSV and optional for NDJSON; FHIR and HL7 v2
/// have fixed mappings configured by `fhir`.
pub fn records<'a, R: BufRead + 'a>(
    format: Format,
    reader: R,
    mapping: Option<&Mapping>,
    fhir: &fhir::FhirOptions,
) -> Result<Records<'a>, IngestError> {
    Ok(match format {
        Format::Csv => Box::new(csv::CsvRecords::new(
            reader,
            mapping.ok_or(IngestError::MappingRequired)?,
        )?),
        Format::Ndjson => Box::new(ndjson::NdjsonRecords::new(reader, mapping.cloned())?),
        Format::Fhir => fhir::records(reader, fhir.clone())?,
        Format::Hl7v2 => Box::new(hl7v2::Hl7Records::new(reader)),
    })
}

/// One line (or segment) from [`Lines`].
pub(crate) enum Line {
    /// The line's bytes, without its terminator.
    Text(Vec<u8>),
    /// The line was longer than the cap; its bytes were skipped.
    TooLong,
}

/// Splits a reader into lines at `\n` (NDJSON) or at `\r` and `\n` (HL7 v2), without ever holding more
/// than `LINE_BYTES_MAX` bytes of one line.
pub(crate) struct Lines<R> {
    reader: R,
    carriage_return_ends: bool,
    /// Lines returned so far (1-based number of the last one).
    pub(crate) number: u64,
    failed: bool,
}

impl<R: BufRead> Lines<R> {
    pub(crate) fn new(reader: R, carriage_return_ends: bool) -> Self {
        Lines {
            reader,
            carriage_return_ends,
            number: 0,
            failed: false,
        }
    }

    /// The next line, `None` at the end, an error once if reading fails (then `None`).
    pub(crate) fn next_line(&mut self) -> Option<io::Result<Line>> {
        if self.failed {
            return None;
        }
        let mut line = Vec::new();
        let mut too_long = false;
        let mut any = false;
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            };
            if buf.is_empty() {
                if !any {
                    return None;
                }
                break;
            }
            any = true;
            let end = buf
                .iter()
                .position(|&b| b == b'\n' || (self.carriage_return_ends && b == b'\r'));
            let take = end.unwrap_or(buf.len());
            if !too_long {
                if line.len() + take > LINE_BYTES_MAX {
                    too_long = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(&buf[..take]);
                }
            }
            match end {
                Some(i) => {
                    self.reader.consume(i + 1);
                    break;
                }
                None => {
                    let n = buf.len();
                    self.reader.consume(n);
                }
            }
        }
        self.number += 1;
        if too_long {
            return Some(Ok(Line::TooLong));
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(Ok(Line::Text(line)))
    }
}

/// Reads all of `reader` up to `max` bytes; `None` when there is more.
pub(crate) fn read_capped<R: Read>(reader: R, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    reader.take(max as u64 + 1).read_to_end(&mut buf)?;
    Ok((buf.len() <= max).then_some(buf))
}

/// The error item for a line over the cap.
pub(crate) fn too_long(position: Position) -> RecordError {
    RecordError::new(
        position,
        Reason::TooLong {
            bytes_max: LINE_BYTES_MAX,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], cr: bool) -> Vec<String> {
        let mut l = Lines::new(io::BufReader::with_capacity(4, input), cr);
        let mut out = Vec::new();
        while let Some(line) = l.next_line() {
            out.push(match line.unwrap() {
                Line::Text(t) => String::from_utf8(t).unwrap(),
                Line::TooLong => "<too long>".into(),
            });
        }
        out
    }

    #[test]
    fn line_splitting() {
        assert_eq!(lines(b"a\nbb\r\n\nccc", false), vec!["a", "bb", "", "ccc"]);
        assert_eq!(lines(b"MSH|1\rPID|2\r\nPV1\n", true), vec!["MSH|1", "PID|2", "", "PV1"]);
        let mut big = vec![b'x'; LINE_BYTES_MAX + 10];
        big.extend_from_slice(b"\nok");
        assert_eq!(lines(&big, false), vec!["<too long>", "ok"]);
        assert!(lines(b"", false).is_empty());
    }

    /// Hostile input: random bytes drawn from the delimiters of every format must never panic a reader,
    /// and whatever parses must normalise and compare.
    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let alphabet: &[&[u8]] = &[
            b"MSH|^~\\&|",
            b"PID|1||",
            b"ADT^A01",
            b"|",
            b"^",
            b"~",
            b"\\",
            b"&",
            b"\\X4",
            b"\r",
            b"\n",
            b"{",
            b"}",
            b"\"",
            b":",
            b",",
            b"[",
            b"]",
            b"\"resourceType\":\"Patient\"",
            b"\"id\":",
            b"1980",
            b"-",
            b"0",
            b"\xc3\xa9",
            b"\xff",
            b"\x0b",
            b"\x1c",
            b"source,source_id\n",
            b" ",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(99);
        let mapping = Mapping::canonical();
        let spec = crate::compare::ComparisonSpec::person_default();
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..rng.gen_range(0..40) {
                input.extend_from_slice(alphabet[rng.gen_range(0..alphabet.len())]);
            }
            let mut parsed = Vec::new();
            for format in [Format::Csv, Format::Ndjson, Format::Fhir, Format::Hl7v2] {
                let m = (format == Format::Csv).then_some(&mapping);
                if let Ok(records) = records(format, input.as_slice(), m, &fhir::FhirOptions::default()) {
                    parsed.extend(records.flatten());
                }
            }
            for r in &parsed {
                let n = crate::normalize::normalize(r);
                let _ = spec.compare(&n, &n);
                let _ = crate::blocking::BlockingSpec::person_default().keys(&n);
            }
            let text = String::from_utf8_lossy(&input);
            let _ = crate::phonetic::double_metaphone(&text);
            let _ = crate::date::Date::parse_any(&text);
            let _ = crate::date::Date::parse_with_format(&text, "%d/%b/%y");
        }
    }

    #[test]
    fn format_names() {
        assert_eq!(Format::parse("hl7v2"), Some(Format::Hl7v2));
        assert_eq!(Format::parse("fhir"), Some(Format::Fhir));
        assert_eq!(Format::parse("xml"), None);
    }
}
