//! A seeded synthetic population of person records with ground truth, for tests and benchmarks.
//!
//! People live in households (sizes 1 to 5): partners, children, and twins (same birth date, address and
//! phone, different given names), so that the hard negatives of identity matching are present. Each
//! person gets one or more records from several sources, and each record is corrupted independently:
//! typos (insert, delete, substitute, transpose), nicknames from the shipped table, missing fields,
//! swapped day and month, one-component date errors, and moves to a new address. Everything derives
//! from one seed through `rand`'s `StdRng`, so a population is reproducible. It is not a model of any
//! real population's statistics.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::date::Date;
use crate::nicknames;
use crate::schema::{PersonRecord, RecordExt};

/// Most records one generator run produces, a bound on memory.
pub const SYNTH_RECORDS_MAX: usize = 20_000_000;

/// Probabilities of each corruption, per record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorRates {
    /// Given name replaced by a nickname or formal variant.
    pub nickname: f64,
    /// A typo in a name or street.
    pub typo: f64,
    /// A field left out (applied per field, with field-specific multipliers).
    pub missing: f64,
    /// Day and month swapped (when both are 1-12 and differ).
    pub swap_day_month: f64,
    /// One date component wrong.
    pub date_typo: f64,
    /// A person has moved: some records show the new address (and often a new phone).
    pub moved_person: f64,
}

impl Default for ErrorRates {
    fn default() -> Self {
        ErrorRates {
            nickname: 0.08,
            typo: 0.05,
            missing: 0.03,
            swap_day_month: 0.02,
            date_typo: 0.02,
            moved_person: 0.15,
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthConfig {
    /// Distinct people.
    pub people: usize,
    /// Records in all (at least `people`: every person gets one, the rest are spread at random).
    pub records: usize,
    /// Seed.
    pub seed: u64,
    /// Corruption rates.
    pub errors: ErrorRates,
    /// Chance that a child slot of a household is a twin of the previous child.
    pub twin_rate: f64,
    /// Share of records that carry the national id.
    pub national_id_rate: f64,
}

impl SynthConfig {
    /// `records` records of `records / 2` people with default error rates.
    pub fn new(records: usize, seed: u64) -> SynthConfig {
        SynthConfig {
            people: (records / 2).max(1),
            records,
            seed,
            errors: ErrorRates::default(),
            twin_rate: 0.15,
            national_id_rate: 0.3,
        }
    }
}

/// A generated population: records and, for each, the id of the person it describes.
#[derive(Debug, Clone, Default)]
pub struct Population {
    /// The records, in generation order.
    pub records: Vec<PersonRecord>,
    /// `truth[i]` is the person of `records[i]`.
    pub truth: Vec<u32>,
    /// Pairs of people who are twins (hard negatives).
    pub twin_pairs: usize,
}

const SOURCES: &[&str] = &["HOSP_A", "HOSP_B", "CLINIC_C", "LAB_D", "REG_E"];

/// The generator's word lists, compiled in (see the file for its format).
const WORDS_TXT: &str = include_str!("../data/synth_names.txt");

/// Parsed word lists.
struct Words {
    male: Vec<&'static str>,
    female: Vec<&'static str>,
    family: Vec<&'static str>,
    syllables: Vec<&'static str>,
    endings: Vec<&'static str>,
    streets: Vec<&'static str>,
    street_types: Vec<&'static str>,
    cities: Vec<(&'static str, &'static str)>,
    domains: Vec<&'static str>,
}

fn words() -> &'static Words {
    static WORDS: std::sync::OnceLock<Words> = std::sync::OnceLock::new();
    WORDS.get_or_init(|| {
        let list = |name: &str| -> Vec<&'static str> {
            WORDS_TXT
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
                .map(|rest| rest.split(',').map(str::trim).filter(|w| !w.is_empty()).collect())
                .unwrap_or_default()
        };
        let cities = list("cities")
            .into_iter()
            .map(|c| c.split_once('/').unwrap_or((c, "")))
            .collect();
        // Every list is non-empty in the shipped file; a unit test checks it.
        Words {
            male: list("male"),
            female: list("female"),
            family: list("family"),
            syllables: list("syllables"),
            endings: list("endings"),
            streets: list("streets"),
            street_types: list("street_types"),
            cities,
            domains: list("domains"),
        }
    })
}

#[derive(Debug, Clone)]
struct Address {
    number: u32,
    street: String,
    city: usize,
    postcode: String,
    phone: String,
}

#[derive(Debug, Clone)]
struct Person {
    given: String,
    family: String,
    sex: bool,
    birth: Date,
    home: usize,
    moved_to: Option<usize>,
    email: Option<String>,
    ssn: String,
}

/// Offset of the rank-frequency law: index `i` is drawn with probability proportional to
/// `1 / (i + ZIPF_OFFSET)`, which gives the first name of a 100-name list about 4% (the commonest US
/// given names are at 3-4%).
const ZIPF_OFFSET: f64 = 10.0;

/// Picks index `i` of `n` with probability proportional to `1/(i + ZIPF_OFFSET)`, by inverting the
/// continuous approximation of the cumulative sum.
fn zipf(rng: &mut StdRng, n: usize) -> usize {
    let (lo, hi) = (ZIPF_OFFSET.ln(), (n as f64 + ZIPF_OFFSET).ln());
    let x: f64 = lo + rng.gen::<f64>() * (hi - lo);
    ((x.exp() - ZIPF_OFFSET) as usize).min(n - 1)
}

/// Share of people whose surname comes from the list of common surnames; the rest get a generated one
/// (about 15,000 possible), as the top hundred US surnames cover about a quarter of the population.
const COMMON_SURNAME_SHARE: f64 = 0.25;

fn family_name(rng: &mut StdRng) -> String {
    if rng.gen_bool(COMMON_SURNAME_SHARE) {
        let family = &words().family;
        return family[zipf(rng, family.len())].to_string();
    }
    // A long tail of rarer surnames, as real populations have.
    let mut s = String::new();
    for _ in 0..rng.gen_range(1..=2) {
        s.push_str(words().syllables[rng.gen_range(0..words().syllables.len())]);
    }
    s.push_str(words().endings[rng.gen_range(0..words().endings.len())]);
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => s,
    }
}

