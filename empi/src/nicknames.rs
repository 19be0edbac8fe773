//! The shipped table of English given-name variants (`data/nicknames.csv`), so that Bob and Robert, or
//! Peggy and Margaret, compare as the same name.
//!
//! Each formal name gets a small integer id; a name maps to the ids of every formal name it can stand for
//! (AL is Albert, Alan, Alfred and Alexander). Two names are nickname-equal when their id sets meet. The
//! table is parsed once, on first use. It is not a general synonym service and knows nothing of
//! non-English naming.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::normalize::fold_name;

/// The table text, compiled into the binary so a node never depends on a data file at run time.
pub const NICKNAMES_CSV: &str = include_str!("../data/nicknames.csv");

/// Most formal names one spelling may stand for; more are dropped (only very short nicknames get close).
pub const NICK_IDS_MAX: usize = 4;

/// Formal-name ids of one name, 0 marking an empty slot.
pub type NickIds = [u16; NICK_IDS_MAX];

/// The parsed table.
#[derive(Debug)]
pub struct NicknameTable {
    ids: HashMap<String, NickIds>,
    formal: Vec<String>,
    variants: Vec<Vec<String>>,
}

impl NicknameTable {
    /// Parses the CSV text: one formal name and its variants per line; `#` lines are comments.
    pub fn parse(text: &str) -> NicknameTable {
        let mut table = NicknameTable {
            ids: HashMap::new(),
            formal: Vec::new(),
            variants: Vec::new(),
        };
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut names = line.split(',').map(fold_name).filter(|n| !n.is_empty());
            let Some(formal) = names.next() else { continue };
            let Ok(id) = u16::try_from(table.formal.len() + 1) else {
                break;
            };
            let variants: Vec<String> = names.collect();
            for name in std::iter::once(&formal).chain(variants.iter()) {
                let slot = table.ids.entry(name.clone()).or_insert([0; NICK_IDS_MAX]);
                if let Some(free) = slot.iter_mut().find(|s| **s == 0 || **s == id) {
                    *free = id;
                }
            }
            table.formal.push(formal);
            table.variants.push(variants);
        }
        table
    }

    /// The formal-name ids a folded name can stand for (all zero when the name is not in the table).
    pub fn ids(&self, folded: &str) -> NickIds {
        self.ids.get(folded).copied().unwrap_or([0; NICK_IDS_MAX])
    }

    /// The formal names, in table order (id `i + 1` is `formal()[i]`).
    pub fn formal(&self) -> &[String] {
        &self.formal
    }

    /// The variants listed for the formal name with id `id` (empty for an unknown id).
    pub fn variants(&self, id: u16) -> &[String] {
        usize::from(id)
            .checked_sub(1)
            .and_then(|i| self.variants.get(i))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Number of distinct spellings in the table.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Whether two id sets share a formal name.
pub fn nick_equal(a: &NickIds, b: &NickIds) -> bool {
    a.iter().any(|&x| x != 0 && b.contains(&x))
}

/// The shipped table, parsed on first use.
pub fn table() -> &'static NicknameTable {
    static TABLE: OnceLock<NicknameTable> = OnceLock::new();
    TABLE.get_or_init(|| NicknameTable::parse(NICKNAMES_CSV))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) -> bool {
        let t = table();
        nick_equal(&t.ids(&fold_name(a)), &t.ids(&fold_name(b)))
    }

    #[test]
    fn shipped_table_links_common_variants() {
        assert!(table().len() > 500, "table has {} spellings", table().len());
        assert!(same("Bob", "Robert"));
        assert!(same("bill", "William"));
        assert!(same("Liz", "Elizabeth"));
        assert!(same("Kate", "Katherine"));
        assert!(same("Kate", "Catherine"));
        assert!(same("Jim", "James"));
        assert!(same("Peggy", "Margaret"));
        assert!(same("Bobby", "Bob"));
        assert!(!same("John", "Jacob"));
        assert!(!same("Christopher", "Christine"));
        assert!(
            !same("Zelda", "Zelda"),
            "names outside the table are not nickname-equal, only exact"
        );
    }

    #[test]
    fn parse_handles_comments_and_multiple_formal_names() {
        let t = NicknameTable::parse("# c\n\nalbert,al\nalan, Al ,allan\n");
        assert_eq!(t.formal(), &["ALBERT".to_string(), "ALAN".to_string()]);
        assert_eq!(t.ids("AL"), [1, 2, 0, 0]);
        assert_eq!(t.ids("ALLAN"), [2, 0, 0, 0]);
        assert_eq!(t.variants(2), &["AL".to_string(), "ALLAN".to_string()]);
        assert!(t.variants(0).is_empty());
        assert!(t.variants(9).is_empty());
    }
}
