//! `OpenAiEmbedder` against a local HTTP server with canned answers: the request it sends, how it checks
//! and orders what comes back, and a typed error for each way an endpoint can fail. No network, no database.

use cache_runtime::semantic::{Embedder, OpenAiEmbedder, OpenAiEmbedderConfig};
use cache_runtime::CacheError;
use integration_tests::canned_http::{serve, Reply};
use std::collections::HashMap;
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn config(base_url: &str, dimensions: Option<usize>) -> OpenAiEmbedderConfig {
    let mut config = OpenAiEmbedderConfig::new(base_url);
    config.api_key = Some("secret-key".into());
    config.model = "test-embedder".into();
    config.dimensions = dimensions;
    config.timeout = Duration::from_secs(5);
    config
}

fn ok(body: &str) -> Reply {
    Reply::Json(200, body.to_owned())
}

#[tokio::test]
async fn sends_model_and_inputs_and_returns_unit_vectors_in_input_order() -> TestResult {
    // Out of order, not normalized: the client puts them in place and scales them.
    let (url, server) = serve(vec![ok(r#"{"object":"list","data":[
        {"object":"embedding","index":1,"embedding":[0.0,3.0,4.0]},
        {"object":"embedding","index":0,"embedding":[2.0,0.0,0.0]}],"model":"test-embedder"}"#)])
    .await?;
    let embedder = OpenAiEmbedder::new(config(&url, Some(3)))?;
    let vectors = embedder.embed(&["first text", "second \"text\""]).await?;
    assert_eq!(vectors, vec![vec![1.0, 0.0, 0.0], vec![0.0, 0.6, 0.8]]);
    assert_eq!(embedder.dimensions(), 3);
    assert_eq!(embedder.model_id(), format!("test-embedder/3@{}", url.trim_start_matches("http://")));

    let requests = server.await?;
    let request = &requests[0];
    assert!(request.starts_with("POST /v1/embeddings HTTP/1.1"), "{request}");
    assert!(request.to_lowercase().contains("authorization: bearer secret-key"), "{request}");
    let body: serde_json::Value = serde_json::from_str(request.split("\r\n\r\n").nth(1).unwrap_or(""))?;
    assert_eq!(body, serde_json::json!({"model": "test-embedder", "input": ["first text", "second \"text\""]}));
    Ok(())
}

#[tokio::test]
async fn connect_learns_the_dimensions_from_the_endpoint() -> TestResult {
    let answer = r#"{"data":[{"index":0,"embedding":[0.5,0.5]}]}"#;
    let (url, _server) = serve(vec![ok(answer), ok(answer)]).await?;
    let err = OpenAiEmbedder::new(config(&url, None)).expect_err("no dimensions given");
    assert!(matches!(&err, CacheError::Config(m) if m.contains("EMBEDDINGS_DIMENSIONS")), "{err}");

    let embedder = OpenAiEmbedder::connect(config(&url, None)).await?;
    assert_eq!(embedder.dimensions(), 2);
    let v = embedder.embed(&["x"]).await?.remove(0);
    assert!((v[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    assert_eq!(embedder.embed(&[]).await?.len(), 0, "no request for no texts");
    Ok(())
}

#[tokio::test]
async fn every_unusable_answer_is_an_embedding_error() -> TestResult {
    let cases = [
        (Reply::Json(500, r#"{"error":{"message":"overloaded"}}"#.into()), "HTTP 500"),
        (Reply::Json(401, r#"{"error":"bad key"}"#.into()), "HTTP 401"),
        (ok("not json"), "not an embeddings response"),
        (ok(r#"{"data":[{"index":0,"embedding":"AAAA"}]}"#), "not an embeddings response"),
        (ok(r#"{"data":[{"index":0,"embedding":[1.0,0.0]}]}"#), "1 vectors for 2 texts"),
        (ok(r#"{"data":[{"index":0,"embedding":[1.0,0.0]},{"index":0,"embedding":[1.0,0.0]}]}"#), "repeated"),
        (
            ok(r#"{"data":[{"index":0,"embedding":[1.0]},{"index":1,"embedding":[1.0,0.0]}]}"#),
            "1 dimensions, expected 2",
        ),
        (ok(r#"{"data":[{"index":0,"embedding":[0.0,0.0]},{"index":1,"embedding":[1.0,0.0]}]}"#), "all zeros"),
    ];
    for (reply, expected) in cases {
        let (url, _server) = serve(vec![reply]).await?;
        let embedder = OpenAiEmbedder::new(config(&url, Some(2)))?;
        let err = embedder.embed(&["a", "b"]).await.expect_err(expected);
        assert!(matches!(&err, CacheError::Embedding { reason } if reason.contains(expected)), "{expected}: {err}");
    }
    Ok(())
}

#[tokio::test]
async fn a_silent_endpoint_times_out_and_a_closed_port_fails() -> TestResult {
    let (url, _server) = serve(vec![Reply::Silence]).await?;
    let mut slow = config(&url, Some(2));
    slow.timeout = Duration::from_millis(300);
    let err = OpenAiEmbedder::new(slow)?.embed(&["a"]).await.expect_err("nothing answers");
    assert!(matches!(err, CacheError::Timeout { operation: "embed", .. }), "{err}");

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let err = OpenAiEmbedder::new(config(&format!("http://{closed}/v1"), Some(2)))?
        .embed(&["a"])
        .await
        .expect_err("nothing listens");
    assert!(matches!(&err, CacheError::Embedding { reason } if reason.contains("request failed")), "{err}");
    Ok(())
}

#[test]
fn configuration_comes_from_environment_variables() -> TestResult {
    let lookup = |vars: &[(&str, &str)]| {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name: &str| map.get(name).cloned()
    };
    assert_eq!(OpenAiEmbedderConfig::from_lookup(lookup(&[]))?, None);
    assert_eq!(OpenAiEmbedderConfig::from_lookup(lookup(&[("EMBEDDINGS_BASE_URL", " ")]))?, None);
    let config = OpenAiEmbedderConfig::from_lookup(lookup(&[
        ("EMBEDDINGS_BASE_URL", "https://embeddings.example.invalid/v1/"),
        ("EMBEDDINGS_API_KEY", "k"),
        ("EMBEDDINGS_MODEL", "m"),
        ("EMBEDDINGS_DIMENSIONS", "768"),
        ("EMBEDDINGS_TIMEOUT_SECS", "2.5"),
        ("EMBEDDINGS_MODEL_ID", "m@v2"),
    ]))?
    .ok_or("configured")?;
    assert_eq!(
        (
            config.api_key.as_deref(),
            config.model.as_str(),
            config.dimensions,
            config.timeout,
            config.model_id.as_deref()
        ),
        (Some("k"), "m", Some(768), Duration::from_millis(2500), Some("m@v2"))
    );
    assert!(!format!("{config:?}").contains("\"k\""), "the key is redacted");
    let embedder = OpenAiEmbedder::new(config)?;
    assert_eq!(
        (embedder.endpoint(), embedder.model_id()),
        ("https://embeddings.example.invalid/v1/embeddings", "m@v2")
    );

    for (name, value) in
        [("EMBEDDINGS_DIMENSIONS", "0"), ("EMBEDDINGS_DIMENSIONS", "many"), ("EMBEDDINGS_TIMEOUT_SECS", "-1")]
    {
        let err = OpenAiEmbedderConfig::from_lookup(lookup(&[
            ("EMBEDDINGS_BASE_URL", "http://127.0.0.1:1/v1"),
            (name, value),
        ]))
        .expect_err(value);
        assert!(matches!(&err, CacheError::Config(m) if m.contains(name)), "{err}");
    }
    let err =
        OpenAiEmbedder::new(OpenAiEmbedderConfig { dimensions: Some(2), ..OpenAiEmbedderConfig::new("ftp://x/v1") })
            .expect_err("not http");
    assert!(matches!(err, CacheError::Config(_)), "{err}");
    Ok(())
}
