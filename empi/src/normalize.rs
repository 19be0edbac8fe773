//! Normalisation: from a [`PersonRecord`] as a source wrote it to a [`NormalizedRecord`] whose fields
//! compare cheaply (folded names, phonetic codes, nickname ids, a parsed date, digit-only phone, address
//! tokens with TF-IDF weights).
//!
//! Folding is Unicode NFKD with combining marks removed, upper case, punctuation to spaces (apostrophes
//! dropped: O'Brien is OBRIEN), whitespace collapsed. Everything is computed once per record so the
//! comparison of a pair, which runs millions of times, touches only precomputed bytes. This module does
//! not decide what matches; it only puts values in comparable form.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

pub use crate::date::Date;
use crate::nicknames::{self, NickIds, NICK_IDS_MAX};
use crate::phonetic::double_metaphone_packed;
use crate::schema::{PersonRecord, FIELD_BYTES_MAX};
use crate::util::fnv64;

/// Longest normalised text field kept, in bytes; longer folded values are cut at a character boundary.
pub const NORMALIZED_FIELD_BYTES_MAX: usize = 256;

/// Most address tokens kept per record (the TF-IDF vector length).
pub const ADDRESS_TOKENS_MAX: usize = 16;

/// Fewest digits a phone number must keep to count as present.
pub const PHONE_DIGITS_MIN: usize = 7;

/// Digits kept of a phone number: the subscriber number without country code in the NANP.
pub const PHONE_DIGITS_KEPT: usize = 10;

/// Administrative sex, folded to four values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Sex {
    /// Absent or unknown (`U`, `unknown`, `N`).
    #[default]
    Unknown,
    /// `M`, `male`.
    Male,
    /// `F`, `female`.
    Female,
    /// `O`, `other`, `X`, `A` (HL7 ambiguous).
    Other,
}

/// One address token: a 32-bit hash of the standardised word and its weight in the record's unit vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Token {
    /// Hash of the token text.
    pub hash: u32,
    /// Weight (TF-IDF once [`NormalizedRecord::apply_idf`] ran, uniform before), L2-normalised per record.
    pub weight: f32,
}

/// The text fields kept in a record's single string buffer, in buffer order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// Folded given name.
    Given = 0,
    /// Folded family name.
    Family,
    /// Standardised address: number, street, second line.
    Address,
    /// Folded city.
    City,
    /// Postcode, upper case without spaces (ZIP+4 cut to 5).
    Postcode,
    /// Folded state.
    State,
    /// Phone digits.
    Phone,
    /// Lower-case e-mail.
    Email,
    /// National id, upper-case alphanumerics.
    NationalId,
}

const TEXT_FIELDS: usize = 9;

/// A record in comparable form. Text fields live in one buffer (one allocation per record); an empty
/// field means missing.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizedRecord {
    text: Box<str>,
    ends: [u16; TEXT_FIELDS],
    /// Double Metaphone (primary, alternate) of the given name, packed; 0 when absent.
    pub given_dm: [u32; 2],
    /// Double Metaphone (primary, alternate) of the family name, packed; 0 when absent.
    pub family_dm: [u32; 2],
    /// Formal-name ids of the given name in the nickname table.
    pub given_nicks: NickIds,
    /// Parsed date of birth.
    pub birth: Option<Date>,
    /// Folded sex.
    pub sex: Sex,
    /// Address tokens sorted by hash.
    pub address_tokens: Box<[Token]>,
}

impl NormalizedRecord {
    /// One text field ("" when missing).
    pub fn text(&self, field: Text) -> &str {
        let i = field as usize;
        let start = if i == 0 { 0 } else { usize::from(self.ends[i - 1]) };
        self.text.get(start..usize::from(self.ends[i])).unwrap_or("")
    }

    /// Folded given name.
    pub fn given(&self) -> &str {
        self.text(Text::Given)
    }

    /// Folded family name.
    pub fn family(&self) -> &str {
        self.text(Text::Family)
    }

    /// Standardised address line(s).
    pub fn address(&self) -> &str {
        self.text(Text::Address)
    }

    /// Folded city.
    pub fn city(&self) -> &str {
        self.text(Text::City)
    }

