//! The embedding model for the tests that need one: all-MiniLM-L6-v2 as `scripts/fetch-model` installs it,
//! loaded once per test binary. Without it those tests skip with a printed line, since the model comes from
//! a package registry a machine may not reach, unless `PG_CACHED_REQUIRE_MODEL=1` makes its absence a
//! failure (for runs that must prove the semantic tier, such as CI after `scripts/fetch-model`).

use cache_runtime::semantic::{MiniLm, MODEL_DIR_ENV};
use std::path::PathBuf;
use std::sync::OnceLock;

/// `$PG_CACHED_MODEL_DIR`, else `target/models/all-MiniLM-L6-v2` in this workspace.
pub fn model_dir() -> PathBuf {
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/models/all-MiniLM-L6-v2"),
    }
}

/// True when `PG_CACHED_REQUIRE_MODEL=1`.
pub fn model_required() -> bool {
    std::env::var("PG_CACHED_REQUIRE_MODEL").is_ok_and(|v| v == "1")
}

/// The shared model, or `None` after printing that `test` skips. Panics when the model is required
/// (`PG_CACHED_REQUIRE_MODEL=1`) and missing, and whenever an installed model fails to load.
pub fn minilm(test: &str) -> Option<MiniLm> {
    static MODEL: OnceLock<Option<MiniLm>> = OnceLock::new();
    let model = MODEL.get_or_init(|| {
        let dir = model_dir();
        if !dir.join("model.safetensors").exists() {
            return None;
        }
        match MiniLm::from_dir(&dir) {
            Ok(model) => Some(model),
            Err(e) => panic!("the model in {} does not load: {e}", dir.display()),
        }
    });
    if model.is_none() {
        let dir = model_dir();
        assert!(!model_required(), "PG_CACHED_REQUIRE_MODEL=1 but there is no model in {}", dir.display());
        println!("skipping {test}: no embedding model in {} (run scripts/fetch-model)", dir.display());
    }
    model.clone()
}
