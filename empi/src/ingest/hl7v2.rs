//! HL7 v2 ingest: ADT messages, one record per message from its PID segment, streamed segment by
//! segment. Segments end at `\r`, `\n` or `\r\n`; a message starts at each `MSH` segment (MLLP framing
//! bytes are stripped); the field separator and encoding characters come from MSH-1 and MSH-2, and
//! escape sequences (`\F\`, `\S\`, `\T\`, `\R\`, `\E\`, `\X..\`) are decoded.
//!
//! Mapping: MSH-4 sending facility → source; PID-3 identifier with type `MR` (else the first) → source
//! id; PID-5 legal name (`L`, else the first): family and given; PID-7 date of birth (a date with only
//! a year or month is dropped); PID-8 sex; PID-11 home address (`H`, else the first); PID-13 phone and
//! e-mail (`NET`/`Internet`); PID-19 SSN, else a PID-3 identifier of type `SS` → national id. Messages
//! other than ADT are reported as unsupported. It is not an HL7 parser for anything beyond these fields.

use std::io::BufRead;

use crate::ingest::fhir::source_name;
use crate::ingest::{Line, Lines, SEGMENTS_PER_MESSAGE_MAX};
use crate::schema::{check, PersonRecord, Position, Reason, RecordError};

/// Messages of an HL7 v2 stream as records.
pub struct Hl7Records<R> {
    lines: Lines<R>,
    pending: Option<String>,
    messages: u64,
    done: bool,
}

impl<R: BufRead> Hl7Records<R> {
    /// Reads messages from `reader`.
    pub fn new(reader: R) -> Self {
        Hl7Records {
            lines: Lines::new(reader, true),
            pending: None,
            messages: 0,
            done: false,
        }
    }

    /// The next non-blank segment, with MLLP framing removed; `Err` for an I/O error or an over-long
    /// segment.
    fn segment(&mut self) -> Option<Result<String, Reason>> {
        loop {
            let text = match self.lines.next_line()? {
                Err(e) => {
                    self.done = true;
                    return Some(Err(Reason::Io(e.to_string())));
                }
                Ok(Line::TooLong) => {
                    return Some(Err(Reason::TooLong {
                        bytes_max: crate::ingest::LINE_BYTES_MAX,
                    }))
                }
                Ok(Line::Text(t)) => t,
            };
            let trimmed: Vec<u8> = text.into_iter().filter(|&b| b != 0x0b && b != 0x1c).collect();
            let s = String::from_utf8_lossy(&trimmed).trim().to_string();
            if !s.is_empty() {
                return Some(Ok(s));
            }
        }
    }
}

impl<R: BufRead> Iterator for Hl7Records<R> {
    type Item = Result<PersonRecord, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let position = Position::Entry(self.messages);
        let mut segments: Vec<String> = Vec::new();
        let mut problem: Option<Reason> = None;
        if let Some(msh) = self.pending.take() {
            segments.push(msh);
        }
        loop {
            match self.segment() {
                None => {
                    self.done = true;
                    break;
                }
                Some(Err(reason)) => {
                    problem.get_or_insert(reason);
                    if self.done {
                        break;
                    }
                }
                Some(Ok(seg)) => {
                    if seg.starts_with("MSH") && !segments.is_empty() {
                        self.pending = Some(seg);
                        break;
                    }
                    if segments.len() < SEGMENTS_PER_MESSAGE_MAX {
                        segments.push(seg);
                    } else {
                        problem.get_or_insert(Reason::Syntax(format!(
                            "more than {SEGMENTS_PER_MESSAGE_MAX} segments in one message"
                        )));
                    }
                }
            }
        }
        if segments.is_empty() && problem.is_none() {
            return None;
        }
        self.messages += 1;
        Some(match problem {
            Some(reason) => Err(RecordError::new(position, reason)),
            None => parse_message(&segments, position),
        })
    }
}

/// The delimiters of one message.
#[derive(Debug, Clone, Copy)]
struct Encoding {
    field: char,
    component: char,
    repetition: char,
    escape: char,
    subcomponent: char,
}

impl Encoding {
    fn from_msh(msh: &str) -> Option<Encoding> {
        let mut chars = msh.chars().skip(3);
        let field = chars.next()?;
        let enc: Vec<char> = chars.take_while(|&c| c != field).collect();
        let get = |i: usize, default: char| enc.get(i).copied().unwrap_or(default);
        Some(Encoding {
            field,
            component: get(0, '^'),
            repetition: get(1, '~'),
            escape: get(2, '\\'),
            subcomponent: get(3, '&'),
        })
    }

    /// Component `n` (1-based) of a field, its first subcomponent, unescaped.
    fn component(&self, field: &str, n: usize) -> String {
        let c = field.split(self.component).nth(n - 1).unwrap_or("");
        self.unescape(c.split(self.subcomponent).next().unwrap_or(""))
    }

