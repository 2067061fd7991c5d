//! Int4 rows for the semantic search's first pass: half the bytes of int8 ones, so that the copies of a
//! 100,000-vector scope (19 MB at 384 dimensions) fit in a server's last-level cache, where int8 ones
//! (38 MB) stream from memory on every lookup.
//!
//! **Layout** ([`pack_i4`]). A row is cut into groups of 64 values, each stored in 32 bytes: byte `j` of a
//! group holds value `j` in its low nibble and value `32 + j` in its high nibble, each as the unsigned
//! `v + 8` (values lie in -8..=7). A last group that is not full is padded with zeros. So one 32-byte load
//! gives two vectors of 32 values with a mask and a shift, and the query's bytes line up with them as they
//! are stored.
//!
//! **Products** ([`dot_i8_i4_rows`]). `vpmaddubsw` multiplies unsigned bytes by signed bytes: the stored
//! nibble `v + 8` (0..=15) by the query's int8 value. The sum over a row is then `v·q + 8·Σq`, and the
//! second term, the same for every row, is taken off once. A pair's sum is at most 2·15·128 = 3,840 and
//! two pairs are added in i16 before widening, 7,680: no saturation, so every product is exact.

use crate::ShapeError;

/// Values per group of a packed row, and bytes per group.
const GROUP: usize = 64;
const GROUP_BYTES: usize = GROUP / 2;
/// What the stored nibble adds to each value.
const OFFSET: i32 = 8;

/// Bytes of one packed row of `dims` values.
pub fn packed_i4_len(dims: usize) -> usize {
    dims.div_ceil(GROUP) * GROUP_BYTES
}

/// Appends the packed row of `values` (see the module docs) to `out`.
///
/// # Errors
/// When a value lies outside -8..=7; `out` is then left as it was.
pub fn pack_i4(values: &[i8], out: &mut Vec<u8>) -> Result<(), ShapeError> {
    if let Some(bad) = values.iter().find(|v| !(-8..=7).contains(*v)) {
        return Err(ShapeError(format!("{bad} does not fit in 4 bits (-8..=7)")));
    }
    let nibble = |i: usize| values.get(i).map_or(OFFSET as u8, |&v| (v + 8) as u8);
    for group in 0..values.len().div_ceil(GROUP) {
        let base = group * GROUP;
        out.extend((0..GROUP_BYTES).map(|j| nibble(base + j) | nibble(base + GROUP_BYTES + j) << 4));
    }
    Ok(())
}

/// The dot product of the int8 `query` with each packed int4 row of `rows` (rows of `query.len()` values,
/// [`packed_i4_len`] bytes each, as [`pack_i4`] lays them out), exactly, into `out`, one per row.
///
/// # Errors
/// When `rows` is not `out.len()` packed rows of `query.len()` values.
pub fn dot_i8_i4_rows(query: &[i8], rows: &[u8], out: &mut [i32]) -> Result<(), ShapeError> {
    let row_bytes = packed_i4_len(query.len());
    if Some(rows.len()) != row_bytes.checked_mul(out.len()) || (query.is_empty() && !out.is_empty()) {
        return Err(ShapeError(format!(
            "{} bytes are not {} packed rows of {} values",
            rows.len(),
            out.len(),
            query.len()
        )));
    }
    if query.is_empty() {
        return Ok(());
    }
    // The query in the rows' groups, padded with zeros (which add nothing to any product).
    let mut padded = query.to_vec();
    padded.resize(row_bytes * 2, 0);
    let offset = OFFSET * query.iter().map(|&q| i32::from(q)).sum::<i32>();
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        simd.vectorize(|| avx2::dot_rows(simd, &padded, rows, out));
        out.iter_mut().for_each(|sum| *sum -= offset);
        return Ok(());
    }
    pulp::Arch::new().dispatch(|| {
        for (row, sum) in rows.chunks_exact(row_bytes).zip(out.iter_mut()) {
            *sum = dot_packed(&padded, row) - offset;
        }
    });
    Ok(())
}

