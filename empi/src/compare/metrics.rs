//! String and vector similarity measures used by the field comparator: Jaro, Jaro-Winkler, optimal
//! string alignment distance (Damerau-Levenshtein without the unrestricted variant's repeated edits of
//! one substring), bigram Jaccard and Dice, and TF-IDF cosine over sorted token vectors.
//!
//! Every function is allocation-free: inputs longer than `METRIC_CHARS_MAX` symbols are cut to that
//! length, and scratch lives on the stack. They work on any `Copy + Eq` symbol (bytes for ASCII text,
//! `char`s otherwise). Nothing here knows about records or levels.

use crate::normalize::Token;

/// Longest input considered, in symbols; names and address words are far shorter, and the cap lets the
/// Jaro flags live in one `u64` and the edit-distance rows on the stack.
pub const METRIC_CHARS_MAX: usize = 64;

fn cap<T>(s: &[T]) -> &[T] {
    &s[..s.len().min(METRIC_CHARS_MAX)]
}

/// Jaro similarity in `[0, 1]`; 0 when either side is empty.
pub fn jaro<T: Copy + Eq>(a: &[T], b: &[T]) -> f64 {
    let (a, b) = (cap(a), cap(b));
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let window = (a.len().max(b.len()) / 2).saturating_sub(1);
    let (mut a_flags, mut b_flags, mut matches) = (0u64, 0u64, 0u32);
    for (i, &x) in a.iter().enumerate() {
        let lo = i.saturating_sub(window);
        let hi = (i + window + 1).min(b.len());
        for (j, &y) in b.iter().enumerate().take(hi).skip(lo) {
            if b_flags & (1 << j) == 0 && x == y {
                a_flags |= 1 << i;
                b_flags |= 1 << j;
                matches += 1;
                break;
            }
        }
    }
    if matches == 0 {
        return 0.0;
    }
    let mut half_transpositions = 0u32;
    let mut rest = b_flags;
    for (i, &x) in a.iter().enumerate() {
        if a_flags & (1 << i) != 0 {
            // The lowest remaining matched position of b pairs with the i-th matched symbol of a.
            let k = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            if b[k] != x {
                half_transpositions += 1;
            }
        }
    }
    let m = f64::from(matches);
    let t = f64::from(half_transpositions) / 2.0;
    (m / a.len() as f64 + m / b.len() as f64 + (m - t) / m) / 3.0
}

