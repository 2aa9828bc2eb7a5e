//! Times the segmented radix sort alone: `cargo run --release --example sort_probe -- SEGS LEN`.
fn main() -> Result<(), segloss::Error> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let (segs, len) = (args.first().copied().unwrap_or(1), args.get(1).copied().unwrap_or(1 << 20));
    let engine = segloss::Engine::gpu_blocking()?;
    let mut x = 0x9E3779B9u32;
    let keys: Vec<u32> = (0..segs * len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        })
        .collect();
    engine.sort_segments_blocking(&keys, len)?;
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        engine.sort_segments_blocking(&keys, len)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!("{segs} x {len}: median {:.1} ms", times[1]);
    Ok(())
}