/// `Σ nibble·q` over one packed row (the offset not taken off), the portable way.
fn dot_packed(padded: &[i8], row: &[u8]) -> i32 {
    let mut sums = [0i32; GROUP_BYTES];
    for (query, bytes) in padded.chunks_exact(GROUP).zip(row.chunks_exact(GROUP_BYTES)) {
        let (low, high) = query.split_at(GROUP_BYTES);
        for j in 0..GROUP_BYTES {
            let byte = bytes[j];
            sums[j] += i32::from(byte & 0x0f) * i32::from(low[j]) + i32::from(byte >> 4) * i32::from(high[j]);
        }
    }
    sums.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{GROUP, GROUP_BYTES};
    use pulp::x86::V3;
    use std::arch::x86_64::__m256i;

    /// `Σ nibble·q` for each row (the offset not taken off); inlined into `V3::vectorize`'s closure, where
    /// AVX2 is enabled. (Four rows at a time, sharing the query's loads and one reduction, measured slower.)
    #[inline(always)]
    pub(super) fn dot_rows(simd: V3, padded: &[i8], rows: &[u8], out: &mut [i32]) {
        let (ones, mask) = (simd.avx._mm256_set1_epi16(1), simd.avx._mm256_set1_epi8(0x0f));
        let row_bytes = padded.len() / 2;
        for (row, sum) in rows.chunks_exact(row_bytes).zip(out.iter_mut()) {
            let mut acc = simd.avx._mm256_setzero_si256();
            for (query, bytes) in padded.chunks_exact(GROUP).zip(row.chunks_exact(GROUP_BYTES)) {
                let packed: __m256i = pulp::cast(<[u8; 32]>::try_from(bytes).unwrap_or([0; 32]));
                let low = simd.avx2._mm256_and_si256(packed, mask);
                let high = simd.avx2._mm256_and_si256(simd.avx2._mm256_srli_epi16::<4>(packed), mask);
                let pairs = simd.avx2._mm256_add_epi16(
                    simd.avx2._mm256_maddubs_epi16(low, load(&query[..GROUP_BYTES])),
                    simd.avx2._mm256_maddubs_epi16(high, load(&query[GROUP_BYTES..])),
                );
                acc = simd.avx2._mm256_add_epi32(acc, simd.avx2._mm256_madd_epi16(pairs, ones));
            }
            let lanes: [i32; 8] = pulp::cast(acc);
            *sum = lanes.iter().sum();
        }
    }

    /// 32 query bytes as one vector (an unaligned load).
    #[inline(always)]
    fn load(bytes: &[i8]) -> __m256i {
        pulp::cast(<[i8; 32]>::try_from(bytes).unwrap_or([0; 32]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(query: &[i8], row: &[i8]) -> i32 {
        query.iter().zip(row).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum()
    }

    /// Packs `rows` (of `query.len()` values each) and checks every product against the definition.
    fn assert_exact(query: &[i8], rows: &[i8]) {
        let dims = query.len();
        let mut packed = Vec::new();
        for row in rows.chunks_exact(dims) {
            pack_i4(row, &mut packed).unwrap();
        }
        assert_eq!(packed.len(), packed_i4_len(dims) * rows.len() / dims);
        let mut out = vec![0; rows.len() / dims];
        dot_i8_i4_rows(query, &packed, &mut out).unwrap();
        for (r, &got) in out.iter().enumerate() {
            assert_eq!(got, plain(query, &rows[r * dims..(r + 1) * dims]), "{dims} dimensions, row {r}");
        }
        // The portable path gives the same.
        let mut padded = query.to_vec();
        padded.resize(packed_i4_len(dims) * 2, 0);
        let offset = OFFSET * query.iter().map(|&q| i32::from(q)).sum::<i32>();
        for (r, row) in packed.chunks_exact(packed_i4_len(dims)).enumerate() {
            assert_eq!(dot_packed(&padded, row) - offset, out[r], "portable, {dims} dimensions, row {r}");
        }
    }

    #[test]
    fn int4_dot_products_are_exact() {
        for dims in [1, 31, 32, 33, 63, 64, 65, 384, 385] {
            let query: Vec<i8> = (0..dims).map(|i| (i * 37 % 255) as u8 as i8).collect();
            let rows: Vec<i8> = (0..dims * 5).map(|i| (i * 7 % 16) as i8 - 8).collect();
            assert_exact(&query, &rows);
            // Every pair at its largest: the query at -128 and 127 against the rows' extremes.
            let extremes: Vec<i8> = (0..dims).map(|i| if i % 2 == 0 { -128 } else { 127 }).collect();
            let rows: Vec<i8> = (0..dims * 3).map(|i| if i % 3 == 0 { 7 } else { -8 }).collect();
            assert_exact(&extremes, &rows);
            assert_exact(&vec![-128; dims], &vec![-8; dims * 2]);
        }
    }

    #[test]
    fn out_of_range_values_and_wrong_shapes_are_errors() {
        let mut packed = vec![1];
        assert!(pack_i4(&[0, 8], &mut packed).is_err());
        assert!(pack_i4(&[-9], &mut packed).is_err());
        assert_eq!(packed, [1], "a row that does not fit leaves the output as it was");
        pack_i4(&[7, -8, 0], &mut packed).unwrap();
        assert_eq!(packed.len(), 1 + 32);
        let low: Vec<u8> = packed[1..4].iter().map(|b| b & 0x0f).collect();
        assert_eq!(low, [15, 0, 8], "low nibbles: v + 8; high nibbles: the padding's 8");
        assert!(packed[1..].iter().all(|b| b >> 4 == 8));
        assert!(dot_i8_i4_rows(&[1, 2], &[0; 31], &mut [0]).is_err());
        assert!(dot_i8_i4_rows(&[1, 2], &[0; 32], &mut [0; 2]).is_err());
        assert!(dot_i8_i4_rows(&[], &[], &mut [0]).is_err());
        assert!(dot_i8_i4_rows(&[], &[], &mut []).is_ok());
    }
}