fn given_name(rng: &mut StdRng, male: bool, avoid: &[String]) -> String {
    let list = if male { &words().male } else { &words().female };
    loop {
        let g = list[zipf(rng, list.len())].to_string();
        if !avoid.contains(&g) {
            return g;
        }
    }
}

fn random_date(rng: &mut StdRng, from: u16, to: u16) -> Date {
    loop {
        let year = rng.gen_range(from..=to);
        let month = rng.gen_range(1..=12);
        let day = rng.gen_range(1..=31);
        if let Some(d) = Date::new(year, month, day) {
            return d;
        }
    }
}

fn new_address(rng: &mut StdRng) -> Address {
    let w = words();
    let city = rng.gen_range(0..w.cities.len());
    Address {
        number: rng.gen_range(1..9999),
        street: format!(
            "{} {}",
            w.streets[rng.gen_range(0..w.streets.len())],
            w.street_types[rng.gen_range(0..w.street_types.len())]
        ),
        city,
        postcode: format!("{:05}", 10_000 + city * 4000 + rng.gen_range(0..4000)),
        phone: format!(
            "{}{:03}{:04}",
            rng.gen_range(201..990),
            rng.gen_range(200..999),
            rng.gen_range(0..10_000)
        ),
    }
}

/// One random edit: insert, delete, substitute or transpose (letters for letters, digits for digits).
pub fn typo(rng: &mut StdRng, s: &str) -> String {
    let mut c: Vec<char> = s.chars().collect();
    if c.len() < 2 {
        return s.to_string();
    }
    let i = rng.gen_range(1..c.len());
    let digit = c[i].is_ascii_digit();
    let random = |rng: &mut StdRng| {
        if digit {
            char::from(b'0' + rng.gen_range(0..10u8))
        } else {
            char::from(b'a' + rng.gen_range(0..26u8))
        }
    };
    match rng.gen_range(0..4) {
        0 => {
            let x = random(rng);
            c.insert(i, x);
        }
        1 if c.len() > 3 => {
            c.remove(i);
        }
        2 => c.swap(i - 1, i),
        _ => c[i] = random(rng),
    }
    c.into_iter().collect()
}

fn nickname(rng: &mut StdRng, given: &str) -> Option<String> {
    let table = nicknames::table();
    let ids = table.ids(&crate::normalize::fold_name(given));
    let id = *ids.iter().find(|&&i| i != 0)?;
    let variants = table.variants(id);
    if variants.is_empty() {
        return None;
    }
    let v = &variants[rng.gen_range(0..variants.len())];
    let mut chars = v.chars();
    let first = chars.next()?;
    Some(
        std::iter::once(first)
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
    )
}

