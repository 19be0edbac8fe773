//! Evaluation of one pair against a spec's level tests, with each string measure computed at most
//! once per attribute and pair.

use super::metrics::{bigram_dice, bigram_jaccard, jw_str, osa_within_str, token_cosine, with_symbols};
use super::{Attribute, FieldSpec, Test, CONTACT_PARTS};
use crate::date::{relate, year_gap, DateRelation};
use crate::nicknames::nick_equal;
use crate::normalize::NormalizedRecord;

fn text_of(r: &NormalizedRecord, a: Attribute) -> &str {
    match a {
        Attribute::GivenName => r.given(),
        Attribute::FamilyName => r.family(),
        Attribute::Address => r.address(),
        Attribute::City => r.city(),
        Attribute::Postcode => r.postcode(),
        Attribute::State => r.state(),
        Attribute::Phone => r.phone(),
        Attribute::Email => r.email(),
        Attribute::NationalId => r.national_id(),
        Attribute::BirthDate | Attribute::Sex | Attribute::Graph | Attribute::Contact => "",
    }
}

/// Whether both records have `a` (for text attributes, non-empty).
fn both_present(a: &NormalizedRecord, b: &NormalizedRecord, attr: Attribute) -> bool {
    use crate::normalize::Sex;
    match attr {
        Attribute::BirthDate => a.birth.is_some() && b.birth.is_some(),
        Attribute::Sex => a.sex != Sex::Unknown && b.sex != Sex::Unknown,
        Attribute::Graph => false,
        Attribute::Contact => CONTACT_PARTS.iter().any(|&p| both_present(a, b, p)),
        _ => !text_of(a, attr).is_empty() && !text_of(b, attr).is_empty(),
    }
}

/// Evaluates tests on one pair, computing each string measure at most once per attribute.
pub(super) struct Eval<'a> {
    a: &'a NormalizedRecord,
    b: &'a NormalizedRecord,
    /// Jaro-Winkler per attribute, NaN until computed.
    jw: [f64; ATTRIBUTES],
    /// Address token cosine, NaN until computed.
    cosine: f64,
    /// Text of each attribute on both sides, looked up once.
    texts: [Option<(&'a str, &'a str)>; ATTRIBUTES],
}

const ATTRIBUTES: usize = 13;

impl<'a> Eval<'a> {
    pub(super) fn new(a: &'a NormalizedRecord, b: &'a NormalizedRecord) -> Self {
        Eval {
            a,
            b,
            jw: [f64::NAN; ATTRIBUTES],
            cosine: f64::NAN,
            texts: [None; ATTRIBUTES],
        }
    }

    fn texts(&mut self, attr: Attribute) -> (&'a str, &'a str) {
        let (a, b) = (self.a, self.b);
        *self.texts[attr as usize].get_or_insert_with(|| (text_of(a, attr), text_of(b, attr)))
    }

    fn test(&mut self, test: Test, attr: Attribute) -> bool {
        let (a, b) = (self.a, self.b);
        match attr {
            Attribute::Sex => {
                use crate::normalize::Sex;
                matches!(test, Test::Exact) && a.sex != Sex::Unknown && a.sex == b.sex
            }
            Attribute::BirthDate => {
                let (Some(x), Some(y)) = (a.birth, b.birth) else {
                    return false;
                };
                match test {
                    Test::Exact => x == y,
                    Test::DateSwapped => relate(x, y) == DateRelation::Swapped,
                    Test::DateOneComponent => relate(x, y) == DateRelation::OneComponent,
                    Test::DateWithinYears { years } => year_gap(x, y) <= years,
                    _ => false,
                }
            }
            Attribute::Graph | Attribute::Contact => false,
            _ => {
                let (x, y) = self.texts(attr);
                if x.is_empty() || y.is_empty() {
                    return false;
                }
                match test {
                    Test::Exact => x == y,
                    Test::Nickname => nick_equal(&a.given_nicks, &b.given_nicks),
                    Test::Phonetic => {
                        let (p, q) = if attr == Attribute::GivenName {
                            (a.given_dm, b.given_dm)
                        } else {
                            (a.family_dm, b.family_dm)
                        };
                        p.iter().any(|&c| c != 0 && q.contains(&c))
                    }
                    Test::JaroWinkler { min } => {
                        let slot = &mut self.jw[attr as usize];
                        if slot.is_nan() {
                            *slot = jw_str(x, y);
                        }
                        *slot >= min
                    }
                    Test::DamerauLevenshtein { max } => x == y || osa_within_str(x, y, max),
                    Test::BigramJaccard { min } => with_symbols(x, y, bigram_jaccard, bigram_jaccard) >= min,
                    Test::BigramDice { min } => with_symbols(x, y, bigram_dice, bigram_dice) >= min,
                    Test::TfidfCosine { min } => {
                        if x == y {
                            return true;
                        }
                        if self.cosine.is_nan() {
                            self.cosine = token_cosine(&a.address_tokens, &b.address_tokens);
                        }
                        self.cosine >= min
                    }
                    Test::Prefix { chars } => {
                        let (mut p, mut q) = (x.chars(), y.chars());
                        (0..chars).all(|_| match (p.next(), q.next()) {
                            (Some(c), Some(d)) => c == d,
                            _ => false,
                        })
                    }
                    _ => false,
                }
            }
        }
    }
}

/// The level of one field, or `None` (null).
pub(super) fn compare_field(f: &FieldSpec, eval: &mut Eval<'_>) -> Option<u8> {
    let present = match f.attribute {
        Attribute::BirthDate | Attribute::Sex | Attribute::Graph => both_present(eval.a, eval.b, f.attribute),
        Attribute::Contact => CONTACT_PARTS.iter().any(|&p| {
            let (x, y) = eval.texts(p);
            !x.is_empty() && !y.is_empty()
        }),
        text => {
            let (x, y) = eval.texts(text);
            !x.is_empty() && !y.is_empty()
        }
    };
    if !present {
        return None;
    }
    let hit = f
        .levels
        .iter()
        .position(|l| eval.test(l.test, l.on.unwrap_or(f.attribute)) && l.and.iter().all(|c| eval.test(c.test, c.on)));
    Some(hit.unwrap_or(f.levels.len()) as u8)
}
