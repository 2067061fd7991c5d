//! [`Usage`]: what a computation consumed from a metered service (tokens in and out of an LLM, and what they
//! cost), reported by its memoized body with [`usage`](crate::usage) and stored with the entry, so that
//! every hit can count what it saved. A leaf module: the engine gathers it (`memo/scope.rs`), the layers
//! store and return it (`entry.rs`, `server/`), `observe/` counts it.

use serde::{Deserialize, Serialize};
use std::ops::{Add, AddAssign};

/// What one computation consumed: tokens and money. Reported from inside a memoized body with
/// [`usage`](crate::usage), summed over every report, stored with the entry, and counted as saved by each
/// hit of that entry ([`ProcessCounts::tokens_saved`](crate::ProcessCounts::tokens_saved),
/// [`ProcessCounts::cost_saved`](crate::ProcessCounts::cost_saved)).
///
/// Sums saturate at `u64::MAX` instead of overflowing. The store keeps each field as a PostgreSQL `bigint`:
/// a field above `i64::MAX` is stored as `i64::MAX`.
///
/// ```
/// use cache_runtime::Usage;
/// let first = Usage { input_tokens: 1_200, output_tokens: 300, cost_micros_usd: 2_100 };
/// let mut total = first + Usage { output_tokens: 50, ..Usage::default() };
/// total += Usage { cost_micros_usd: 400, ..Usage::default() };
/// assert_eq!(total, Usage { input_tokens: 1_200, output_tokens: 350, cost_micros_usd: 2_500 });
/// assert_eq!(total.tokens(), 1_550);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// Tokens sent to the model (the prompt).
    pub input_tokens: u64,
    /// Tokens the model generated (the completion).
    pub output_tokens: u64,
    /// What the call cost, in millionths of a US dollar (1 000 000 = $1).
    pub cost_micros_usd: u64,
}

impl Usage {
    /// Input and output tokens together.
    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Whether nothing was consumed (every field 0).
    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }

    /// The cost in US dollars (for display: money is counted in [`cost_micros_usd`](Self::cost_micros_usd)).
    pub fn cost_usd(&self) -> f64 {
        self.cost_micros_usd as f64 / 1_000_000.0
    }

    /// From the three `bigint` columns of a row; NULL (an entry written before usage was recorded, or
    /// without any) and negative values (written by hand) count as 0.
    pub(crate) fn from_columns(input: Option<i64>, output: Option<i64>, cost: Option<i64>) -> Usage {
        let field = |v: Option<i64>| v.map_or(0, |v| v.max(0).unsigned_abs());
        Usage { input_tokens: field(input), output_tokens: field(output), cost_micros_usd: field(cost) }
    }

    /// The three columns to store: all NULL when nothing was reported, else each saturated at `i64::MAX`.
    pub(crate) fn to_columns(self) -> [Option<i64>; 3] {
        if self.is_zero() {
            return [None; 3];
        }
        let field = |v: u64| Some(i64::try_from(v).unwrap_or(i64::MAX));
        [field(self.input_tokens), field(self.output_tokens), field(self.cost_micros_usd)]
    }
}

impl Add for Usage {
    type Output = Usage;
    fn add(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
            cost_micros_usd: self.cost_micros_usd.saturating_add(other.cost_micros_usd),
        }
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        *self = *self + other;
    }
}

impl std::iter::Sum for Usage {
    fn sum<I: Iterator<Item = Usage>>(iter: I) -> Usage {
        iter.fold(Usage::default(), Add::add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_saturate_and_columns_round_trip() {
        let big = Usage { input_tokens: u64::MAX, output_tokens: 1, cost_micros_usd: 7 };
        let sum = big + Usage { input_tokens: 5, output_tokens: 2, cost_micros_usd: 3 };
        assert_eq!(sum, Usage { input_tokens: u64::MAX, output_tokens: 3, cost_micros_usd: 10 });
        assert_eq!(big.tokens(), u64::MAX);
        assert_eq!(sum.to_columns(), [Some(i64::MAX), Some(3), Some(10)]);
        assert_eq!(Usage::default().to_columns(), [None; 3], "nothing reported: NULL");
        let back = Usage::from_columns(Some(4), None, Some(-1));
        assert_eq!(back, Usage { input_tokens: 4, output_tokens: 0, cost_micros_usd: 0 });
        assert_eq!([Usage::default(), back, back].into_iter().sum::<Usage>().input_tokens, 8);
    }

    #[test]
    fn serde_fills_missing_fields_with_zero() {
        let usage: Usage = serde_json::from_str(r#"{"input_tokens": 3}"#).unwrap_or_default();
        assert_eq!(usage, Usage { input_tokens: 3, ..Usage::default() });
        let json = serde_json::to_string(&usage).unwrap_or_default();
        assert_eq!(json, r#"{"input_tokens":3,"output_tokens":0,"cost_micros_usd":0}"#);
    }
}