/// Generates a population. `config.records` is clamped to `SYNTH_RECORDS_MAX` and to at least
/// `config.people`.
pub fn generate(config: &SynthConfig) -> Population {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let people_n = config.people.clamp(1, SYNTH_RECORDS_MAX);
    let records_n = config.records.clamp(people_n, SYNTH_RECORDS_MAX);
    let mut addresses: Vec<Address> = Vec::new();
    let mut people: Vec<Person> = Vec::with_capacity(people_n);
    let mut twin_pairs = 0;
    let mut next_ssn: u32 = 100_000_000;
    while people.len() < people_n {
        let home = addresses.len();
        addresses.push(new_address(&mut rng));
        let size = [1, 1, 1, 1, 1, 2, 2, 3, 4, 5][rng.gen_range(0..10)].min(people_n - people.len());
        let family = family_name(&mut rng);
        let mut names: Vec<String> = Vec::new();
        let mut last_child: Option<usize> = None;
        for slot in 0..size {
            let mut partner = false;
            let (sex, birth, fam, twin) = if slot == 0 {
                (
                    rng.gen_bool(0.5),
                    random_date(&mut rng, 1935, 2000),
                    family.clone(),
                    false,
                )
            } else if slot == 1 && size > 1 && rng.gen_bool(0.7) {
                let first = &people[people.len() - 1];
                let y = first
                    .birth
                    .year
                    .saturating_add_signed(rng.gen_range(-6i16..=6))
                    .clamp(1930, 2005);
                let sex = !first.sex;
                let fam = if rng.gen_bool(0.7) {
                    family.clone()
                } else {
                    family_name(&mut rng)
                };
                partner = true;
                (sex, random_date(&mut rng, y, y), fam, false)
            } else if let Some(c) = last_child.filter(|_| rng.gen_bool(config.twin_rate)) {
                let sibling: &Person = &people[c];
                (rng.gen_bool(0.5), sibling.birth, sibling.family.clone(), true)
            } else {
                let parent = people[people.len() - slot].birth.year;
                let y = (parent + rng.gen_range(20..40)).min(2020);
                (rng.gen_bool(0.5), random_date(&mut rng, y, y), family.clone(), false)
            };
            let given = given_name(&mut rng, sex, &names);
            names.push(given.clone());
            if twin {
                twin_pairs += 1;
            }
            let email = rng.gen_bool(0.6).then(|| {
                format!(
                    "{}.{}{}@{}",
                    given.to_lowercase(),
                    fam.to_lowercase().replace(['\'', ' '], ""),
                    rng.gen_range(1..100),
                    words().domains[rng.gen_range(0..words().domains.len())]
                )
            });
            let moved_to = rng.gen_bool(config.errors.moved_person).then(|| {
                addresses.push(new_address(&mut rng));
                addresses.len() - 1
            });
            next_ssn += rng.gen_range(1..50);
            people.push(Person {
                given,
                family: fam,
                sex,
                birth,
                home,
                moved_to,
                email,
                ssn: format!("{next_ssn:09}"),
            });
            if slot >= 1 && !partner {
                last_child = Some(people.len() - 1);
            }
        }
    }
    // Every person has one record; the rest go to random people.
    let mut owner: Vec<u32> = (0..people_n as u32).collect();
    owner.extend((people_n..records_n).map(|_| rng.gen_range(0..people_n as u32)));
    // Shuffle so that a person's records are not adjacent (Fisher-Yates with the seeded generator).
    for i in (1..owner.len()).rev() {
        let j = rng.gen_range(0..=i);
        owner.swap(i, j);
    }
    let mut per_source = [0u64; SOURCES.len()];
    let mut records = Vec::with_capacity(records_n);
    for &p in &owner {
        let s = rng.gen_range(0..SOURCES.len());
        per_source[s] += 1;
        let id = format!("{}{:08}", &SOURCES[s][..1], per_source[s]);
        records.push(corrupt(
            &mut rng,
            config,
            &people[p as usize],
            &addresses,
            SOURCES[s],
            id,
        ));
    }
    Population {
        records,
        truth: owner,
        twin_pairs,
    }
}

