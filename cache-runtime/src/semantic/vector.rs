//! Vector arithmetic that every embedder and the lookup share: unit length, cosine, and the checks an
//! embedder's answer must pass before anything compares it (a vector of the wrong length or with a NaN
//! would otherwise score as a miss, or worse, as a hit).

use crate::CacheError;

/// Scales `v` to unit length in place. A zero vector is left as it is (it has no direction); the caller
/// that needs a direction checks with [`check_vectors`].
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The cosine similarity of two unit vectors: their dot product, in `[-1, 1]` up to rounding. Vectors of
/// different lengths are not comparable and score `-1`, the lowest possible score.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return -1.0;
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Checks an embedder's answer for `texts` texts of `dimensions` numbers each, every number finite and no
/// vector zero, and makes every vector unit length: the [`Embedder`](super::Embedder) contract, enforced
/// for embedders that do not control their own output (an HTTP endpoint).
pub fn check_vectors(mut vectors: Vec<Vec<f32>>, texts: usize, dimensions: usize) -> Result<Vec<Vec<f32>>, CacheError> {
    let fail = |reason: String| Err(CacheError::Embedding { reason });
    if vectors.len() != texts {
        return fail(format!("{} vectors for {texts} texts", vectors.len()));
    }
    for (i, v) in vectors.iter_mut().enumerate() {
        if v.len() != dimensions {
            return fail(format!("vector {i} has {} dimensions, expected {dimensions}", v.len()));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return fail(format!("vector {i} holds a NaN or an infinity"));
        }
        if v.iter().all(|&x| x == 0.0) {
            return fail(format!("vector {i} is all zeros"));
        }
        normalize(v);
    }
    Ok(vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_gives_unit_length_and_keeps_direction() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut zero = vec![0.0; 3];
        normalize(&mut zero);
        assert_eq!(zero, vec![0.0; 3]);
    }

    #[test]
    fn cosine_of_unit_vectors() {
        assert!((cosine(&[0.6, 0.8], &[0.6, 0.8]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-6);
        assert_eq!(cosine(&[1.0, 0.0], &[1.0, 0.0, 0.0]), -1.0);
    }

    #[test]
    fn check_vectors_rejects_what_cannot_be_compared() {
        let ok = check_vectors(vec![vec![2.0, 0.0], vec![0.0, -5.0]], 2, 2).unwrap();
        assert_eq!(ok, vec![vec![1.0, 0.0], vec![0.0, -1.0]]);
        for (vectors, texts, why) in [
            (vec![vec![1.0, 0.0]], 2, "1 vectors for 2 texts"),
            (vec![vec![1.0]], 1, "1 dimensions, expected 2"),
            (vec![vec![f32::NAN, 1.0]], 1, "NaN"),
            (vec![vec![0.0, 0.0]], 1, "all zeros"),
        ] {
            let err = check_vectors(vectors, texts, 2).unwrap_err();
            assert!(matches!(&err, CacheError::Embedding { reason } if reason.contains(why)), "{err}");
        }
    }
}