    /// Decodes HL7 escape sequences; unknown ones are dropped.
    fn unescape(&self, s: &str) -> String {
        if !s.contains(self.escape) {
            return s.to_string();
        }
        let mut out = String::with_capacity(s.len());
        let mut parts = s.split(self.escape);
        if let Some(first) = parts.next() {
            out.push_str(first);
        }
        // Between escape characters alternate: sequence, text, sequence, text...
        let mut in_seq = true;
        for part in parts {
            if in_seq {
                match part {
                    "F" => out.push(self.field),
                    "S" => out.push(self.component),
                    "T" => out.push(self.subcomponent),
                    "R" => out.push(self.repetition),
                    "E" => out.push(self.escape),
                    ".br" => out.push(' '),
                    hex if hex.starts_with('X') => {
                        // Bytes, not string slices: a hostile sequence may hold multi-byte characters.
                        for pair in hex.as_bytes()[1..].chunks_exact(2) {
                            let b = std::str::from_utf8(pair)
                                .ok()
                                .and_then(|h| u8::from_str_radix(h, 16).ok());
                            if let Some(b) = b.filter(|b| b.is_ascii() && !b.is_ascii_control()) {
                                out.push(char::from(b));
                            }
                        }
                    }
                    _ => {}
                }
            } else {
                out.push_str(part);
            }
            in_seq = !in_seq;
        }
        out
    }
}

/// Turns a PID-7 timestamp into `YYYY-MM-DD`; `None` for a year or month alone. Anything else is
/// passed through so that validation reports it.
fn birth_date(ts: &str) -> Option<String> {
    let digits: String = ts.chars().take_while(char::is_ascii_digit).collect();
    match digits.len() {
        0 if ts.is_empty() => None,
        4 | 6 if digits.len() == ts.len() => None,
        n if n >= 8 => Some(format!("{}-{}-{}", &digits[0..4], &digits[4..6], &digits[6..8])),
        _ => Some(ts.to_string()),
    }
}

