//! Calendar dates of birth: a checked `Date`, parsing of the common spellings and of explicit
//! `strftime`-style formats, and the relations the date comparator needs.
//!
//! It is not a date-time library: no time zones, no times (a time after the date is ignored), no clock.
//! Ambiguous numeric dates (`03/04/1980`) read month first, as US sources write them, unless the first
//! number cannot be a month; the comparator tolerates a day/month swap, so a misread costs one level,
//! not a missed match. Two-digit years are refused unless a mapping's explicit format asks for them.

use serde::{Deserialize, Serialize};

/// Earliest year accepted for a date of birth.
pub const YEAR_MIN: u16 = 1850;
/// Latest year accepted for a date of birth.
pub const YEAR_MAX: u16 = 2100;
/// Two-digit years at or below this read as 20yy, above it as 19yy (explicit `%y` formats only).
pub const TWO_DIGIT_YEAR_PIVOT: u16 = 30;
/// Longest date text looked at, in bytes.
pub const DATE_BYTES_MAX: usize = 64;

/// A valid calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Date {
    /// Year (`YEAR_MIN..=YEAR_MAX`).
    pub year: u16,
    /// Month, 1-12.
    pub month: u8,
    /// Day of month, 1-31 as the month allows.
    pub day: u8,
}

const MONTHS: [&str; 12] = [
    "JANUARY",
    "FEBRUARY",
    "MARCH",
    "APRIL",
    "MAY",
    "JUNE",
    "JULY",
    "AUGUST",
    "SEPTEMBER",
    "OCTOBER",
    "NOVEMBER",
    "DECEMBER",
];

/// Days in `month` of `year` (0 for a month outside 1-12).
pub fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        2 => 28,
        _ => 0,
    }
}

impl Date {
    /// The date, if it exists and its year is in range.
    pub fn new(year: u16, month: u8, day: u8) -> Option<Date> {
        let ok = (YEAR_MIN..=YEAR_MAX).contains(&year) && day >= 1 && day <= days_in_month(year, month);
        ok.then_some(Date { year, month, day })
    }

