//! Int8 copies of vectors, for a first pass over a scope that reads a quarter of the bytes.
//!
//! A scan of 100,000 vectors of 384 f32 is 154 MB of memory, more than any cache holds: it runs at the
//! speed of memory, not of arithmetic. Each vector also has an int8 copy (`x ≈ scale · q`, `q` in
//! -127..=127), and the first pass scores those. It is not an approximation of the search: with each
//! score comes a bound on its error, so a vector is dropped only when even its best possible exact score
//! could not make the result, and the few left are scored exactly (`vectors.rs`).

/// A vector's int8 copy: `values[i] · scale ≈ x[i]`, and the L1 norm of the original, for the error bound.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Quantized {
    pub(crate) values: Vec<i8>,
    pub(crate) scale: f32,
    pub(crate) l1: f32,
}

/// The int8 copy of `x`: scaled so that its largest component is ±127, each rounded to the nearest.
pub(crate) fn quantize(x: &[f32]) -> Quantized {
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let l1 = x.iter().map(|v| v.abs()).sum();
    if max == 0.0 || !max.is_finite() {
        return Quantized { values: vec![0; x.len()], scale: 0.0, l1 };
    }
    let scale = max / 127.0;
    // In range by construction (|v| <= max); the clamp only guards the rounding of the largest.
    let values = x.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8).collect();
    Quantized { values, scale, l1 }
}

/// The score of the int8 copies of a query and a stored vector, given the dot product of their values
/// (`cache_kernels::dot_i8_rows`), and how far the exact dot product of the originals can be from it.
///
/// With `x = s·q + e` (each `|e_i| <= s/2`) for both sides, `x·y - s_x s_y (q·r)` is
/// `e_x·y + s_x q·e_y`, at most `s_x/2 · |y|₁ + s_y/2 · |s_x q|₁` in absolute value; `|s_x q|₁` is at
/// most `|x|₁ + n · s_x/2`. A small relative term covers the rounding of the f32 arithmetic itself.
pub(crate) fn score_and_bound(query: &Quantized, values_dot: i32, stored_scale: f32, stored_l1: f32) -> (f32, f32) {
    let approx = query.scale * stored_scale * values_dot as f32;
    let query_l1 = query.l1 + query.values.len() as f32 * query.scale / 2.0;
    let bound = query.scale / 2.0 * stored_l1 + stored_scale / 2.0 * query_l1;
    (approx, bound + 1e-5 + approx.abs() * 1e-5)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random unit vector.
    fn unit(seed: u64, dims: usize) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..dims)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / norm).collect()
    }

    fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        let mut out = [0];
        cache_kernels::dot_i8_rows(a, b, &mut out).expect("one row of the query's length");
        out[0]
    }

    #[test]
    fn the_bound_always_holds() {
        for seed in 0..500 {
            let dims = [3, 16, 384, 1536][seed as usize % 4];
            let (x, y) = (unit(seed, dims), unit(seed + 10_000, dims));
            // Near vectors too: the score that matters is the high one.
            let near: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + 0.1 * b).collect();
            for other in [&y, &near] {
                let exact: f64 = x.iter().zip(other.iter()).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                let (q, r) = (quantize(&x), quantize(other));
                let (approx, bound) = score_and_bound(&q, dot_i8(&q.values, &r.values), r.scale, r.l1);
                assert!((exact - f64::from(approx)).abs() <= f64::from(bound), "seed {seed}: {exact} {approx} {bound}");
                assert!(bound < 0.05, "a bound this loose would prune nothing: {bound}");
            }
        }
    }

    #[test]
    fn zero_and_tiny_vectors_quantize_without_dividing_by_zero() {
        let zero = quantize(&[0.0; 8]);
        assert_eq!((zero.values, zero.scale), (vec![0; 8], 0.0));
        let q = quantize(&[1.0, -1.0, 0.5, 0.0]);
        assert_eq!(q.values, vec![127, -127, 64, 0]);
        assert_eq!(dot_i8(&q.values, &q.values), 127 * 127 * 2 + 64 * 64);
        let long: Vec<i8> = (0..37).map(|i| (i % 255 - 127) as i8).collect();
        let plain: i32 = long.iter().map(|&v| i32::from(v) * i32::from(v)).sum();
        assert_eq!(dot_i8(&long, &long), plain);
    }
}
