//! `MiniLm` against the reference implementation: the vectors of a few sentences, computed once by
//! sentence-transformers (tests/data/make_minilm_reference.py) and committed, must be reproduced to a cosine
//! of at least 0.999, alone and in batches. Plus what the embedder promises beyond the numbers: errors for
//! what it cannot read, and inference off the async runtime's threads. No database needed.

use cache_runtime::semantic::{cosine, Embedder, MiniLm};
use cache_runtime::CacheError;
use integration_tests::model::{minilm, model_dir};
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Deserialize)]
struct Reference {
    weights_sha256: String,
    sentences: Vec<Sentence>,
}

#[derive(Deserialize)]
struct Sentence {
    text: String,
    embedding: Vec<f32>,
}

fn reference() -> Reference {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/minilm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference file")).expect("reference JSON")
}

#[tokio::test]
async fn vectors_match_sentence_transformers() -> TestResult {
    let Some(model) = minilm("vectors_match_sentence_transformers") else { return Ok(()) };
    let reference = reference();
    assert!(model.model_id().starts_with("all-MiniLM-L6-v2@"), "{}", model.model_id());
    assert!(reference.weights_sha256.starts_with("53aa5117"), "the reference was made with other weights");
    assert_eq!(model.dimensions(), 384);

    let texts: Vec<&str> = reference.sentences.iter().map(|s| s.text.as_str()).collect();
    let batch = model.embed(&texts).await?;
    assert_eq!(batch.len(), texts.len());
    for (sentence, vector) in reference.sentences.iter().zip(&batch) {
        let alone = model.embed(&[sentence.text.as_str()]).await?.remove(0);
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{:?}: norm {norm}", sentence.text);
        let to_reference = cosine(vector, &sentence.embedding);
        assert!(to_reference >= 0.999, "{:?}: cosine {to_reference} to the reference", sentence.text);
        // Packed batches give every text the vector it gets alone.
        let batch_vs_alone = cosine(vector, &alone);
        assert!(batch_vs_alone >= 0.99999, "{:?}: batch vs alone {batch_vs_alone}", sentence.text);
    }
    Ok(())
}

#[tokio::test]
async fn meaning_decides_the_score() -> TestResult {
    let Some(model) = minilm("meaning_decides_the_score") else { return Ok(()) };
    let v = model
        .embed(&[
            "How do I reset my password?",
            "I forgot my password, how can I change it?",
            "What is the capital of France?",
        ])
        .await?;
    let paraphrase = cosine(&v[0], &v[1]);
    let unrelated = cosine(&v[0], &v[2]);
    assert!(paraphrase > 0.6 && unrelated < 0.2 && paraphrase > unrelated + 0.4, "{paraphrase} vs {unrelated}");
    Ok(())
}

#[tokio::test]
async fn a_text_longer_than_the_window_is_an_error_not_truncated() -> TestResult {
    let Some(model) = minilm("a_text_longer_than_the_window_is_an_error_not_truncated") else { return Ok(()) };
    assert_eq!(model.max_tokens(), 256);
    let long = "word ".repeat(300);
    let err = model.embed(&["fine", long.as_str()]).await.expect_err("300 words do not fit in 256 tokens");
    assert!(matches!(&err, CacheError::Embedding { reason } if reason.contains("256")), "{err}");
    // The embedder serves the next caller as before.
    assert_eq!(model.embed(&["fine"]).await?.len(), 1);
    assert_eq!(model.embed(&[]).await?.len(), 0);
    Ok(())
}

#[tokio::test]
async fn concurrent_callers_each_get_their_own_vectors() -> TestResult {
    let Some(model) = minilm("concurrent_callers_each_get_their_own_vectors") else { return Ok(()) };
    let texts: Vec<String> = (0..40).map(|i| format!("question number {i} about topic {}", i % 7)).collect();
    let mut alone = Vec::new();
    for text in &texts {
        alone.push(model.embed(&[text.as_str()]).await?.remove(0));
    }
    // Queued at once, they are served in shared batches; each must still get its own vector.
    let tasks: Vec<_> = texts
        .iter()
        .cloned()
        .map(|text| {
            let model = model.clone();
            tokio::spawn(async move { model.embed(&[text.as_str()]).await })
        })
        .collect();
    for (task, expected) in tasks.into_iter().zip(&alone) {
        let got = task.await??.remove(0);
        assert!(cosine(&got, expected) >= 0.99999);
    }
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn inference_does_not_run_on_the_async_thread() -> TestResult {
    let Some(model) = minilm("inference_does_not_run_on_the_async_thread") else { return Ok(()) };
    // On a single-threaded runtime, a sibling future gets to run before the embedding completes only if
    // the embedding waits for another thread instead of computing inside `poll`.
    let sibling_ran = Arc::new(AtomicBool::new(false));
    let ran_first = {
        let flag = sibling_ran.clone();
        let embed = async {
            model.embed(&["a question to embed"]).await?;
            Ok::<bool, CacheError>(flag.load(Ordering::SeqCst))
        };
        let sibling = async { sibling_ran.store(true, Ordering::SeqCst) };
        tokio::join!(embed, sibling).0?
    };
    assert!(ran_first, "the embedding completed inside its first poll, blocking the runtime");
    Ok(())
}

#[test]
fn a_missing_or_broken_model_directory_is_a_typed_error() -> TestResult {
    let scratch = std::env::temp_dir().join(format!("pg-cached-model-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("1_Pooling"))?;
    let expect_error = |what: &str| {
        let err = MiniLm::from_dir(&scratch).expect_err(what);
        assert!(matches!(&err, CacheError::Embedding { .. }), "{what}: {err}");
        err.to_string()
    };
    assert!(expect_error("empty directory").contains("config.json"));

    let installed = model_dir();
    if installed.join("tokenizer.json").exists() {
        for file in ["config.json", "tokenizer.json"] {
            std::fs::copy(installed.join(file), scratch.join(file))?;
        }
        assert!(expect_error("no weights").contains("model.safetensors"));
        std::fs::write(scratch.join("model.safetensors"), b"not a safetensors file")?;
        assert!(expect_error("garbage weights").contains("model.safetensors"));
        std::fs::write(scratch.join("1_Pooling/config.json"), br#"{"pooling_mode_cls_token": true}"#)?;
        assert!(expect_error("CLS pooling").contains("mean pooling"));
        std::fs::write(scratch.join("config.json"), br#"{"hidden_act": "relu"}"#)?;
        assert!(expect_error("not a BERT config").contains("config.json"));
    }
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}
