//! `embedder_from_env` picks the endpoint when `EMBEDDINGS_BASE_URL` is set, else the local model, else
//! nothing; it never fails. One test function, alone in its binary, because the environment is process-wide.

use cache_runtime::semantic::embedder_from_env;
use integration_tests::canned_http::{serve, Reply};
use integration_tests::model::{minilm, model_dir};

#[tokio::test]
async fn the_environment_chooses_the_embedder() -> Result<(), Box<dyn std::error::Error>> {
    // Before PG_CACHED_MODEL_DIR is changed below.
    let installed = model_dir();
    let have_model = minilm("the_environment_chooses_the_embedder (local model)").is_some();
    let (url, _server) =
        serve(vec![Reply::Json(200, r#"{"data":[{"index":0,"embedding":[1.0,2.0,2.0]}]}"#.into())]).await?;
    std::env::set_var("EMBEDDINGS_BASE_URL", &url);
    std::env::set_var("EMBEDDINGS_MODEL", "remote-model");
    let embedder = embedder_from_env().await.ok_or("the endpoint answers")?;
    assert!(embedder.model_id().starts_with("remote-model/3@127.0.0.1:"), "{}", embedder.model_id());

    // Set but unusable: off, not an error.
    std::env::set_var("EMBEDDINGS_DIMENSIONS", "zero");
    assert!(embedder_from_env().await.is_none());
    std::env::remove_var("EMBEDDINGS_DIMENSIONS");
    std::env::remove_var("EMBEDDINGS_BASE_URL");

    std::env::set_var("PG_CACHED_MODEL_DIR", "/nonexistent/model");
    assert!(embedder_from_env().await.is_none(), "no model anywhere: semantic caching is off");

    if have_model {
        std::env::set_var("PG_CACHED_MODEL_DIR", installed);
        let local = embedder_from_env().await.ok_or("the local model loads")?;
        assert!(local.model_id().starts_with("all-MiniLM-L6-v2@"), "{}", local.model_id());
    }
    Ok(())
}