    /// Normalised postcode.
    pub fn postcode(&self) -> &str {
        self.text(Text::Postcode)
    }

    /// Folded state.
    pub fn state(&self) -> &str {
        self.text(Text::State)
    }

    /// Phone digits.
    pub fn phone(&self) -> &str {
        self.text(Text::Phone)
    }

    /// Lower-case e-mail.
    pub fn email(&self) -> &str {
        self.text(Text::Email)
    }

    /// Normalised national id.
    pub fn national_id(&self) -> &str {
        self.text(Text::NationalId)
    }

    /// Replaces the uniform token weights with `idf(token)` weights, L2-normalised, so that common words
    /// (STREET, MAIN) count less than rare ones in the address cosine.
    pub fn apply_idf(&mut self, idf: impl Fn(u32) -> f32) {
        let mut norm = 0.0f32;
        for t in self.address_tokens.iter_mut() {
            t.weight = idf(t.hash).max(0.0);
            norm += t.weight * t.weight;
        }
        let norm = norm.sqrt();
        for t in self.address_tokens.iter_mut() {
            t.weight = if norm > 0.0 { t.weight / norm } else { 0.0 };
        }
    }

    /// Bytes this record holds on the heap and inline, for memory accounting.
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.text.len() + self.address_tokens.len() * std::mem::size_of::<Token>()
    }
}

/// Normalises one record. Never fails: a value that cannot be normalised (a phone with too few digits,
/// an unparseable date) becomes missing, since validation already reported it at ingest.
pub fn normalize(r: &PersonRecord) -> NormalizedRecord {
    let given = strip_affixes(fold_name(r.given_name.as_deref().unwrap_or("")), GIVEN_TITLES);
    let family = strip_affixes(fold_name(r.family_name.as_deref().unwrap_or("")), FAMILY_SUFFIXES);
    let address = standard_address(
        r.street_number.as_deref(),
        r.address_line.as_deref(),
        r.address_line2.as_deref(),
    );
    let fields: [String; TEXT_FIELDS] = [
        given,
        family,
        address,
        fold_text(r.city.as_deref().unwrap_or("")),
        r.postcode.as_deref().and_then(normalize_postcode).unwrap_or_default(),
        fold_text(r.state.as_deref().unwrap_or("")),
        r.phone.as_deref().and_then(normalize_phone).unwrap_or_default(),
        r.email.as_deref().and_then(normalize_email).unwrap_or_default(),
        r.national_id
            .as_deref()
            .and_then(normalize_national_id)
            .unwrap_or_default(),
    ];
    let mut text = String::with_capacity(fields.iter().map(String::len).sum());
    let mut ends = [0u16; TEXT_FIELDS];
    for (i, f) in fields.iter().enumerate() {
        text.push_str(cut(f, NORMALIZED_FIELD_BYTES_MAX));
        // At most 9 fields of 256 bytes: the buffer stays far below u16::MAX.
        ends[i] = u16::try_from(text.len()).unwrap_or(u16::MAX);
    }
    let dm = |s: &str| {
        let (p, a) = double_metaphone_packed(s);
        [p, a]
    };
    let table = nicknames::table();
    let mut given_nicks = table.ids(&fields[0]);
    if given_nicks == [0; NICK_IDS_MAX] {
        if let Some(first) = fields[0].split(' ').next() {
            given_nicks = table.ids(first);
        }
    }
    let address_tokens = tokens(&fields[2]);
    NormalizedRecord {
        given_dm: dm(&fields[0]),
        family_dm: dm(&fields[1]),
        given_nicks,
        birth: r.birth_date.as_deref().and_then(Date::parse_any),
        sex: normalize_sex(r.sex.as_deref().unwrap_or("")),
        address_tokens,
        text: text.into_boxed_str(),
        ends,
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].trim_end()
}

