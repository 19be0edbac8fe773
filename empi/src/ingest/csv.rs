//! CSV ingest: a header row, then one record per row, any column names (a mapping says which column is
//! which field), RFC 4180 quoting (the `csv` crate), streamed row by row.
//!
//! A row with the wrong number of cells or invalid UTF-8 is reported with its line and skipped. It does
//! not guess delimiters or encodings: input is comma-separated UTF-8.

use std::io::Read;

use crate::ingest::IngestError;
use crate::mapping::Mapping;
use crate::schema::{Field, PersonRecord, Position, Reason, RecordError};

/// Rows of a CSV input as records.
pub struct CsvRecords<R: Read> {
    reader: csv::Reader<R>,
    mapping: Mapping,
    columns: Vec<(Field, usize)>,
    row: csv::StringRecord,
    done: bool,
}

impl<R: Read> CsvRecords<R> {
    /// Reads the header and resolves the mapping's columns against it.
    pub fn new(reader: R, mapping: &Mapping) -> Result<Self, IngestError> {
        mapping.check()?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(reader);
        let header = reader
            .headers()
            .map_err(|e| IngestError::Header(e.to_string()))?
            .clone();
        let names: Vec<&str> = header.iter().collect();
        let columns = mapping.columns(&names)?;
        Ok(CsvRecords {
            reader,
            mapping: mapping.clone(),
            columns,
            row: csv::StringRecord::new(),
            done: false,
        })
    }
}

impl<R: Read> Iterator for CsvRecords<R> {
    type Item = Result<PersonRecord, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.reader.read_record(&mut self.row) {
            Ok(false) => {
                self.done = true;
                None
            }
            Ok(true) => {
                let line = self.row.position().map(|p| p.line()).unwrap_or(0);
                let cells: Vec<&str> = self.row.iter().collect();
                Some(self.mapping.from_row(&self.columns, &cells, Position::Line(line)))
            }
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                let reason = match e.kind() {
                    csv::ErrorKind::Io(io) => {
                        self.done = true;
                        Reason::Io(io.to_string())
                    }
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                        Reason::Syntax(format!("row has {len} cells, the header has {expected_len}"))
                    }
                    csv::ErrorKind::Utf8 { .. } => Reason::Syntax("row is not valid UTF-8".into()),
                    _ => Reason::Syntax(e.to_string()),
                };
                Some(Err(RecordError::new(Position::Line(line), reason)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPPING: &str = r#"
[fields]
source = "System"
source_id = "Patient ID"
given_name = "First"
family_name = "Last"
birth_date = { from = "Date of Birth", date_format = "%m/%d/%Y" }
address_line = "Street"
city = "City"
postcode = "ZIP"
phone = "Phone"
"#;

    const INPUT: &str = "System,Patient ID,First,Last,Date of Birth,Street,City,ZIP,Phone
HOSP_A,1001,Ann,Lee,03/04/1980,\"12 Main St, Apt 4\",Springfield,02139,555-123-4567
HOSP_A,1002,\"O'Brien, Jr\",\"Smith \"\"Jack\"\"\",12/31/1975,,Salem,,
HOSP_A,1003,Bob,Ray,31/12/1975,,,,
HOSP_A,1004,too,few
HOSP_A,,Cy,Zed,01/01/1990,,,,
HOSP_B,2001,Dee,Ng,07/08/1966,9 Elm Rd,Dover,19901-1234,(302) 555-0000
";

    #[test]
    fn rows_with_quotes_and_bad_rows_reported_in_place() {
        let mapping = Mapping::parse(MAPPING).unwrap();
        let out: Vec<_> = CsvRecords::new(INPUT.as_bytes(), &mapping).unwrap().collect();
        assert_eq!(out.len(), 6);
        let first = out[0].as_ref().unwrap();
        assert_eq!(first.address_line.as_deref(), Some("12 Main St, Apt 4"));
        assert_eq!(first.birth_date.as_deref(), Some("1980-03-04"));
        let second = out[1].as_ref().unwrap();
        assert_eq!(second.given_name.as_deref(), Some("O'Brien, Jr"));
        assert_eq!(second.family_name.as_deref(), Some("Smith \"Jack\""));
        assert_eq!(second.postcode, None);
        assert_eq!(
            out[2].as_ref().unwrap_err().to_string(),
            "line 4 (HOSP_A:1003): birth_date: unparseable date \"31/12/1975\""
        );
        assert_eq!(
            out[3].as_ref().unwrap_err().to_string(),
            "line 5: syntax: row has 4 cells, the header has 9"
        );
        assert_eq!(
            out[4].as_ref().unwrap_err().to_string(),
            "line 6: source_id: missing required field"
        );
        let last = out[5].as_ref().unwrap();
        assert_eq!((last.source.as_str(), last.source_id.as_str()), ("HOSP_B", "2001"));
    }

    #[test]
    fn header_without_a_mapped_column_is_refused() {
        let mapping = Mapping::parse(MAPPING).unwrap();
        let err = CsvRecords::new("System,Patient ID\nA,1\n".as_bytes(), &mapping)
            .err()
            .unwrap();
        assert!(err.to_string().contains("is not in the header"), "{err}");
    }
}