    /// Strict `YYYY-MM-DD`, the wire form.
    pub fn parse_iso(s: &str) -> Option<Date> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        Date::new(digits(&b[0..4])?, digits(&b[5..7])? as u8, digits(&b[8..10])? as u8)
    }

    /// Reads the common spellings: ISO (`1980-03-04`, with an optional time after it), `19800304`,
    /// `1980/03/04`, `03/04/1980` (month first unless the first number exceeds 12), `04.03.1980` (day
    /// first, the European dotted form), and month names (`4 Mar 1980`, `March 4, 1980`, `04-MAR-1980`).
    pub fn parse_any(s: &str) -> Option<Date> {
        let s = s.trim();
        if s.is_empty() || s.len() > DATE_BYTES_MAX {
            return None;
        }
        // Drop a time part: "1980-03-04T10:00:00Z", "1980-03-04 10:00".
        let s = match s.find(['T', ' ']) {
            Some(i) if i >= 8 && s.as_bytes()[..i].iter().all(|c| c.is_ascii_digit() || *c == b'-') => &s[..i],
            _ => s,
        };
        let b = s.as_bytes();
        if b.len() == 8 && b.iter().all(u8::is_ascii_digit) {
            return Date::new(digits(&b[0..4])?, digits(&b[4..6])? as u8, digits(&b[6..8])? as u8);
        }
        let mut nums = [0u16; 3];
        let mut widths = [0usize; 3];
        let mut month_name = None;
        let mut n = 0;
        for tok in s.split(|c: char| c == '-' || c == '/' || c == '.' || c == ',' || c.is_whitespace()) {
            if tok.is_empty() {
                continue;
            }
            if n == 3 {
                return None;
            }
            if tok.bytes().all(|c| c.is_ascii_digit()) {
                if tok.len() > 4 {
                    return None;
                }
                nums[n] = digits(tok.as_bytes())?;
                widths[n] = tok.len();
            } else {
                if month_name.is_some() {
                    return None;
                }
                month_name = Some((n, month_from_name(tok)?));
            }
            n += 1;
        }
        if n != 3 {
            return None;
        }
        let dotted = s.contains('.');
        match month_name {
            Some((pos, month)) => {
                let others: Vec<usize> = (0..3).filter(|&i| i != pos).collect();
                let (a, b) = (others[0], others[1]);
                let (day, year) = if widths[b] == 4 {
                    (nums[a], nums[b])
                } else {
                    (nums[b], nums[a])
                };
                if widths[if widths[b] == 4 { b } else { a }] != 4 {
                    return None;
                }
                Date::new(year, month, u8::try_from(day).ok()?)
            }
            None if widths[0] == 4 => Date::new(nums[0], u8::try_from(nums[1]).ok()?, u8::try_from(nums[2]).ok()?),
            None if widths[2] == 4 => {
                let (x, y) = (u8::try_from(nums[0]).ok()?, u8::try_from(nums[1]).ok()?);
                let day_first = dotted || x > 12;
                let (month, day) = if day_first { (y, x) } else { (x, y) };
                Date::new(nums[2], month, day)
            }
            None => None,
        }
    }

    /// Reads `s` with an explicit format: `%Y` (4-digit year), `%y` (2-digit year, see
    /// `TWO_DIGIT_YEAR_PIVOT`), `%m`, `%d` (1 or 2 digits), `%b`/`%B` (month name or abbreviation),
    /// `%%`, and literal characters that must match. A format that cannot be read returns `None`.
    pub fn parse_with_format(s: &str, format: &str) -> Option<Date> {
        let s = s.trim();
        if s.len() > DATE_BYTES_MAX {
            return None;
        }
        let (mut year, mut month, mut day) = (None, None, None);
        let mut input = s.as_bytes();
        let mut fmt = format.as_bytes();
        while let Some((&c, rest)) = fmt.split_first() {
            fmt = rest;
            if c != b'%' {
                let (&got, rest) = input.split_first()?;
                if got != c {
                    return None;
                }
                input = rest;
                continue;
            }
            let (&spec, rest) = fmt.split_first()?;
            fmt = rest;
            match spec {
                b'Y' => year = Some(take_digits(&mut input, 4, 4)?),
                b'y' => {
                    let yy = take_digits(&mut input, 2, 2)?;
                    year = Some(if yy <= TWO_DIGIT_YEAR_PIVOT {
                        2000 + yy
                    } else {
                        1900 + yy
                    });
                }
                b'm' => month = Some(u8::try_from(take_digits(&mut input, 1, 2)?).ok()?),
                b'd' => day = Some(u8::try_from(take_digits(&mut input, 1, 2)?).ok()?),
                b'b' | b'B' => {
                    let len = input.iter().take_while(|c| c.is_ascii_alphabetic()).count();
                    let name = std::str::from_utf8(&input[..len]).ok()?;
                    month = Some(month_from_name(name)?);
                    input = &input[len..];
                }
                b'%' => {
                    let (&got, rest) = input.split_first()?;
                    if got != b'%' {
                        return None;
                    }
                    input = rest;
                }
                _ => return None,
            }
        }
        if !input.is_empty() {
            return None;
        }
        Date::new(year?, month?, day?)
    }

    /// The wire form, `YYYY-MM-DD`.
    pub fn to_iso(self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// The date with day and month exchanged, when that is a date too.
    pub fn swapped(self) -> Option<Date> {
        Date::new(self.year, self.day, self.month)
    }

    /// The date packed into one integer (`yyyymmdd`), for keys and hashing.
    pub fn packed(self) -> u32 {
        u32::from(self.year) * 10_000 + u32::from(self.month) * 100 + u32::from(self.day)
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// How two dates relate, from closest to farthest; the date comparator maps these to levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DateRelation {
    /// The same date.
    Exact,
    /// Same year, day and month exchanged.
    Swapped,
    /// Two of year, month and day are equal (a one-field typo).
    OneComponent,
    /// Anything else; [`year_gap`] says how far apart the years are.
    Different,
}

/// How `a` and `b` relate.
pub fn relate(a: Date, b: Date) -> DateRelation {
    if a == b {
        return DateRelation::Exact;
    }
    if a.year == b.year && a.day == b.month && a.month == b.day {
        return DateRelation::Swapped;
    }
    let same = u8::from(a.year == b.year) + u8::from(a.month == b.month) + u8::from(a.day == b.day);
    if same == 2 {
        DateRelation::OneComponent
    } else {
        DateRelation::Different
    }
}

/// Absolute difference of the years.
pub fn year_gap(a: Date, b: Date) -> u16 {
    a.year.abs_diff(b.year)
}

fn digits(b: &[u8]) -> Option<u16> {
    if b.is_empty() || b.len() > 4 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u16, |acc, &c| acc * 10 + u16::from(c - b'0')))
}

