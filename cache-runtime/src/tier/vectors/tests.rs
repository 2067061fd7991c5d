//! The scope vectors against an exact scan: ranking, thresholds, removals and scans in parts.

use super::*;

/// A deterministic generator (xorshift) of values in [-0.5, 0.5).
fn values(mut state: u64) -> impl FnMut() -> f32 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

#[test]
fn nearest_ranks_by_score_and_respects_the_threshold() {
    let scope = ScopeVectors::new(1);
    scope.upsert("a", "A", &unit(&[1.0, 0.0, 0.0]));
    scope.upsert("b", "B", &unit(&[1.0, 1.0, 0.0]));
    scope.upsert("c", "C", &unit(&[0.0, 0.0, 1.0]));
    let found = scope.nearest(&unit(&[1.0, 0.2, 0.0]), 0.5, 4);
    let keys: Vec<&str> = found.iter().map(|c| &*c.key).collect();
    assert_eq!(keys, ["a", "b"]);
    assert!(found[0].score > found[1].score);
    assert_eq!(scope.nearest(&unit(&[1.0, 0.2, 0.0]), 0.5, 1).len(), 1);
    assert!(scope.nearest(&unit(&[0.0, 1.0, -1.0]), 0.99, 4).is_empty());
}

#[test]
fn upsert_replaces_and_remove_keeps_the_others_intact() {
    let scope = ScopeVectors::new(1);
    for (i, key) in ["a", "b", "c", "d"].iter().enumerate() {
        let mut v = vec![0.0; 4];
        v[i] = 1.0;
        scope.upsert(key, key, &v);
    }
    scope.upsert("a", "A2", &[0.0, 0.0, 0.0, 1.0]);
    assert_eq!(scope.len(), 4);
    scope.remove("b");
    scope.remove("missing");
    assert_eq!(scope.len(), 3);
    // "d" moved into b's slot: its vector and text moved with it.
    let found = scope.nearest(&[0.0, 0.0, 0.0, 1.0], 0.9, 4);
    let keys: Vec<(&str, &str)> = found.iter().map(|c| (&*c.key, &*c.text)).collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&("a", "A2")) && keys.contains(&("d", "d")));
    assert_eq!(&*scope.nearest(&[0.0, 0.0, 1.0, 0.0], 0.9, 4)[0].key, "c");
    // Another length than the scope's is ignored.
    scope.upsert("e", "e", &[1.0, 0.0]);
    assert_eq!(scope.len(), 3);
}

/// The two-pass search finds exactly what scoring every vector gives, on many random scopes with
/// near-duplicates (where the int8 bounds overlap most).
#[test]
fn the_two_passes_find_exactly_the_exact_nearest() {
    let mut next = values(0x9E37_79B9_7F4A_7C15_u64);
    for round in 0..20 {
        let dims = if round % 2 == 0 { 384 } else { 24 };
        let scope = ScopeVectors::new(1);
        let base: Vec<f32> = (0..dims).map(|_| next()).collect();
        let mut all = Vec::new();
        for i in 0..400 {
            // Half near `base`, half anywhere.
            let spread = if i % 2 == 0 { 0.05 } else { 5.0 };
            let v = unit(&base.iter().map(|b| b + spread * next()).collect::<Vec<f32>>());
            scope.upsert(&format!("k{i}"), "t", &v);
            all.push((format!("k{i}"), v));
        }
        let query = unit(&base.iter().map(|b| b + 0.05 * next()).collect::<Vec<f32>>());
        for (threshold, n) in [(0.5, 1), (0.9, 5), (-1.0, 10), (0.99, 3)] {
            let mut exact: Vec<(f32, &str)> =
                all.iter().map(|(k, v)| (dot(&query, v), k.as_str())).filter(|(s, _)| *s >= threshold).collect();
            exact.sort_by(|a, b| b.0.total_cmp(&a.0));
            exact.truncate(n);
            let found: Vec<(f32, String)> =
                scope.nearest(&query, threshold, n).into_iter().map(|c| (c.score, c.key.to_string())).collect();
            let want: Vec<(f32, String)> = exact.into_iter().map(|(s, k)| (s, k.to_owned())).collect();
            assert_eq!(found, want, "round {round}, threshold {threshold}, n {n}");
        }
    }
}