/// Jaro-Winkler similarity: Jaro plus a bonus of 0.1 per shared leading symbol (at most four), applied
/// when Jaro exceeds 0.7 (Winkler's boost threshold).
pub fn jaro_winkler<T: Copy + Eq>(a: &[T], b: &[T]) -> f64 {
    let j = jaro(a, b);
    if j <= 0.7 {
        return j;
    }
    let prefix = a.iter().zip(b.iter()).take(4).take_while(|(x, y)| x == y).count();
    j + prefix as f64 * 0.1 * (1.0 - j)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and transpositions of
/// adjacent symbols each cost 1, and no substring is edited twice (so `CA`→`ABC` is 3, not 2 as in
/// unrestricted Damerau-Levenshtein).
pub fn osa_distance<T: Copy + Eq>(a: &[T], b: &[T]) -> u32 {
    let (a, b) = (cap(a), cap(b));
    if a.is_empty() || b.is_empty() {
        return a.len().max(b.len()) as u32;
    }
    let n = b.len();
    let mut prev2 = [0u8; METRIC_CHARS_MAX + 1];
    let mut prev = [0u8; METRIC_CHARS_MAX + 1];
    let mut cur = [0u8; METRIC_CHARS_MAX + 1];
    for (j, slot) in prev.iter_mut().enumerate().take(n + 1) {
        *slot = j as u8;
    }
    for i in 1..=a.len() {
        cur[0] = i as u8;
        for j in 1..=n {
            let cost = u8::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(prev2[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    u32::from(prev[n])
}

/// Whether the optimal string alignment distance is at most `max`, in linear time for `max <= 1` (the
/// common case: one typo) and with the full distance otherwise.
pub fn osa_within<T: Copy + Eq>(a: &[T], b: &[T], max: u32) -> bool {
    let (a, b) = (cap(a), cap(b));
    if a.len().abs_diff(b.len()) > max as usize {
        return false;
    }
    match max {
        0 => a == b,
        1 => {
            let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
            let i = long.iter().zip(short).take_while(|(x, y)| x == y).count();
            if long.len() == short.len() {
                i == long.len()
                    || long[i + 1..] == short[i + 1..]
                    || (i + 1 < long.len()
                        && long[i] == short[i + 1]
                        && long[i + 1] == short[i]
                        && long[i + 2..] == short[i + 2..])
            } else {
                long[i + 1..] == short[i..]
            }
        }
        _ => osa_distance(a, b) <= max,
    }
}

/// Distinct bigrams of `s`, sorted, written into `out`; returns how many.
fn bigrams<T: Copy + Into<u32>>(s: &[T], out: &mut [u64; METRIC_CHARS_MAX]) -> usize {
    let s = cap(s);
    let mut n = 0;
    for w in s.windows(2) {
        out[n] = (u64::from(w[0].into()) << 32) | u64::from(w[1].into());
        n += 1;
    }
    out[..n].sort_unstable();
    let mut k = 0;
    for i in 0..n {
        if k == 0 || out[i] != out[k - 1] {
            out[k] = out[i];
            k += 1;
        }
    }
    k
}

/// (shared, |A|, |B|) over the distinct bigram sets.
fn bigram_counts<T: Copy + Into<u32>>(a: &[T], b: &[T]) -> (usize, usize, usize) {
    let mut x = [0u64; METRIC_CHARS_MAX];
    let mut y = [0u64; METRIC_CHARS_MAX];
    let (na, nb) = (bigrams(a, &mut x), bigrams(b, &mut y));
    let (mut i, mut j, mut shared) = (0, 0, 0);
    while i < na && j < nb {
        match x[i].cmp(&y[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                shared += 1;
                i += 1;
                j += 1;
            }
        }
    }
    (shared, na, nb)
}

/// Jaccard similarity of the bigram sets (`|A∩B| / |A∪B|`); 1 for two equal one-symbol strings.
pub fn bigram_jaccard<T: Copy + Eq + Into<u32>>(a: &[T], b: &[T]) -> f64 {
    let (shared, na, nb) = bigram_counts(a, b);
    let union = na + nb - shared;
    if union == 0 {
        return f64::from(u8::from(a == b && !a.is_empty()));
    }
    shared as f64 / union as f64
}

/// Dice coefficient of the bigram sets (`2|A∩B| / (|A|+|B|)`).
pub fn bigram_dice<T: Copy + Eq + Into<u32>>(a: &[T], b: &[T]) -> f64 {
    let (shared, na, nb) = bigram_counts(a, b);
    if na + nb == 0 {
        return f64::from(u8::from(a == b && !a.is_empty()));
    }
    2.0 * shared as f64 / (na + nb) as f64
}

/// Cosine of two token vectors sorted by hash (each already L2-normalised, so this is a dot product).
pub fn token_cosine(a: &[Token], b: &[Token]) -> f64 {
    let (mut i, mut j, mut dot) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        match a[i].hash.cmp(&b[j].hash) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                dot += f64::from(a[i].weight) * f64::from(b[j].weight);
                i += 1;
                j += 1;
            }
        }
    }
    dot.min(1.0)
}

/// Runs `f` on the symbols of two strings: bytes when both are ASCII, `char`s (on the stack) otherwise.
pub fn with_symbols<R>(
    a: &str,
    b: &str,
    f_bytes: impl Fn(&[u8], &[u8]) -> R,
    f_chars: impl Fn(&[char], &[char]) -> R,
) -> R {
    if a.is_ascii() && b.is_ascii() {
        return f_bytes(a.as_bytes(), b.as_bytes());
    }
    let mut x = ['\0'; METRIC_CHARS_MAX];
    let mut y = ['\0'; METRIC_CHARS_MAX];
    let fill = |s: &str, buf: &mut [char; METRIC_CHARS_MAX]| {
        let mut n = 0;
        for c in s.chars().take(METRIC_CHARS_MAX) {
            buf[n] = c;
            n += 1;
        }
        n
    };
    let (na, nb) = (fill(a, &mut x), fill(b, &mut y));
    f_chars(&x[..na], &y[..nb])
}

/// Jaro-Winkler of two strings.
pub fn jw_str(a: &str, b: &str) -> f64 {
    with_symbols(a, b, jaro_winkler, jaro_winkler)
}

/// Optimal string alignment distance of two strings.
pub fn osa_str(a: &str, b: &str) -> u32 {
    with_symbols(a, b, osa_distance, osa_distance)
}

/// Whether two strings are at most `max` edits apart (optimal string alignment).
pub fn osa_within_str(a: &str, b: &str, max: u32) -> bool {
    with_symbols(a, b, |x, y| osa_within(x, y, max), |x, y| osa_within(x, y, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r3(x: f64) -> f64 {
        (x * 1000.0).round() / 1000.0
    }

    #[test]
    fn jaro_winkler_reference_values() {
        assert_eq!(r3(jaro(b"MARTHA", b"MARHTA")), 0.944);
        assert_eq!(r3(jaro_winkler(b"MARTHA", b"MARHTA")), 0.961);
        assert_eq!(r3(jaro(b"DWAYNE", b"DUANE")), 0.822);
        assert_eq!(r3(jaro_winkler(b"DWAYNE", b"DUANE")), 0.84);
        assert_eq!(r3(jaro(b"DIXON", b"DICKSONX")), 0.767);
        assert_eq!(r3(jaro_winkler(b"DIXON", b"DICKSONX")), 0.813);
        assert_eq!(jaro_winkler(b"SAME", b"SAME"), 1.0);
        assert_eq!(jaro_winkler(b"ABC", b"XYZ"), 0.0);
        assert_eq!(jaro_winkler(b"", b"ABC"), 0.0);
        // Symmetric, as the comparator needs.
        assert_eq!(jaro_winkler(b"DUANE", b"DWAYNE"), jaro_winkler(b"DWAYNE", b"DUANE"));
        assert_eq!(
            r3(jw_str("MÜLLER", "MULLER")),
            r3(jaro_winkler(
                &['M', 'Ü', 'L', 'L', 'E', 'R'],
                &['M', 'U', 'L', 'L', 'E', 'R']
            ))
        );
    }

    #[test]
    fn osa_counts_transpositions_once() {
        assert_eq!(osa_distance(b"MARTHA", b"MARHTA"), 1);
        assert_eq!(osa_distance(b"KITTEN", b"SITTING"), 3);
        assert_eq!(
            osa_distance(b"CA", b"ABC"),
            3,
            "OSA, not unrestricted Damerau-Levenshtein (2)"
        );
        assert_eq!(osa_distance(b"", b"ABC"), 3);
        assert_eq!(osa_distance(b"5551234567", b"5551234576"), 1);
        assert_eq!(osa_distance(b"SMITH", b"SMYTH"), 1);
        assert_eq!(osa_distance(b"SMITH", b"SMITHE"), 1);
        assert_eq!(osa_str("JOSÉ", "JOSE"), 1);
        let long = [b'A'; 200];
        assert_eq!(
            osa_distance(&long, b"A"),
            (METRIC_CHARS_MAX - 1) as u32,
            "inputs are capped"
        );
    }

    #[test]
    fn osa_within_agrees_with_the_distance() {
        let words: [&[u8]; 12] = [
            b"",
            b"A",
            b"AB",
            b"BA",
            b"ABC",
            b"ACB",
            b"ABD",
            b"ABCD",
            b"XBCD",
            b"BACD",
            b"ABDC",
            b"5551234567",
        ];
        for a in words {
            for b in words {
                for max in 0..3 {
                    assert_eq!(osa_within(a, b, max), osa_distance(a, b) <= max, "{a:?} {b:?} {max}");
                }
            }
        }
        assert!(osa_within_str("JOCN", "JOHN", 1));
        assert!(!osa_within_str("MARY", "MARIA", 1));
    }

    #[test]
    fn bigram_measures() {
        // NIGHT {NI,IG,GH,HT}, NACHT {NA,AC,CH,HT}: one shared of seven distinct.
        assert_eq!(bigram_jaccard(b"NIGHT", b"NACHT"), 1.0 / 7.0);
        assert_eq!(bigram_dice(b"NIGHT", b"NACHT"), 0.25);
        assert_eq!(bigram_jaccard(b"AA", b"AAA"), 1.0);
        assert_eq!(bigram_dice(b"A", b"A"), 1.0);
        assert_eq!(bigram_dice(b"A", b"B"), 0.0);
    }

    #[test]
    fn token_cosine_is_a_dot_product() {
        let t = |hash, weight| Token { hash, weight };
        let a = [t(1, 0.6), t(2, 0.8)];
        let b = [t(2, 0.6), t(3, 0.8)];
        assert!((token_cosine(&a, &b) - 0.48).abs() < 1e-6);
        assert!((token_cosine(&a, &a) - 1.0).abs() < 1e-6);
        assert_eq!(token_cosine(&a, &[]), 0.0);
    }
}
