//! The numeric inner loops of pg-cached's embedding model: a dense layer's product `y = x·Wᵀ + b`, over
//! weights laid out once, when the model is loaded, in the order the product reads them
//! ([`PanelMatrix`]), and the GELU activation over a whole layer at once ([`gelu_in_place`]); and the
//! first pass of the semantic search, dot products of one int8 query with many stored vectors packed in
//! int4 ([`dot_i8_i4_rows`]).
//!
//! A general matrix product (`matrixmultiply`) copies its right operand into blocks on every call. For a
//! sentence-embedding model's shape (a short question is a dozen rows against 384-1536 columns of weights)
//! that copy of every weight on every call was a third of the time to embed a question. Here the copy is
//! made once: [`PanelMatrix`] cuts the weights into panels of [`PANEL`] output columns, each stored input
//! by input, so a product streams every weight once, in memory order, and keeps a few rows of `x`
//! against one panel in registers. `pulp` picks the widest SIMD instructions the CPU has at run time
//! (AVX2 and FMA on x86-64, NEON on arm64), so the crate needs no `unsafe`.
//!
//! Every output row is computed from its own input row alone, in an order that does not depend on the
//! other rows, so a text's vector does not depend on the batch it is embedded in.
//!
//! GELU is written so that the compiler can vectorize it (no branch, no call to the C library's `expf`,
//! which cannot be): it was a quarter of the time of a short question after the product was made faster.
//!
//! A crate of its own so that debug builds (every test run) can compile it optimized: unoptimized, these
//! loops are tens of times slower, and every test that embeds a text runs them.
//!
//! ```
//! use cache_kernels::PanelMatrix;
//! // W = [[1, 2], [3, 4], [5, 6]]: 2 inputs, 3 outputs.
//! let w = PanelMatrix::from_rows(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2).unwrap();
//! let mut y = [0.0; 3];
//! w.product(&[1.0, 1.0], &[0.5, 0.0, -0.5], &mut y).unwrap();
//! assert_eq!(y, [3.5, 7.0, 10.5]);
//! ```

use pulp::{Arch, Simd, WithSimd};

mod int4;
pub use int4::{dot_i8_i4_rows, pack_i4, packed_i4_len};

/// Output columns per panel: two AVX2 vectors, four SSE or NEON vectors, sixteen scalars.
const PANEL: usize = 16;

/// Rows of `x` computed together against one panel (with [`PANEL`] columns, 8 AVX2 accumulators).
const TILE_ROWS: usize = 4;

/// A weight matrix `W` (`outputs` × `inputs`) laid out in panels for [`PanelMatrix::product`].
#[derive(Debug, Clone)]
pub struct PanelMatrix {
    inputs: usize,
    outputs: usize,
    /// `[outputs / PANEL rounded up][inputs][PANEL]`, zero past `outputs` in the last panel.
    panels: Vec<f32>,
}

/// Operands whose sizes do not fit together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(String);

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShapeError {}

impl PanelMatrix {
    /// Lays out `weight`, `outputs` rows of `inputs` numbers in row-major order (the layout of a
    /// PyTorch `Linear` weight in a model file), in panels.
    pub fn from_rows(weight: &[f32], outputs: usize, inputs: usize) -> Result<PanelMatrix, ShapeError> {
        if inputs == 0 || outputs == 0 || Some(weight.len()) != outputs.checked_mul(inputs) {
            return Err(ShapeError(format!(
                "{} weights are not a {outputs}x{inputs} matrix with both sizes above zero",
                weight.len()
            )));
        }
        let panel_count = outputs.div_ceil(PANEL);
        let mut panels = vec![0.0f32; panel_count * inputs * PANEL];
        for (out, row) in weight.chunks_exact(inputs).enumerate() {
            let base = (out / PANEL) * inputs * PANEL + out % PANEL;
            for (input, &w) in row.iter().enumerate() {
                panels[base + input * PANEL] = w;
            }
        }
        Ok(PanelMatrix { inputs, outputs, panels })
    }

    /// The length of an input row.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The length of an output row.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// `out = x·Wᵀ + bias`: `x` is rows of [`inputs`](Self::inputs) numbers, `out` the same number of rows
    /// of [`outputs`](Self::outputs), both row-major; `bias` has one number per output.
    pub fn product(&self, x: &[f32], bias: &[f32], out: &mut [f32]) -> Result<(), ShapeError> {
        let rows = x.len() / self.inputs;
        if x.len() % self.inputs != 0 || bias.len() != self.outputs || Some(out.len()) != rows.checked_mul(self.outputs)
        {
            return Err(ShapeError(format!(
                "x of {} numbers, bias of {} and out of {} do not fit a {}x{} matrix",
                x.len(),
                bias.len(),
                out.len(),
                self.outputs,
                self.inputs
            )));
        }
        Arch::new().dispatch(Product {
            x,
            inputs: self.inputs,
            outputs: self.outputs,
            panels: &self.panels,
            bias,
            out,
        });
        Ok(())
    }
}