/// `in_parallel` runs every part once, in order; and whatever the number of threads the first pass runs on,
/// and however the blocks fall to them, the search finds what scoring every vector finds.
#[test]
fn a_scope_scanned_on_many_threads_finds_what_the_exact_scan_finds() {
    for parts in [0, 1, 2, 3, 7] {
        let ran = std::sync::Mutex::new(Vec::new());
        let results = in_parallel(parts, &|part| {
            ran.lock().unwrap().push(part);
            part * 10
        });
        assert_eq!(results, (0..parts).map(|p| p * 10).collect::<Vec<_>>());
        let mut ran = ran.into_inner().unwrap();
        ran.sort_unstable();
        assert_eq!(ran, (0..parts).collect::<Vec<_>>());
    }
    // Near-duplicates of one vector in every block, so that each block's floor differs from the scope's.
    let dims = 384;
    let scope = ScopeVectors::new(1);
    let mut next = values(0x2545_F491_4F6C_DD1D_u64);
    let base: Vec<f32> = (0..dims).map(|_| next()).collect();
    let count = 20_011;
    let mut all = Vec::with_capacity(count);
    for i in 0..count {
        // Every thousandth further from `base` than the one before: the n best spread wider than the int4
        // bounds (cosines 0.995 down to 0.7), so that a floor set too high would drop some of them.
        let spread = if i % 1000 == 0 { 0.1 * (1 + i / 1000) as f32 } else { 5.0 };
        let v = unit(&base.iter().map(|b| b + spread * next()).collect::<Vec<f32>>());
        scope.upsert(&format!("k{i}"), "t", &v);
        all.push(v);
    }
    let query = unit(&base.iter().map(|b| b + 0.05 * next()).collect::<Vec<f32>>());
    for (threshold, n) in [(0.5, 1), (0.9, 5), (-1.0, 10)] {
        let mut exact: Vec<(f32, usize)> =
            all.iter().enumerate().map(|(i, v)| (dot(&query, v), i)).filter(|(s, _)| *s >= threshold).collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        exact.truncate(n);
        let want: Vec<(f32, String)> = exact.into_iter().map(|(s, i)| (s, format!("k{i}"))).collect();
        let named = |found: Vec<Candidate>| -> Vec<(f32, String)> {
            found.into_iter().map(|c| (c.score, c.key.to_string())).collect()
        };
        let rows = scope.rows.read().unwrap();
        for threads in [1, 2, 3, 4] {
            let found = rows.nearest(threads, &query, threshold, n);
            assert_eq!(named(found), want, "{threads} threads, threshold {threshold}, n {n}");
        }
        // Which thread claims which block depends on timing; every block in a pass of its own (the most
        // passes, each with the floor of its block alone) must find the same.
        let quantized = quantize(&query);
        let passes: Vec<FirstPass> = (0..count.div_ceil(SCAN_BLOCK))
            .map(|block| {
                let mut pass = FirstPass::new(threshold, n);
                let slots = block * SCAN_BLOCK..((block + 1) * SCAN_BLOCK).min(count);
                pass.scan(&quantized, &rows, slots).unwrap();
                pass
            })
            .collect();
        assert!(passes.len() >= 4);
        assert_eq!(
            named(rows.exact_pass(&passes, &query, threshold, n)),
            want,
            "a pass per block, threshold {threshold}, n {n}"
        );
    }
}

#[test]
fn dot_matches_the_plain_sum_and_bytes_round_trip() {
    let a: Vec<f32> = (0..21).map(|i| i as f32 * 0.1).collect();
    let b: Vec<f32> = (0..21).map(|i| 1.0 - i as f32 * 0.05).collect();
    let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    assert!((dot(&a, &b) - plain).abs() < 1e-4);
    assert_eq!(decode(&encode(&a)), Some(a));
    assert_eq!(decode(&[0, 0, 0]), None);
    assert_eq!(decode(&f32::NAN.to_le_bytes()), None);
}