/// Maps one message.
fn parse_message(segments: &[String], position: Position) -> Result<PersonRecord, RecordError> {
    let syntax = |m: &str| RecordError::new(position, Reason::Syntax(m.to_string()));
    let msh = segments
        .first()
        .filter(|s| s.starts_with("MSH"))
        .ok_or_else(|| syntax("segments before the first MSH"))?;
    let enc = Encoding::from_msh(msh).ok_or_else(|| syntax("MSH segment too short"))?;
    let msh_fields: Vec<&str> = msh.split(enc.field).collect();
    // MSH-1 is the separator itself, so MSH-n is at index n - 1.
    let msh_field = |n: usize| msh_fields.get(n - 1).copied().unwrap_or("");
    let kind = enc.component(msh_field(9), 1);
    if kind != "ADT" {
        return Err(RecordError::new(
            position,
            Reason::Unsupported(format!(
                "message type {}",
                if kind.is_empty() { "missing" } else { &kind }
            )),
        ));
    }
    let pid = segments
        .iter()
        .find(|s| s.starts_with("PID"))
        .ok_or_else(|| syntax("message has no PID segment"))?;
    let pid_fields: Vec<&str> = pid.split(enc.field).collect();
    let field = |n: usize| pid_fields.get(n).copied().unwrap_or("");
    let reps = |n: usize| {
        field(n)
            .split(enc.repetition)
            .filter(|r| !r.is_empty())
            .collect::<Vec<&str>>()
    };
    let prefer = |items: &[&str], comp: usize, code: &str| -> Option<String> {
        items
            .iter()
            .find(|r| enc.component(r, comp) == code)
            .or(items.first())
            .map(|r| r.to_string())
    };
    let opt = |s: String| (!s.trim().is_empty()).then(|| s.trim().to_string());

    let mut r = PersonRecord::default();
    let facility = msh_field(4);
    let namespace = enc.component(facility, 1);
    r.source = source_name(&if namespace.is_empty() {
        enc.component(facility, 2)
    } else {
        namespace
    });
    let ids = reps(3);
    if let Some(mr) = prefer(&ids, 5, "MR") {
        r.source_id = enc.component(&mr, 1).trim().to_string();
    }
    if let Some(name) = prefer(&reps(5), 7, "L") {
        r.family_name = opt(enc.component(&name, 1));
        r.given_name = opt(enc.component(&name, 2));
    }
    r.birth_date = birth_date(enc.component(field(7), 1).trim());
    r.sex = opt(enc.component(field(8), 1));
    if let Some(addr) = prefer(&reps(11), 7, "H") {
        r.address_line = opt(enc.component(&addr, 1));
        r.address_line2 = opt(enc.component(&addr, 2));
        r.city = opt(enc.component(&addr, 3));
        r.state = opt(enc.component(&addr, 4));
        r.postcode = opt(enc.component(&addr, 5));
    }
    for t in reps(13) {
        let email = enc.component(t, 2) == "NET" || enc.component(t, 3) == "Internet";
        if email && r.email.is_none() {
            r.email = opt(enc.component(t, 4)).or_else(|| opt(enc.component(t, 1)));
        } else if !email && r.phone.is_none() {
            let number = enc.component(t, 1);
            r.phone = opt(number).or_else(|| opt(format!("{}{}", enc.component(t, 6), enc.component(t, 7))));
        }
    }
    r.national_id = opt(enc.component(field(19), 1)).or_else(|| {
        ids.iter()
            .find(|i| enc.component(i, 5) == "SS")
            .and_then(|i| opt(enc.component(i, 1)))
    });
    check(r, position)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &str) -> Vec<Result<PersonRecord, RecordError>> {
        Hl7Records::new(input.as_bytes()).collect()
    }

    const ADT: &str = "MSH|^~\\&|REG|NORTH^1.2.840.1^ISO|EMPI|HUB|20240101120000||ADT^A04|MSG001|P|2.5\r\
EVN|A04|20240101120000\r\
PID|1||12345^^^NORTH^MR~078-05-1120^^^SSA^SS||O\\T\\Brien&O&Brien^Margaret^Ann^^^^L~Peggy^^^^^^N||19800304|F|||12 Main St^Apt 4^Springfield^IL^62701^USA^H||^PRN^PH^^1^217^5550100~^NET^Internet^peggy@example.org|||||||\r\
PV1|1|O\r";

    #[test]
    fn adt_message_maps_pid_fields() {
        let out = read(ADT);
        assert_eq!(out.len(), 1);
        let r = out[0].as_ref().unwrap();
        assert_eq!(r.source, "NORTH");
        assert_eq!(r.source_id, "12345");
        assert_eq!(r.family_name.as_deref(), Some("O&Brien"));
        assert_eq!(r.given_name.as_deref(), Some("Margaret"));
        assert_eq!(r.birth_date.as_deref(), Some("1980-03-04"));
        assert_eq!(r.sex.as_deref(), Some("F"));
        assert_eq!(r.address_line.as_deref(), Some("12 Main St"));
        assert_eq!(r.address_line2.as_deref(), Some("Apt 4"));
        assert_eq!(
            (r.city.as_deref(), r.state.as_deref(), r.postcode.as_deref()),
            (Some("Springfield"), Some("IL"), Some("62701"))
        );
        assert_eq!(r.phone.as_deref(), Some("2175550100"));
        assert_eq!(r.email.as_deref(), Some("peggy@example.org"));
        assert_eq!(r.national_id.as_deref(), Some("078-05-1120"));
    }

    #[test]
    fn a_stream_of_messages_with_bad_ones_reported() {
        let input = format!(
            "{ADT}\n\
             \x0bMSH|^~\\&|LAB|SOUTH|||20240102||ADT^A08|M2|P|2.3\n\
             PID|1||999^^^SOUTH^MR||Lee^Ann||19800230|F|||||||||||123-45-6789\n\x1c\r\n\
             MSH|^~\\&|LAB|SOUTH|||20240102||ORU^R01|M3|P|2.3\n\
             PID|1||1000^^^SOUTH^MR||Kay^Bo\n\
             MSH#$@!%#APP#WEST###20240103##ADT$A01#M4#P#2.5\n\
             PID#1##77$$$WEST$MR##Ng$Dee##1966#M###9 Elm Rd$$Dover$DE$19901##(302) 555-0000\n\
             MSH|^~\\&|X|EAST|||2024||ADT^A01|M5|P|2.5\n\
             EVN|A01\n"
        );
        let out = read(&input);
        assert_eq!(out.len(), 5);
        assert!(out[0].is_ok());
        assert_eq!(
            out[1].as_ref().unwrap_err().to_string(),
            "entry 1 (SOUTH:999): birth_date: unparseable date \"1980-02-30\""
        );
        assert_eq!(
            out[2].as_ref().unwrap_err().to_string(),
            "entry 2: unsupported: message type ORU"
        );
        let west = out[3].as_ref().unwrap();
        assert_eq!((west.source.as_str(), west.source_id.as_str()), ("WEST", "77"));
        assert_eq!(west.family_name.as_deref(), Some("Ng"));
        assert_eq!(west.birth_date, None, "a year alone is dropped");
        assert_eq!(west.city.as_deref(), Some("Dover"));
        assert_eq!(west.phone.as_deref(), Some("(302) 555-0000"));
        assert_eq!(
            out[4].as_ref().unwrap_err().to_string(),
            "entry 4: syntax: message has no PID segment"
        );
    }

    #[test]
    fn escapes_and_stray_segments() {
        let enc = Encoding::from_msh("MSH|^~\\&|").unwrap();
        assert_eq!(enc.unescape("A\\F\\B\\S\\C\\E\\D\\X41\\\\.br\\E"), "A|B^C\\DA E");
        assert_eq!(
            enc.unescape("\\X1é\\\\Xé1\\ok"),
            "ok",
            "malformed hex is dropped, never a panic"
        );
        let out = read("PID|1||5^^^X^MR\rMSH|^~\\&||F|||||ADT^A01\rPID|1||6^^^F^MR\r");
        assert_eq!(
            out[0].as_ref().unwrap_err().to_string(),
            "entry 0: syntax: segments before the first MSH"
        );
        assert_eq!(out[1].as_ref().unwrap().source_id, "6");
        assert!(read("").is_empty());
    }
}