fn corrupt(
    rng: &mut StdRng,
    config: &SynthConfig,
    p: &Person,
    addresses: &[Address],
    source: &str,
    id: String,
) -> PersonRecord {
    let e = &config.errors;
    let mut r = PersonRecord::new(source, id);
    let missing = |rng: &mut StdRng, factor: f64| rng.gen_bool((e.missing * factor).min(1.0));
    if !missing(rng, 0.7) {
        let mut g = p.given.clone();
        if rng.gen_bool(e.nickname) {
            g = nickname(rng, &g).unwrap_or(g);
        }
        if rng.gen_bool(e.typo) {
            g = typo(rng, &g);
        }
        r.given_name = Some(if rng.gen_bool(0.2) { g.to_uppercase() } else { g });
    }
    if !missing(rng, 0.3) {
        let f = if rng.gen_bool(e.typo) {
            typo(rng, &p.family)
        } else {
            p.family.clone()
        };
        r.family_name = Some(if rng.gen_bool(0.2) { f.to_uppercase() } else { f });
    }
    if !missing(rng, 0.5) {
        let mut d = p.birth;
        if rng.gen_bool(e.swap_day_month) {
            d = d.swapped().unwrap_or(d);
        } else if rng.gen_bool(e.date_typo) {
            let shifted = match rng.gen_range(0..3) {
                0 => Date::new(
                    d.year.saturating_add_signed(if rng.gen_bool(0.5) { 1i16 } else { -1 }),
                    d.month,
                    d.day,
                ),
                1 => Date::new(d.year, (d.month % 12) + 1, d.day),
                _ => Date::new(d.year, d.month, (d.day % 28) + 1),
            };
            d = shifted.unwrap_or(d);
        }
        r.birth_date = Some(d.to_iso());
    }
    if !missing(rng, 1.0) {
        r.sex = Some(if p.sex { "M" } else { "F" }.to_string());
    }
    let addr = match p.moved_to {
        Some(new) if rng.gen_bool(0.5) => &addresses[new],
        _ => &addresses[p.home],
    };
    if !missing(rng, 2.0) {
        let street = if rng.gen_bool(e.typo) {
            typo(rng, &addr.street)
        } else {
            addr.street.clone()
        };
        if rng.gen_bool(0.5) {
            r.street_number = Some(addr.number.to_string());
            r.address_line = Some(street);
        } else {
            r.address_line = Some(format!("{} {}", addr.number, street));
        }
        let (city, state) = words().cities[addr.city];
        r.city = Some(city.to_string());
        r.state = Some(state.to_string());
        r.postcode = Some(if rng.gen_bool(0.1) {
            format!("{}-{:04}", addr.postcode, rng.gen_range(0..10_000))
        } else {
            addr.postcode.clone()
        });
    }
    if !missing(rng, 5.0) {
        let digits = if rng.gen_bool(e.typo * 0.5) {
            typo(rng, &addr.phone)
        } else {
            addr.phone.clone()
        };
        r.phone = Some(match rng.gen_range(0..3) {
            0 if digits.len() == 10 => format!("({}) {}-{}", &digits[..3], &digits[3..6], &digits[6..]),
            1 => format!("+1 {digits}"),
            _ => digits,
        });
    }
    if let Some(email) = &p.email {
        if !missing(rng, 10.0) {
            r.email = Some(if rng.gen_bool(e.typo * 0.5) {
                typo(rng, email)
            } else {
                email.clone()
            });
        }
    }
    if rng.gen_bool(config.national_id_rate) {
        let ssn = if rng.gen_bool(e.typo * 0.1) {
            typo(rng, &p.ssn)
        } else {
            p.ssn.clone()
        };
        r.national_id = Some(format!("{}-{}-{}", &ssn[..3], &ssn[3..5], &ssn[5..]));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_well_formed() {
        let config = SynthConfig::new(2000, 42);
        let a = generate(&config);
        let b = generate(&config);
        assert_eq!(a.records, b.records);
        assert_eq!(a.truth, b.truth);
        assert_eq!(a.records.len(), 2000);
        let people: std::collections::HashSet<u32> = a.truth.iter().copied().collect();
        assert_eq!(people.len(), 1000, "every person has a record");
        for r in &a.records {
            assert_eq!(r.validate(), Ok(()), "{r:?}");
        }
        let keys: std::collections::HashSet<String> = a
            .records
            .iter()
            .map(|r| format!("{}:{}", r.source, r.source_id))
            .collect();
        assert_eq!(keys.len(), 2000, "keys are unique");
        assert!(a.twin_pairs > 0);
        let other = generate(&SynthConfig::new(2000, 43));
        assert_ne!(other.records, a.records);
    }

    #[test]
    fn word_lists_are_complete() {
        let w = words();
        for (name, list) in [
            ("male", &w.male),
            ("female", &w.female),
            ("family", &w.family),
            ("syllables", &w.syllables),
            ("endings", &w.endings),
            ("streets", &w.streets),
            ("street_types", &w.street_types),
            ("domains", &w.domains),
        ] {
            assert!(list.len() >= 4, "{name} has {} words", list.len());
        }
        assert!(w.male.len() >= 100 && w.female.len() >= 100 && w.family.len() >= 100);
        assert!(w.cities.iter().all(|(c, s)| !c.is_empty() && s.len() == 2));
    }

    #[test]
    fn typos_are_single_edits() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let t = typo(&mut rng, "Margaret");
            assert!(crate::compare::metrics::osa_str(&t, "Margaret") <= 1, "{t}");
        }
        assert_eq!(typo(&mut rng, "A"), "A");
    }
}
