//! The segmented radix sort alone against the CPU's stable sort: ties, negative zero and equal
//! keys across segments, sizes 1 .. 2^22, several segments at once.

mod common;

use common::Rng;
use segloss::internals::SortAlgo;
use segloss::Engine;
use std::sync::OnceLock;

/// Order-preserving u32 encoding of an f32, descending (larger floats first), as the Lovász
/// kernels sort errors; -0.0 sorts right after +0.0.
fn desc_key(x: f32) -> u32 {
    let b = x.to_bits();
    let asc = if b & 0x8000_0000 != 0 { !b } else { b | 0x8000_0000 };
    !asc
}

/// Each algorithm, and the radix sort with both scatters: a thread per tile (CPU adapters) and a
/// workgroup per tile (GPUs), the second on an engine of its own.
fn check(keys: &[u32], seg: usize) {
    for algo in [SortAlgo::Auto, SortAlgo::Radix, SortAlgo::Bitonic] {
        check_with(common::gpu(), keys, seg, algo);
    }
    check_with(other_scatter(), keys, seg, SortAlgo::Radix);
}

/// An engine whose radix sort scatters the other way from the shared engine's.
fn other_scatter() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let e = Engine::gpu_blocking().unwrap();
        // (the engine's default: a thread per tile on CPU adapters)
        e.set_tile_scatter(e.info().device_type != "Cpu");
        e
    })
}

fn check_with(engine: &Engine, keys: &[u32], seg: usize, algo: SortAlgo) {
    let (k, i) = engine.sort_segments_with_blocking(keys, seg, algo).unwrap();
    let mut want: Vec<u32> = (0..keys.len() as u32).collect();
    for chunk in want.chunks_mut(seg) {
        chunk.sort_by_key(|&j| keys[j as usize]); // stable
    }
    let want_k: Vec<u32> = want.iter().map(|&j| keys[j as usize]).collect();
    assert!(k == want_k, "{algo:?}: keys differ (n = {}, segment {seg})", keys.len());
    assert!(i == want, "{algo:?}: payloads differ: the sort is not stable (n = {}, segment {seg})", keys.len());
}

#[test]
fn sorts_like_a_stable_cpu_sort_across_sizes() {
    let mut rng = Rng(21);
    for n in [1usize, 2, 3, 255, 256, 1000, 1023, 1024, 1025, 4097, 65_536 + 17, 300_001, 1 << 20, (1 << 22) - 3] {
        let keys: Vec<u32> = (0..n)
            .map(|_| match rng.below(4) {
                0 => rng.next_u64() as u32,
                1 => rng.below(5) as u32, // many ties
                2 => desc_key((rng.normal() * 3.0) as f32),
                _ => desc_key(if rng.below(2) == 0 { 0.0 } else { -0.0 }),
            })
            .collect();
        check(&keys, n);
    }
}

#[test]
fn sorts_many_segments_in_one_call() {
    let mut rng = Rng(22);
    for (segs, len) in [(7usize, 1usize), (5, 1000), (300, 2048), (1000, 257), (21, 3001), (84, 4096), (3, 100_003)] {
        // equal keys across segments must not mix
        let keys: Vec<u32> = (0..segs * len).map(|_| rng.below(1000) as u32).collect();
        check(&keys, len);
    }
}

#[test]
fn float_keys_order_descending_with_negative_zero() {
    let xs = [3.5f32, -0.0, 0.0, -2.0, f32::MIN_POSITIVE, 1e-45, -1e-45, 7.0, 0.0, -0.0];
    let keys: Vec<u32> = xs.iter().map(|&x| desc_key(x)).collect();
    let (_, idx) = common::gpu().sort_segments_blocking(&keys, keys.len()).unwrap();
    let sorted: Vec<f32> = idx.iter().map(|&i| xs[i as usize]).collect();
    let bits: Vec<u32> = sorted.iter().map(|x| x.to_bits()).collect();
    let want = [7.0f32, 3.5, f32::MIN_POSITIVE, 1e-45, 0.0, 0.0, -0.0, -0.0, -1e-45, -2.0];
    assert_eq!(bits, want.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
}

#[test]
fn bad_segment_lengths_are_errors() {
    let e = common::gpu().sort_segments_blocking(&[1, 2, 3], 2).unwrap_err().to_string();
    assert!(e.contains("do not split into segments of 2"), "{e}");
}

/// Keys in runs that share their high 24 bits, which a sort leaving the low byte to a fix-up of
/// each run would have to get right (tried and not kept, see the README): runs of 1 to 33 keys,
/// long runs in order, across tile edges (2048 keys) and segment edges, and a long run out of
/// order straddling a tile edge.
#[test]
fn runs_of_equal_high_bits_sort_like_a_stable_cpu_sort() {
    let mut rng = Rng(23);
    for (segs, len, long_out_of_order) in [(1usize, 70_001usize, false), (3, 16_384, false), (2, 40_000, true)] {
        let mut keys = Vec::with_capacity(segs * len);
        while keys.len() < segs * len {
            let high = (rng.below(1 << 24) as u32) << 8;
            let (run, ordered) = match rng.below(10) {
                0 => (1 + rng.below(3000), true),
                1 => (32, false),
                2 => (33, true),
                _ => (1 + rng.below(32), false),
            };
            // (a third of the runs with many ties)
            let spread = if rng.below(3) == 0 { 3 } else { 256 };
            let mut lows: Vec<u32> = (0..run).map(|_| rng.below(spread) as u32).collect();
            if ordered {
                lows.sort_unstable();
            }
            keys.extend(lows.iter().map(|&l| high | l));
        }
        keys.truncate(segs * len);
        if long_out_of_order {
            // a run of 40 keys whose low bytes descend, straddling a tile edge
            for (j, k) in keys[2040..2080].iter_mut().enumerate() {
                *k = 0x00AB_CD00 | (200 - j as u32);
            }
        }
        check(&keys, len);
    }
}

#[test]
fn the_sort_benchmark_runs_on_both_layouts() {
    // the CPU adapters' interleaved items and the GPUs' two arrays, each copied in from the kept
    // random keys before every timed run
    let engine = segloss::Engine::gpu_blocking().unwrap();
    for tiles in [true, false] {
        engine.set_tile_scatter(tiles);
        for algo in [segloss::internals::SortAlgo::Radix, segloss::internals::SortAlgo::Bitonic] {
            let times = engine.bench_sort(4, 1024, algo, 2).unwrap();
            assert_eq!(times.len(), 2, "{algo:?}, tiles {tiles}");
            assert!(times.iter().all(|t| t.is_finite() && *t > 0.0));
        }
    }
}