/// One call's operands, for [`Arch::dispatch`] to run with the CPU's SIMD instructions.
struct Product<'a> {
    x: &'a [f32],
    inputs: usize,
    outputs: usize,
    panels: &'a [f32],
    bias: &'a [f32],
    out: &'a mut [f32],
}

impl WithSimd for Product<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let rows = self.x.len() / self.inputs;
        for (panel_index, panel) in self.panels.chunks_exact(self.inputs * PANEL).enumerate() {
            let first = panel_index * PANEL;
            let width = PANEL.min(self.outputs - first);
            let mut row = 0;
            while row < rows {
                let take = (rows - row).min(TILE_ROWS);
                let sums = match take {
                    4 => tile::<S, 4>(simd, self.x, self.inputs, row, panel),
                    3 => widen(tile::<S, 3>(simd, self.x, self.inputs, row, panel)),
                    2 => widen(tile::<S, 2>(simd, self.x, self.inputs, row, panel)),
                    _ => widen(tile::<S, 1>(simd, self.x, self.inputs, row, panel)),
                };
                for (r, sum) in sums.iter().take(take).enumerate() {
                    let start = (row + r) * self.outputs + first;
                    let out = &mut self.out[start..start + width];
                    for ((o, s), b) in out.iter_mut().zip(sum).zip(&self.bias[first..first + width]) {
                        *o = s + b;
                    }
                }
                row += take;
            }
        }
    }
}

/// `N` rows of a smaller tile, padded to [`TILE_ROWS`] (the padding is never read).
#[inline(always)]
fn widen<const N: usize>(sums: [[f32; PANEL]; N]) -> [[f32; PANEL]; TILE_ROWS] {
    let mut wide = [[0.0; PANEL]; TILE_ROWS];
    wide[..N].copy_from_slice(&sums);
    wide
}

/// The dot products of rows `row..row + N` of `x` with the [`PANEL`] columns of one panel.
#[inline(always)]
fn tile<S: Simd, const N: usize>(simd: S, x: &[f32], inputs: usize, row: usize, panel: &[f32]) -> [[f32; PANEL]; N] {
    let vectors = PANEL * size_of::<f32>() / size_of::<S::f32s>();
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; PANEL]; N];
    let rows: [&[f32]; N] = std::array::from_fn(|r| &x[(row + r) * inputs..(row + r + 1) * inputs]);
    for (k, weights) in panel.chunks_exact(PANEL).enumerate() {
        let (weights, _) = S::as_simd_f32s(weights);
        for r in 0..N {
            let xv = simd.splat_f32s(rows[r][k]);
            for v in 0..vectors {
                acc[r][v] = simd.mul_add_e_f32s(xv, weights[v], acc[r][v]);
            }
        }
    }
    let mut sums = [[0.0f32; PANEL]; N];
    for r in 0..N {
        let (out, _) = S::as_mut_simd_f32s(&mut sums[r]);
        out.copy_from_slice(&acc[r][..vectors]);
    }
    sums
}

/// BERT's GELU, the exact one (not the tanh approximation), applied to every value in place:
/// `x·(1 + erf(x/√2))/2`, which is `x·erfc(−x/√2)/2`. Within 2e-7 of the definition, relative.
pub fn gelu_in_place(values: &mut [f32]) {
    Arch::new().dispatch(|| values.iter_mut().for_each(|v| *v = gelu(*v)));
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    let y = -x * std::f32::consts::FRAC_1_SQRT_2;
    let erfc = erfc_positive(y.abs());
    0.5 * x * if y >= 0.0 { erfc } else { 2.0 - erfc }
}

/// `erfc(z)` for `z ≥ 0` by the Chebyshev fit of Numerical Recipes (§6.2), relative error below 1.2e-7
/// everywhere, so as exact as `f32` arithmetic, with one `exp`.
#[inline(always)]
fn erfc_positive(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204 + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_77))))))));
    t * exp(-z * z + poly)
}

