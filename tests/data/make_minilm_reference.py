"""Writes minilm_reference.json: all-MiniLM-L6-v2 embeddings of a few sentences computed by the reference
implementation (sentence-transformers on PyTorch), which tests/tests/semantic_model.rs compares
cache_runtime::semantic::MiniLm against. Run once, by hand, after scripts/fetch-model:

    pip install --target target/pyref sentence-transformers
    PYTHONPATH=target/pyref python3 tests/data/make_minilm_reference.py target/models/all-MiniLM-L6-v2
"""

import hashlib
import json
import sys
from pathlib import Path

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

# Short and long, questions and statements, digits, punctuation, accents (the tokenizer strips them),
# Chinese characters (split one per token), an emoji (unknown to the vocabulary), and the empty text.
SENTENCES = [
    "How do I reset my password?",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "PostgreSQL's VACUUM reclaims storage occupied by dead tuples; run it after 1,000,000 updates!",
    "Café déjà vu: naïve résumé façade.",
    "机器学习 is machine learning 🙂",
    "The quick brown fox jumps over the lazy dog. " * 8,
    "",
]

model_dir = Path(sys.argv[1])
model = SentenceTransformer(str(model_dir), device="cpu")
vectors = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
weights = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
out = {
    "model": "all-MiniLM-L6-v2",
    "weights_sha256": weights,
    "produced_by": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, "
    f"max_seq_length {model.max_seq_length}, normalize_embeddings=True",
    "sentences": [
        {"text": text, "embedding": [float(f"{x:.7g}") for x in vec]} for text, vec in zip(SENTENCES, vectors)
    ],
}
path = Path(__file__).with_name("minilm_reference.json")
# One line per sentence: readable diffs if it is ever regenerated.
lines = [json.dumps(s, ensure_ascii=False) for s in out.pop("sentences")]
head = json.dumps(out, indent=1, ensure_ascii=False)[:-2]
path.write_text(head + ',\n "sentences": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n")
print(f"wrote {path} ({len(SENTENCES)} sentences)")