fn take_digits(input: &mut &[u8], min: usize, max: usize) -> Option<u16> {
    let len = input.iter().take(max).take_while(|c| c.is_ascii_digit()).count();
    if len < min {
        return None;
    }
    let v = digits(&input[..len])?;
    *input = &input[len..];
    Some(v)
}

fn month_from_name(name: &str) -> Option<u8> {
    if name.len() < 3 || name.len() > 9 {
        return None;
    }
    let upper = name.to_ascii_uppercase();
    let upper = if upper == "SEPT" { "SEP".to_string() } else { upper };
    MONTHS
        .iter()
        .position(|m| m.starts_with(upper.as_str()))
        .map(|i| i as u8 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: u16, m: u8, day: u8) -> Option<Date> {
        Date::new(y, m, day)
    }

    #[test]
    fn validity() {
        assert!(d(2000, 2, 29).is_some());
        assert!(d(1900, 2, 29).is_none());
        assert!(d(1980, 4, 31).is_none());
        assert!(d(1980, 13, 1).is_none());
        assert!(d(1849, 1, 1).is_none());
        assert_eq!(Date::parse_iso("1980-03-04"), d(1980, 3, 4));
        assert_eq!(Date::parse_iso("1980-3-4"), None);
        assert_eq!(Date::parse_iso("１９８０-03-04"), None);
    }

    #[test]
    fn common_spellings() {
        let want = d(1980, 3, 4);
        for s in [
            "1980-03-04",
            "1980-03-04T10:11:12Z",
            "19800304",
            "1980/03/04",
            "03/04/1980",
            "3/4/1980",
            "04.03.1980",
            "4 Mar 1980",
            "March 4, 1980",
            "04-MAR-1980",
            "1980 march 4",
            " 4 mar 1980 ",
        ] {
            assert_eq!(Date::parse_any(s), want, "{s}");
        }
        assert_eq!(
            Date::parse_any("25/12/1980"),
            d(1980, 12, 25),
            "first number > 12 is the day"
        );
        assert_eq!(Date::parse_any("4 Sept 1980"), d(1980, 9, 4));
        assert_eq!(Date::parse_any("1980-02-30"), None);
        assert_eq!(Date::parse_any("03/04/80"), None, "two-digit years are ambiguous");
        assert_eq!(Date::parse_any("yesterday"), None);
        assert_eq!(Date::parse_any("1 2 3 4"), None);
        assert_eq!(Date::parse_any(""), None);
    }

    #[test]
    fn explicit_formats() {
        assert_eq!(Date::parse_with_format("04/03/1980", "%d/%m/%Y"), d(1980, 3, 4));
        assert_eq!(Date::parse_with_format("4/3/1980", "%d/%m/%Y"), d(1980, 3, 4));
        assert_eq!(Date::parse_with_format("1980.03.04", "%Y.%m.%d"), d(1980, 3, 4));
        assert_eq!(Date::parse_with_format("04-Mar-80", "%d-%b-%y"), d(1980, 3, 4));
        assert_eq!(Date::parse_with_format("04-Mar-15", "%d-%b-%y"), d(2015, 3, 4));
        assert_eq!(Date::parse_with_format("04/03/1980x", "%d/%m/%Y"), None);
        assert_eq!(Date::parse_with_format("04-03-1980", "%d/%m/%Y"), None);
        assert_eq!(Date::parse_with_format("04/03/1980", "%d/%m/%Q"), None);
    }

    #[test]
    fn relations() {
        let a = Date::new(1980, 3, 4).unwrap();
        assert_eq!(relate(a, a), DateRelation::Exact);
        assert_eq!(relate(a, Date::new(1980, 4, 3).unwrap()), DateRelation::Swapped);
        assert_eq!(relate(a, Date::new(1981, 3, 4).unwrap()), DateRelation::OneComponent);
        assert_eq!(relate(a, Date::new(1980, 3, 14).unwrap()), DateRelation::OneComponent);
        assert_eq!(relate(a, Date::new(1985, 7, 4).unwrap()), DateRelation::Different);
        assert_eq!(year_gap(a, Date::new(1985, 7, 4).unwrap()), 5);
        assert_eq!(a.to_iso(), "1980-03-04");
        assert_eq!(a.packed(), 19_800_304);
        assert_eq!(a.swapped(), Date::new(1980, 4, 3));
    }
}