/// `eˣ` for `x ≤ 0` (all GELU needs), relative error below 2e-7, in operations that vectorize:
/// `eˣ = 2ⁿ·eʳ` with `n = round(x/ln 2)` and `|r| ≤ ln 2 / 2`, `eʳ` by its Taylor series to the 7th
/// power (truncation error below 3e-9), and `2ⁿ` written straight into the exponent bits. Below −87
/// (where `eˣ` is near `f32`'s smallest normal number) the result is 0.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let small = x < -87.0;
    let x = x.clamp(-87.0, 0.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n is an integer in [-126, 0]: 2ⁿ is a normal f32 whose exponent field is n + 127.
    let two_to_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if small {
        0.0
    } else {
        p * two_to_n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(outputs: usize, inputs: usize) -> Vec<f32> {
        (0..outputs * inputs).map(|n| ((n * 31 + n / inputs * 7) % 13) as f32 / 13.0 - 0.5).collect()
    }

    /// The plain definition, in f64.
    fn reference(w: &[f32], outputs: usize, inputs: usize, x: &[f32], bias: &[f32]) -> Vec<f32> {
        x.chunks_exact(inputs)
            .flat_map(|row| {
                (0..outputs).map(move |o| {
                    let dot: f64 = row.iter().zip(&w[o * inputs..]).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                    (dot + f64::from(bias[o])) as f32
                })
            })
            .collect()
    }

    /// Shapes that leave partial panels and partial tiles, against the definition.
    #[test]
    fn matches_the_definition() {
        for (rows, inputs, outputs) in [(1, 1, 1), (1, 3, 1), (5, 7, 17), (14, 384, 40), (9, 33, 16), (4, 5, 32)] {
            let w = weights(outputs, inputs);
            let bias: Vec<f32> = (0..outputs).map(|o| o as f32 / 10.0).collect();
            let x: Vec<f32> = (0..rows * inputs).map(|n| (n % 11) as f32 / 11.0 - 0.4).collect();
            let matrix = PanelMatrix::from_rows(&w, outputs, inputs).unwrap();
            let mut got = vec![f32::NAN; rows * outputs];
            matrix.product(&x, &bias, &mut got).unwrap();
            for (g, e) in got.iter().zip(reference(&w, outputs, inputs, &x, &bias)) {
                assert!((g - e).abs() <= 1e-4 * e.abs().max(1.0), "{rows}x{inputs}x{outputs}: {g} vs {e}");
            }
        }
    }

    /// A row's outputs are the same bits alone as among other rows.
    #[test]
    fn rows_do_not_depend_on_their_neighbours() {
        let (inputs, outputs, rows) = (10, 24, 7);
        let matrix = PanelMatrix::from_rows(&weights(outputs, inputs), outputs, inputs).unwrap();
        let x: Vec<f32> = (0..rows * inputs).map(|n| n as f32 / 9.0).collect();
        let bias = vec![0.25; outputs];
        let mut all = vec![0.0; rows * outputs];
        matrix.product(&x, &bias, &mut all).unwrap();
        for r in 0..rows {
            let mut alone = vec![0.0; outputs];
            matrix.product(&x[r * inputs..(r + 1) * inputs], &bias, &mut alone).unwrap();
            assert_eq!(alone, all[r * outputs..(r + 1) * outputs]);
        }
    }

    fn gelu_of(x: f32) -> f32 {
        let mut v = [x];
        gelu_in_place(&mut v);
        v[0]
    }

    #[test]
    fn gelu_matches_the_erf_definition() {
        // erf values from the definition, to 10 digits.
        for (x, erf) in
            [(0.0f64, 0.0f64), (0.5, 0.5204998778), (1.0, 0.8427007929), (2.0, 0.9953222650), (3.0, 0.9999779095)]
        {
            for x in [x, -x] {
                let erf = erf.copysign(x);
                let expected = 0.5 * (x * std::f64::consts::SQRT_2) * (1.0 + erf);
                let got = f64::from(gelu_of((x * std::f64::consts::SQRT_2) as f32));
                assert!(
                    (got - expected).abs() <= 1e-6 * expected.abs().max(1.0),
                    "gelu({x}·√2) = {got}, expected {expected}"
                );
            }
        }
        assert_eq!(gelu_of(-20.0), 0.0);
        assert_eq!(gelu_of(20.0), 20.0);
    }

    /// The vectorizable exp against the standard library's, over its whole range.
    #[test]
    fn exp_is_within_its_error_bound() {
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) / 10_000.0;
            let (got, expected) = (f64::from(exp(x)), f64::from(x).exp());
            worst = worst.max((got - expected).abs() / expected);
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        assert_eq!(exp(-87.5), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    /// A slice long enough to take the vectorized path gives what each value alone gives.
    #[test]
    fn gelu_of_a_slice_is_gelu_of_each_value() {
        let mut values: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) / 50.0).collect();
        let alone: Vec<f32> = values.iter().map(|&v| gelu_of(v)).collect();
        gelu_in_place(&mut values);
        assert_eq!(values, alone);
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        assert!(PanelMatrix::from_rows(&[1.0; 5], 2, 3).is_err());
        assert!(PanelMatrix::from_rows(&[], 0, 3).is_err());
        let matrix = PanelMatrix::from_rows(&[1.0; 6], 2, 3).unwrap();
        let mut out = [0.0; 2];
        assert!(matrix.product(&[1.0; 4], &[0.0; 2], &mut out).is_err());
        assert!(matrix.product(&[1.0; 3], &[0.0; 3], &mut out).is_err());
        assert!(matrix.product(&[1.0; 6], &[0.0; 2], &mut out).is_err());
        assert!(matrix.product(&[], &[0.0; 2], &mut []).is_ok());
    }
}
