//! Small copies of vectors, for a first pass over a scope that reads an eighth of the bytes.
//!
//! A scan of 100,000 vectors of 384 f32 is 154 MB of memory, more than any cache holds: it runs at the
//! speed of memory, not of arithmetic. Each stored vector also has an int4 copy (`x ≈ s · v`, `v` in
//! -7..=7, 19 MB at that size, which a server's last-level cache can hold), the query an int8 one, and the
//! first pass scores those. It is not an approximation of the search: with each score comes a bound on its
//! error, so a vector is dropped only when even its best possible exact score could not make the result,
//! and the few left are scored exactly (`vectors.rs`).
//!
//! **The bound.** With `x = a + e` (a the stored copy) and `y = b + f` (b the query's), `x·y - a·b` is
//! `a·f + e·y`, at most `|a|₂·|f|₂ + |e|₂·|y|₂` in absolute value (Cauchy-Schwarz). Each copy keeps the
//! norms it needs, computed exactly when it is made, so the bound is the one of these two vectors, not of
//! the worst case: for the model's vectors about 0.1 at 384 dimensions, where the worst case of 4-bit
//! rounding would be several times that. Since the bound uses the actual error, a copy's scale can be
//! chosen for the smallest error rather than to fit the largest value: [`pack`] tries a few and lets the
//! largest values clip when that leaves less error overall.

/// The query's int8 copy: `values[i] · scale ≈ x[i]`, with the norms the bound needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Quantized {
    pub(crate) values: Vec<i8>,
    pub(crate) scale: f32,
    /// `|x|₂` of the original, rounded up.
    pub(crate) norm: f32,
    /// `|x - scale · values|₂`, rounded up.
    pub(crate) residual: f32,
}

/// The int8 copy of `x`: scaled so that its largest component is ±127, each rounded to the nearest.
pub(crate) fn quantize(x: &[f32]) -> Quantized {
    let scale = fitting_scale(x, 127);
    let values = round_to(x, scale, 127);
    Quantized { norm: norm_up(x.iter().map(|&v| f64::from(v))), residual: error_norm(x, &values, scale), values, scale }
}

/// A stored vector's int4 copy, packed for `cache_kernels::dot_i8_i4_rows`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Packed {
    pub(crate) bytes: Vec<u8>,
    pub(crate) bounds: Bounds,
}

/// What the error bound needs of a stored copy: its scale and two norms.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Bounds {
    pub(crate) scale: f32,
    /// `|scale · values|₂`, rounded up.
    pub(crate) norm: f32,
    /// `|x - scale · values|₂`, rounded up.
    pub(crate) residual: f32,
}

/// Scales tried by [`pack`], as fractions of the one that fits the largest value: for a vector of the
/// model's, a value of a few standard deviations sets that one, and most values would use few of the
/// sixteen levels.
const SCALE_FRACTIONS: [f32; 6] = [1.0, 0.85, 0.7, 0.6, 0.5, 0.4];

