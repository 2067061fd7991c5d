//! What tokens cost, per model: a [`PriceTable`] that the user supplies (prices change, and differ by
//! provider and contract), which turns a generation's [`TokenUsage`] into the micro-USD that
//! `cache_runtime::usage` records.
//!
//! Prices are in micro-USD (millionths of a dollar) per million tokens, input and output apart. A table comes
//! from a JSON file (`LLM_PRICES`, shaped like `examples/prices.example.json`) or from code:
//!
//! ```
//! use examples::prices::PriceTable;
//! use examples::generate::TokenUsage;
//! let prices = PriceTable::new().with("gpt-4o-mini", 150_000, 600_000);
//! let usage = TokenUsage { input_tokens: 2_000, output_tokens: 500, estimated: false };
//! assert_eq!(prices.cost("gpt-4o-mini", &usage), Some(600)); // 300 + 300 micro-USD
//! assert_eq!(prices.cost("unknown-model", &usage), None);
//! ```

use crate::generate::TokenUsage;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The example table shipped with the demo (`examples/prices.example.json`). Its prices are examples, not
/// quotes: supply your own with `LLM_PRICES`.
pub const EXAMPLE_PRICES_JSON: &str = include_str!("../prices.example.json");

/// One model's prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ModelPrice {
    /// Micro-USD per million input (prompt) tokens.
    pub input_micros_per_mtok: u64,
    /// Micro-USD per million output (completion) tokens.
    pub output_micros_per_mtok: u64,
}

/// Prices per model name (as [`Answer::model`](crate::generate::Answer::model) reports it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PriceTable {
    models: BTreeMap<String, ModelPrice>,
}

/// A price table that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    /// The file could not be read.
    #[error("cannot read the price table {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The JSON is not a price table.
    #[error("not a price table ({{\"models\": {{\"<model>\": {{\"input_micros_per_mtok\": .., \"output_micros_per_mtok\": ..}}}}}}): {0}")]
    Parse(#[source] serde_json::Error),
}

impl PriceTable {
    /// An empty table: every cost is unknown.
    pub fn new() -> PriceTable {
        PriceTable::default()
    }

    /// Adds (or replaces) `model`'s prices, in micro-USD per million tokens.
    #[must_use]
    pub fn with(mut self, model: impl Into<String>, input_micros_per_mtok: u64, output_micros_per_mtok: u64) -> Self {
        self.models.insert(model.into(), ModelPrice { input_micros_per_mtok, output_micros_per_mtok });
        self
    }

    /// A table from JSON shaped like `examples/prices.example.json` (other top-level keys are ignored).
    ///
    /// # Errors
    /// [`PriceError::Parse`] when it is not such a table.
    pub fn from_json(json: &str) -> Result<PriceTable, PriceError> {
        serde_json::from_str(json).map_err(PriceError::Parse)
    }

    /// The table in the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read, or is not a price table.
    pub fn from_file(path: &Path) -> Result<PriceTable, PriceError> {
        let json = std::fs::read_to_string(path)
            .map_err(|source| PriceError::Read { path: path.display().to_string(), source })?;
        PriceTable::from_json(&json)
    }

    /// The table in the file named by `LLM_PRICES`, or the example table when it is unset (labelled so by the
    /// demo).
    ///
    /// # Errors
    /// `LLM_PRICES` names a file that cannot be read or is not a price table.
    pub fn from_env() -> Result<(PriceTable, bool), PriceError> {
        match std::env::var_os("LLM_PRICES").filter(|v| !v.is_empty()) {
            Some(path) => Ok((PriceTable::from_file(Path::new(&path))?, false)),
            None => Ok((PriceTable::example(), true)),
        }
    }

    /// The example table ([`EXAMPLE_PRICES_JSON`]).
    pub fn example() -> PriceTable {
        // The file is part of this crate and checked by a unit test; an unreadable one would give no prices.
        PriceTable::from_json(EXAMPLE_PRICES_JSON).unwrap_or_default()
    }

    /// `model`'s prices, if the table has them.
    pub fn price(&self, model: &str) -> Option<ModelPrice> {
        self.models.get(model).copied()
    }

    /// What `usage` cost on `model`, in micro-USD (rounded to the nearest); `None` for a model without prices.
    pub fn cost(&self, model: &str, usage: &TokenUsage) -> Option<u64> {
        let price = self.price(model)?;
        let part = |tokens: u64, price: u64| u128::from(tokens) * u128::from(price); // < 2^128: no overflow
        let micros = part(usage.input_tokens, price.input_micros_per_mtok)
            .saturating_add(part(usage.output_tokens, price.output_micros_per_mtok))
            .saturating_add(500_000);
        Some(u64::try_from(micros / 1_000_000).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_table_parses_and_prices_the_stand_in() {
        let table = PriceTable::from_json(EXAMPLE_PRICES_JSON).expect("the example file is a price table");
        assert_eq!(table, PriceTable::example());
        assert!(table.price(crate::generate::LOCAL_MODEL).is_some(), "the demo can show dollars");
        assert!(table.price(crate::generate::DEFAULT_LLM_MODEL).is_some());
    }

    #[test]
    fn costs_round_to_the_nearest_micro_dollar_and_do_not_overflow() {
        let table = PriceTable::new().with("m", 150_000, 600_000);
        let usage = |input, output| TokenUsage { input_tokens: input, output_tokens: output, estimated: false };
        assert_eq!(table.cost("m", &usage(1, 0)), Some(0), "0.15 micro-USD");
        assert_eq!(table.cost("m", &usage(4, 0)), Some(1), "0.6 micro-USD");
        assert_eq!(table.cost("m", &usage(1_000_000, 1_000_000)), Some(750_000));
        let dear = PriceTable::new().with("dear", u64::MAX, u64::MAX);
        assert_eq!(dear.cost("dear", &usage(u64::MAX, u64::MAX)), Some(u64::MAX), "saturates");
        assert!(matches!(PriceTable::from_json("{\"models\": 3}"), Err(PriceError::Parse(_))));
    }
}