/// Folds `s`: NFKD, combining marks removed, upper case; letters kept, digits kept when `digits`,
/// apostrophes dropped, everything else a single space.
fn fold(s: &str, digits: bool) -> String {
    let s = cut(s, FIELD_BYTES_MAX);
    let mut out = String::with_capacity(s.len());
    if s.is_ascii() {
        for c in s.chars() {
            fold_char(c, digits, &mut out);
        }
    } else {
        for c in s.nfkd() {
            if is_combining_mark(c) {
                continue;
            }
            match c {
                'ß' => out.push_str("SS"),
                'æ' | 'Æ' => out.push_str("AE"),
                'œ' | 'Œ' => out.push_str("OE"),
                'ø' | 'Ø' => out.push('O'),
                'ł' | 'Ł' => out.push('L'),
                'đ' | 'Đ' | 'ð' | 'Ð' => out.push('D'),
                'þ' | 'Þ' => out.push_str("TH"),
                'ı' => out.push('I'),
                _ => fold_char(c, digits, &mut out),
            }
        }
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out
}

fn fold_char(c: char, digits: bool, out: &mut String) {
    if c.is_alphabetic() || (digits && c.is_numeric()) {
        if c.is_ascii() {
            out.push(c.to_ascii_uppercase());
        } else {
            out.extend(c.to_uppercase());
        }
    } else if c == '\'' || c == '\u{2019}' || c == '`' {
        // O'Brien and D'Angelo fold to one word.
    } else if !out.is_empty() && !out.ends_with(' ') {
        out.push(' ');
    }
}

/// Folds a personal name: NFKD, combining marks removed, upper case, letters only (digits dropped),
/// apostrophes removed, anything else one space.
pub fn fold_name(s: &str) -> String {
    fold(s, false)
}

/// Folds free text (city, state, address words) like [`fold_name`], keeping digits.
pub fn fold_text(s: &str) -> String {
    fold(s, true)
}

const GIVEN_TITLES: &[&str] = &["MR", "MRS", "MS", "MISS", "DR", "PROF", "REV"];
const FAMILY_SUFFIXES: &[&str] = &["JR", "SR", "II", "III", "IV", "JNR", "SNR"];

/// Removes titles and generational suffixes, unless nothing else would remain.
fn strip_affixes(name: String, affixes: &[&str]) -> String {
    if !name.contains(' ') {
        return name;
    }
    let kept: Vec<&str> = name.split(' ').filter(|w| !affixes.contains(w)).collect();
    if kept.is_empty() {
        name
    } else {
        kept.join(" ")
    }
}

/// Phone digits: a leading country code 1 is dropped from 11-digit NANP numbers and only the last
/// `PHONE_DIGITS_KEPT` digits are kept; fewer than `PHONE_DIGITS_MIN` digits, or one digit repeated
/// (a placeholder), count as missing.
pub fn normalize_phone(s: &str) -> Option<String> {
    let digits: String = cut(s, FIELD_BYTES_MAX).chars().filter(char::is_ascii_digit).collect();
    let d = if digits.len() == 11 && digits.starts_with('1') {
        &digits[1..]
    } else {
        &digits[..]
    };
    let d = &d[d.len().saturating_sub(PHONE_DIGITS_KEPT)..];
    if d.len() < PHONE_DIGITS_MIN || d.bytes().all(|b| b == d.as_bytes()[0]) {
        return None;
    }
    Some(d.to_string())
}

/// Postcode: upper-case alphanumerics without spaces; a US ZIP+4 (nine digits) keeps its five.
pub fn normalize_postcode(s: &str) -> Option<String> {
    let mut p: String = fold_text(s).chars().filter(|c| !c.is_whitespace()).collect();
    if p.len() == 9 && p.bytes().all(|b| b.is_ascii_digit()) {
        p.truncate(5);
    }
    (!p.is_empty()).then_some(p)
}

/// E-mail: trimmed, lower case; a value without a local part and a domain counts as missing.
pub fn normalize_email(s: &str) -> Option<String> {
    let e = cut(s.trim(), FIELD_BYTES_MAX).to_lowercase();
    let (local, domain) = e.split_once('@')?;
    let ok = !local.is_empty() && domain.contains('.') && !domain.contains('@') && !e.contains(char::is_whitespace);
    ok.then_some(e)
}

/// National id: upper-case alphanumerics; placeholders (fewer than four characters, one character
/// repeated, 123456789) count as missing, since sources use them for "unknown" and they would link
/// strangers.
pub fn normalize_national_id(s: &str) -> Option<String> {
    let id: String = fold_text(s).chars().filter(|c| !c.is_whitespace()).collect();
    let placeholder = id.len() < 4 || id.bytes().all(|b| b == id.as_bytes()[0]) || id == "123456789";
    (!placeholder).then_some(id)
}

/// Sex from the spellings of HL7 v2, FHIR and common exports.
pub fn normalize_sex(s: &str) -> Sex {
    match fold_text(s).as_str() {
        "M" | "MALE" | "MAN" | "1" => Sex::Male,
        "F" | "FEMALE" | "WOMAN" | "2" => Sex::Female,
        "O" | "OTHER" | "X" | "A" | "AMBIGUOUS" => Sex::Other,
        _ => Sex::Unknown,
    }
}

/// Street words folded to the USPS standard abbreviations, so "Main Street" equals "Main St".
const ADDRESS_WORDS: &[(&str, &str)] = &[
    ("STREET", "ST"),
    ("STR", "ST"),
    ("AVENUE", "AVE"),
    ("AV", "AVE"),
    ("ROAD", "RD"),
    ("DRIVE", "DR"),
    ("LANE", "LN"),
    ("BOULEVARD", "BLVD"),
    ("COURT", "CT"),
    ("PLACE", "PL"),
    ("TERRACE", "TER"),
    ("CIRCLE", "CIR"),
    ("HIGHWAY", "HWY"),
    ("PARKWAY", "PKWY"),
    ("SQUARE", "SQ"),
    ("APARTMENT", "APT"),
    ("SUITE", "STE"),
    ("NORTH", "N"),
    ("SOUTH", "S"),
    ("EAST", "E"),
    ("WEST", "W"),
    ("NUMBER", ""),
    ("NO", ""),
];

/// The standardised address: number (unless the line already starts with it), line, second line.
pub fn standard_address(number: Option<&str>, line: Option<&str>, line2: Option<&str>) -> String {
    let number = fold_text(number.unwrap_or(""));
    let line = fold_text(line.unwrap_or(""));
    let line2 = fold_text(line2.unwrap_or(""));
    let mut out = String::with_capacity(number.len() + line.len() + line2.len() + 2);
    let starts_with_number = !number.is_empty() && line.split(' ').next() == Some(number.as_str());
    let number = if starts_with_number { "" } else { number.as_str() };
    for word in number.split(' ').chain(line.split(' ')).chain(line2.split(' ')) {
        let word = ADDRESS_WORDS
            .iter()
            .find(|(long, _)| *long == word)
            .map(|(_, short)| *short)
            .unwrap_or(word);
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Distinct token hashes of a standardised address with uniform unit weights, sorted by hash.
fn tokens(address: &str) -> Box<[Token]> {
    let mut hashes: Vec<u32> = address
        .split(' ')
        .filter(|w| !w.is_empty())
        .take(ADDRESS_TOKENS_MAX)
        .map(token_hash)
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    let w = if hashes.is_empty() {
        0.0
    } else {
        1.0 / (hashes.len() as f32).sqrt()
    };
    hashes.into_iter().map(|hash| Token { hash, weight: w }).collect()
}

/// The hash of one address token.
pub fn token_hash(word: &str) -> u32 {
    // The high half of a 64-bit hash; collisions among a city's street words are negligible.
    (fnv64(word.as_bytes()) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::RecordExt;

    #[test]
    fn folding() {
        assert_eq!(fold_name("  José  María-O'Brien "), "JOSE MARIA OBRIEN");
        assert_eq!(fold_name("Müller"), "MULLER");
        assert_eq!(fold_name("Straße"), "STRASSE");
        assert_eq!(fold_name("Łukasz Øster"), "LUKASZ OSTER");
        assert_eq!(fold_name("ＪＯＨＮ"), "JOHN", "full-width letters fold through NFKD");
        assert_eq!(fold_name("John 3rd"), "JOHN RD");
        assert_eq!(fold_text("Apt. #4B"), "APT 4B");
        assert_eq!(fold_name(""), "");
        assert_eq!(strip_affixes(fold_name("Smith Jr."), FAMILY_SUFFIXES), "SMITH");
        assert_eq!(strip_affixes(fold_name("Dr"), GIVEN_TITLES), "DR");
    }

    #[test]
    fn phones_postcodes_emails_ids_sex() {
        assert_eq!(normalize_phone("+1 (555) 123-4567").as_deref(), Some("5551234567"));
        assert_eq!(normalize_phone("555.123.4567").as_deref(), Some("5551234567"));
        assert_eq!(normalize_phone("+44 20 7946 0958").as_deref(), Some("2079460958"));
        assert_eq!(normalize_phone("12345"), None);
        assert_eq!(normalize_phone("000-000-0000"), None);
        assert_eq!(normalize_postcode("12345-6789").as_deref(), Some("12345"));
        assert_eq!(normalize_postcode("sw1a 1aa").as_deref(), Some("SW1A1AA"));
        assert_eq!(normalize_postcode(" "), None);
        assert_eq!(
            normalize_email("  Ann.Lee@Example.COM ").as_deref(),
            Some("ann.lee@example.com")
        );
        assert_eq!(normalize_email("not an email"), None);
        assert_eq!(normalize_email("a@b"), None);
        assert_eq!(normalize_national_id("123-45-6789"), None);
        assert_eq!(normalize_national_id("078-05-1120").as_deref(), Some("078051120"));
        assert_eq!(normalize_national_id("999-99-9999"), None);
        assert_eq!(normalize_sex("female"), Sex::Female);
        assert_eq!(normalize_sex("M"), Sex::Male);
        assert_eq!(normalize_sex("U"), Sex::Unknown);
        assert_eq!(normalize_sex("other"), Sex::Other);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            standard_address(Some("12"), Some("North Main Street"), Some("Apartment 4")),
            "12 N MAIN ST APT 4"
        );
        assert_eq!(standard_address(Some("12"), Some("12 Main St."), None), "12 MAIN ST");
        assert_eq!(standard_address(None, None, None), "");
    }

    #[test]
    fn normalized_record_fields() {
        let mut r = PersonRecord::new("S", "1");
        r.given_name = Some("Bob".into());
        r.family_name = Some("Smith".into());
        r.birth_date = Some("1980-03-04".into());
        r.phone = Some("(555) 123-4567".into());
        r.address_line = Some("12 Main Street".into());
        r.postcode = Some("02139-1234".into());
        r.sex = Some("m".into());
        let n = normalize(&r);
        assert_eq!(n.given(), "BOB");
        assert_eq!(n.family(), "SMITH");
        assert_eq!(n.address(), "12 MAIN ST");
        assert_eq!(n.postcode(), "02139");
        assert_eq!(n.phone(), "5551234567");
        assert_eq!(n.email(), "");
        assert_eq!(n.city(), "");
        assert_eq!(n.birth, Date::new(1980, 3, 4));
        assert_eq!(n.sex, Sex::Male);
        assert_eq!(n.family_dm[0], u32::from_be_bytes(*b"SM0\0"));
        let robert = {
            let mut r2 = r.clone();
            r2.given_name = Some("Robert".into());
            normalize(&r2)
        };
        assert!(nicknames::nick_equal(&n.given_nicks, &robert.given_nicks));
        assert_eq!(n.address_tokens.len(), 3);
        let w: f32 = n.address_tokens.iter().map(|t| t.weight * t.weight).sum();
        assert!((w - 1.0).abs() < 1e-6);
    }

    #[test]
    fn idf_weights_are_unit_length() {
        let mut r = PersonRecord::new("S", "1");
        r.address_line = Some("7 Elm Road".into());
        let mut n = normalize(&r);
        let rd = token_hash("RD");
        n.apply_idf(|h| if h == rd { 0.1 } else { 2.0 });
        let w: f32 = n.address_tokens.iter().map(|t| t.weight * t.weight).sum();
        assert!((w - 1.0).abs() < 1e-6);
        let rd_weight = n
            .address_tokens
            .iter()
            .find(|t| t.hash == rd)
            .map(|t| t.weight)
            .unwrap_or(1.0);
        assert!(rd_weight < 0.05, "common token weight {rd_weight}");
    }
}