/// The int4 copy of `x` with the least error of the scales in [`SCALE_FRACTIONS`].
pub(crate) fn pack(x: &[f32]) -> Packed {
    let fits = fitting_scale(x, 7);
    // The scale is chosen on an f32 sum of squared errors (cheap: loading a scope packs every vector); the
    // bound's residual is then computed exactly for the chosen one.
    let squared_error = |scale: f32| -> f32 {
        let limit = 7.0;
        x.iter().map(|&v| v - nearest((v / scale).clamp(-limit, limit)) * scale).map(|e| e * e).sum()
    };
    let scale = SCALE_FRACTIONS
        .iter()
        .map(|fraction| fits * fraction)
        .filter(|&scale| scale > 0.0)
        .map(|scale| (scale, squared_error(scale)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0.0, |(scale, _)| scale);
    let values = round_to(x, scale, 7);
    let residual = error_norm(x, &values, scale);
    let norm = norm_up(values.iter().map(|&v| f64::from(v) * f64::from(scale)));
    let mut bytes = Vec::with_capacity(cache_kernels::packed_i4_len(x.len()));
    if cache_kernels::pack_i4(&values, &mut bytes).is_ok() {
        return Packed { bytes, bounds: Bounds { scale, norm, residual } };
    }
    // Not reached (`round_to` keeps every value in -7..=7); were it, an all-zero copy whose error is the
    // whole vector keeps the bound true, and the vector always goes on to the exact pass.
    let zero = vec![0; x.len()];
    let mut bytes = Vec::new();
    let _ = cache_kernels::pack_i4(&zero, &mut bytes);
    Packed { bytes, bounds: Bounds { scale: 0.0, norm: 0.0, residual: norm_up(x.iter().map(|&v| f64::from(v))) } }
}

/// The scale that maps `x`'s largest absolute value to `limit`; 0 for a zero vector or one with an infinite
/// value (whose copy is then all zeros).
fn fitting_scale(x: &[f32], limit: i8) -> f32 {
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if max == 0.0 || !max.is_finite() {
        0.0
    } else {
        max / f32::from(limit)
    }
}

/// `x / scale`, each rounded to the nearest and clamped to `-limit..=limit` (zeros for a zero scale).
fn round_to(x: &[f32], scale: f32, limit: i8) -> Vec<i8> {
    if scale == 0.0 {
        return vec![0; x.len()];
    }
    let limit = f32::from(limit);
    x.iter().map(|v| nearest((v / scale).clamp(-limit, limit)) as i8).collect()
}

/// `t` rounded to the nearest integer (ties to even), for `|t|` below 2²²: adding and taking off 1.5·2²³
/// leaves no fraction bits. `f32::round` is a call into the C library on the baseline x86-64 target, which
/// no loop vectorizes, and packing a scope of 100,000 vectors rounds 230 million values.
fn nearest(t: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (t + SHIFT) - SHIFT
}

/// `|x - scale · values|₂`, in f64 and rounded up.
fn error_norm(x: &[f32], values: &[i8], scale: f32) -> f32 {
    norm_up(x.iter().zip(values).map(|(&v, &q)| f64::from(v) - f64::from(q) * f64::from(scale)))
}

/// The Euclidean norm of `values`, summed in f64, as an f32 no smaller than it.
fn norm_up(values: impl Iterator<Item = f64>) -> f32 {
    let norm = values.map(|v| v * v).sum::<f64>().sqrt();
    // The f64 sum's own rounding is far below one part in a million; the f32 rounding may go down by half
    // an ulp: both are covered.
    (norm * (1.0 + 1e-6)) as f32 + f32::MIN_POSITIVE
}

/// The score of a query's int8 copy and a stored int4 copy, given the dot product of their values
/// (`cache_kernels::dot_i8_i4_rows`), and how far the exact dot product of the originals can be from it
/// (see the module docs). A small relative term covers the f32 arithmetic of the score itself and of the
/// exact pass's dot product.
pub(crate) fn score_and_bound(query: &Quantized, values_dot: i32, stored: Bounds) -> (f32, f32) {
    let approx = query.scale * stored.scale * values_dot as f32;
    let bound = stored.norm * query.residual + stored.residual * query.norm;
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

    /// The first pass's score and bound of `x` (the query) against `y` (stored), and their exact dot product.
    fn first_pass(x: &[f32], y: &[f32]) -> (f64, f32, f32) {
        let exact: f64 = x.iter().zip(y).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
        let (query, stored) = (quantize(x), pack(y));
        let mut out = [0];
        cache_kernels::dot_i8_i4_rows(&query.values, &stored.bytes, &mut out).expect("one row of the query's length");
        let (approx, bound) = score_and_bound(&query, out[0], stored.bounds);
        (exact, approx, bound)
    }

    #[test]
    fn the_bound_always_holds() {
        let mut widest = 0.0f32;
        for seed in 0..500 {
            let dims = [3, 16, 384, 1536][seed as usize % 4];
            let (x, y) = (unit(seed, dims), unit(seed + 10_000, dims));
            // Near vectors too: the score that matters is the high one. And a vector with one large value,
            // which the best scale clips.
            let near: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + 0.1 * b).collect();
            let mut spiky = y.clone();
            spiky[seed as usize % dims] = 3.0;
            for other in [&y, &near, &spiky] {
                let (exact, approx, bound) = first_pass(&x, other);
                assert!((exact - f64::from(approx)).abs() <= f64::from(bound), "seed {seed}: {exact} {approx} {bound}");
                if dims == 384 && other == &y {
                    widest = widest.max(bound);
                }
            }
        }
        assert!(widest < 0.2, "a bound this loose would prune little at 384 dimensions: {widest}");
    }

    #[test]
    fn the_chosen_scale_leaves_no_more_error_than_fitting_the_largest_value() {
        for seed in 0..50 {
            let x = unit(seed, 384);
            let stored = pack(&x);
            let fits = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 7.0;
            assert!(stored.bounds.residual <= error_norm(&x, &round_to(&x, fits, 7), fits));
            assert!(
                stored.bounds.residual < 0.2 && stored.bounds.norm <= 1.0 + stored.bounds.residual,
                "{:?}",
                stored.bounds
            );
        }
    }

    #[test]
    fn zero_and_tiny_vectors_quantize_without_dividing_by_zero() {
        let zero = quantize(&[0.0; 8]);
        assert_eq!((zero.values, zero.scale), (vec![0; 8], 0.0));
        let packed = pack(&[0.0; 8]);
        assert_eq!(packed.bounds.scale, 0.0);
        assert!(packed.bounds.residual < 1e-30);
        let q = quantize(&[1.0, -1.0, 0.5, 0.0]);
        assert_eq!(q.values, vec![127, -127, 64, 0]);
        let (exact, approx, bound) = first_pass(&[1.0, -1.0, 0.5, 0.0], &[0.0; 4]);
        assert_eq!((exact, approx), (0.0, 0.0));
        assert!(bound < 1e-4);
    }
}
