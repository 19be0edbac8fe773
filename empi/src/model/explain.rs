//! The explanation of a score: every field's level and weight, the term-frequency adjustments, the
//! graph term, the prior and the total, printable for a person.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One field's part of a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldTerm {
    /// Field name.
    pub field: String,
    /// Level name ("null" when a side is missing).
    pub level: String,
    /// `log2(m/u)` of the level.
    pub weight: f64,
    /// Term-frequency adjustment (exact matches of adjusted fields only).
    pub tf_adjustment: f64,
}

/// The graph signal's part of a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphTerm {
    /// Cosine of the two records' embeddings.
    pub similarity: Option<f32>,
    /// Level name.
    pub level: String,
    /// Its weight.
    pub weight: f64,
}

/// Every term of a pair's score, for a steward or an auditor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// Per compared field.
    pub fields: Vec<FieldTerm>,
    /// The graph term, when the spec has a graph field.
    pub graph: Option<GraphTerm>,
    /// Prior weight.
    pub prior: f64,
    /// Total weight in bits.
    pub total: f64,
    /// Match probability of the total.
    pub probability: f64,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<14} {:<22} {:>8} {:>8}", "field", "level", "weight", "tf adj")?;
        for t in &self.fields {
            let tf = if t.tf_adjustment != 0.0 {
                format!("{:+8.2}", t.tf_adjustment)
            } else {
                String::new()
            };
            writeln!(f, "{:<14} {:<22} {:>+8.2} {:>8}", t.field, t.level, t.weight, tf)?;
        }
        if let Some(g) = &self.graph {
            let level = match g.similarity {
                Some(s) => format!("{} ({s:.2})", g.level),
                None => g.level.clone(),
            };
            writeln!(f, "{:<14} {:<22} {:>+8.2}", "graph", level, g.weight)?;
        }
        writeln!(f, "{:<14} {:<22} {:>+8.2}", "prior", "", self.prior)?;
        write!(
            f,
            "{:<14} {:<22} {:>+8.2}   match probability {:.6}",
            "total", "", self.total, self.probability
        )
    }
}
