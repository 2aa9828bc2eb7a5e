// Segmented, stable LSD radix sort of u32 keys with u32 payloads, reduce-then-scan (count, scan,
// scatter), no subgroup operations and no forward-progress assumptions. All segments have the same
// length `len` and are sorted in one dispatch per step; tiles never straddle segments. The
// workgroup kernels (GPUs) take 8-bit digits, one pass per digit, `shift` = 0, 8, 16, 24; the
// tile kernels of CPU adapters (below radix_digits) digits of SP.bits bits.

const T: u32 = 2048u; // tile: 256 threads x 8 items
const IPT: u32 = 8u;

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> sk: array<u32, 2048>; // local sort: (digit << 16) | index in the tile
var<workgroup> dbase: array<u32, 256>;
var<workgroup> first: array<u32, 256>;

fn digit(k: u32) -> u32 {
    return (k >> SP.shift) & 255u;
}

// Digit histogram of each tile (integer atomics in shared memory: the counts are exact).
@compute @workgroup_size(256)
fn radix_count(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = wid.x + wid.z * SP.fold;
    let seg = wid.y;
    let n = seg_len(seg);
    if tile * T >= n {
        return; // a tile past the segment's keys: radix_scan does not read its counts
    }
    atomicStore(&hist[lid], 0u);
    workgroupBarrier();
    for (var r = 0u; r < IPT; r++) {
        let j = tile * T + r * 256u + lid;
        if j < n {
            atomicAdd(&hist[digit(key_in(seg * SP.len + j))], 1u);
        }
    }
    workgroupBarrier();
    counts[(seg * SP.tiles + tile) * 256u + lid] = atomicLoad(&hist[lid]);
}

var<workgroup> lane_sum: array<u32, 256>;

// Exclusive scan of each digit's tile counts in place, per segment. Workgroup (segment, block of
// 16 digits): 16 lanes per digit each walk a contiguous sixteenth of the tiles, so the serial depth
// is tiles / 16 instead of tiles (a single segment of 2048 tiles spent most of its sort in a
// one-thread-per-digit walk on an H100). `totals` receives each digit's count in the segment.
@compute @workgroup_size(256)
fn radix_scan(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.x;
    let dl = lid & 15u;
    let d = wid.y * 16u + dl; // neighbouring threads read neighbouring digits
    let lane = lid >> 4u;
    let tiles = (seg_len(seg) + T - 1u) / T;
    let per = (tiles + 15u) / 16u;
    let t0 = min(lane * per, tiles);
    let t1 = min(t0 + per, tiles);
    var sum = 0u;
    for (var t = t0; t < t1; t++) {
        sum += counts[(seg * SP.tiles + t) * 256u + d];
    }
    lane_sum[lid] = sum;
    workgroupBarrier();
    var run = 0u;
    for (var l = 0u; l < lane; l++) {
        run += lane_sum[l * 16u + dl];
    }
    for (var t = t0; t < t1; t++) {
        let i = (seg * SP.tiles + t) * 256u + d;
        let c = counts[i];
        counts[i] = run;
        run += c;
    }
    if lane == 15u {
        totals[seg * 256u + d] = run;
    }
}

// radix_scan for CPU adapters: a thread per digit walks all the segment's tiles, workgroups of
// STW digits (neighbouring threads read neighbouring digits), so no barrier: on a CPU adapter a
// workgroup of 256 threads with a barrier costs more than these walks. `totals` receives each
// digit's count, which radix_scatter_tiles scans itself.
@compute @workgroup_size(8)
fn radix_scan_tiles(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.x;
    let d = wid.y * STW + lid;
    let digits = 1u << SP.bits;
    let tiles = (seg_len(seg) + SP.tile - 1u) / SP.tile;
    var run = 0u;
    for (var t = 0u; t < tiles; t++) {
        let i = (seg * SP.tiles + t) * digits + d;
        let c = counts[i];
        counts[i] = run;
        run += c;
    }
    totals[seg * digits + d] = run;
}

// Per segment: the start of each digit (exclusive scan of the digit totals, in place).
@compute @workgroup_size(256)
fn radix_digits(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.x;
    let sc = wg_scan2(lid, vec2<u32>(totals[seg * 256u + lid], 0u));
    totals[seg * 256u + lid] = sc.x;
}

// Stable local sort of the tile by the digit (three splits of packed (digit, index) words),
// then each item goes to segment start + digit base + tile prefix + its rank among the tile's
// items of that digit.
@compute @workgroup_size(256)
fn radix_scatter(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = wid.x + wid.z * SP.fold;
    let seg = wid.y;
    let n = seg_len(seg);
    if tile * T >= n {
        return;
    }
    // where this tile's items of each digit start in the segment
    dbase[lid] = totals[seg * 256u + lid] + counts[(seg * SP.tiles + tile) * 256u + lid];
    let real = min(T, n - tile * T);
    let base = seg * SP.len + tile * T;
    var it: array<u32, IPT>;
    for (var r = 0u; r < IPT; r++) {
        let p = IPT * lid + r;
        var d = 255u; // padding sorts after every real item (stable: it starts last)
        if p < real {
            d = digit(key_in(base + p));
        }
        it[r] = (d << 16u) | p;
    }
    // three splits of 3, 3 and 2 bits; bucket counts packed in 16-bit halves of a vec4
    // (the buckets' counts and offsets are vectors picked by selects, not arrays indexed by each
    // item's bucket: per-lane dynamic indexing into a private array is what a CPU adapter, and a
    // GPU's local memory, pay most for)
    let lanes = vec4<u32>(0u, 1u, 2u, 3u);
    for (var b = 16u; b < 24u; b += 3u) {
        var cnt = vec4<u32>(0u);
        for (var r = 0u; r < IPT; r++) {
            let q = (it[r] >> b) & 7u;
            cnt += select(vec4<u32>(0u), vec4<u32>(1u << (16u * (q & 1u))), lanes == vec4<u32>(q >> 1u));
        }
        let ex = wg_scan4(lid, cnt);
        let tot = scan_total4;
        // start of each bucket: exclusive scan of the 8 totals; then this thread's first slot
        // in each bucket, buckets 0-3 in `lo` and 4-7 in `hi`
        var slot0: array<u32, 8>; // (constant indices once the loop is unrolled)
        var acc = 0u;
        for (var q = 0u; q < 8u; q++) {
            let h = 16u * (q & 1u);
            slot0[q] = acc + ((ex[q >> 1u] >> h) & 0xFFFFu);
            acc += (tot[q >> 1u] >> h) & 0xFFFFu;
        }
        var lo = vec4<u32>(slot0[0], slot0[1], slot0[2], slot0[3]);
        var hi = vec4<u32>(slot0[4], slot0[5], slot0[6], slot0[7]);
        for (var r = 0u; r < IPT; r++) {
            let q = (it[r] >> b) & 7u;
            let upper = q >= 4u;
            let m = lanes == vec4<u32>(q & 3u);
            let v = select(lo, hi, upper);
            let at = select(select(select(v.x, v.y, m.y), v.z, m.z), v.w, m.w);
            sk[at] = it[r];
            let inc = select(vec4<u32>(0u), vec4<u32>(1u), m);
            lo += select(inc, vec4<u32>(0u), upper);
            hi += select(vec4<u32>(0u), inc, upper);
        }
        workgroupBarrier();
        for (var r = 0u; r < IPT; r++) {
            it[r] = sk[IPT * lid + r];
        }
        workgroupBarrier();
    }
    // sk holds the tile in digit order; neighbouring threads take neighbouring positions, so the
    // writes of each digit's run are coalesced
    for (var r = 0u; r < IPT; r++) {
        let p = r * 256u + lid;
        let d = sk[p] >> 16u;
        if p == 0u || (sk[p - 1u] >> 16u) != d {
            first[d] = p;
        }
    }
    workgroupBarrier();
    for (var r = 0u; r < IPT; r++) {
        let p = r * 256u + lid;
        if p < real {
            let w = sk[p];
            let d = w >> 16u;
            let src = base + (w & 0xFFFFu);
            let dest = seg * SP.len + dbase[d] + (p - first[d]);
            put_item(dest, key_in(src), val_in(src));
        }
    }
}

// The radix tile kernels of CPU adapters (radix_count_tiles, radix_scan_tiles,
// radix_scatter_tiles): a thread per tile of SP.tile keys, STW tiles to a workgroup (tiles.wgsl),
// digits of SP.bits bits. Each tile counts its digits in its row of `counts` (on llvmpipe,
// counting there rather than in workgroup memory took the hinge's count passes at 8x1x512x512
// from 6.1 to 4.0 ms), which the scatter turns into its running slots (8-bit digits: in workgroup
// memory). On long segments the host takes three passes of 11 bits over tiles of
// RADIX_TILE_WIDE keys instead of four of 8 bits over TILE (gpu::radix_layout).
// Their keys and payloads are interleaved items (itemsin.wgsl, itemsin2.wgsl, itemsout.wgsl), so
// the scatter moves each with one load and one store: on llvmpipe (every access a loop over the
// lanes, whatever its width) the hinge's scatters at 8x1x512x512 took 12.5-13.9 ms in all against
// 15.0-18.0 with two arrays, Lovász-Softmax's at 4x21x256x256 49.6-51.4 against 54.0-58.0; the
// count passes, which read only the keys, pay for it (5.5-6.3 against 4.3-5.3 ms; 22.4-22.9
// against 19.2-20.2).

// The tile kernels' digit of key k in this pass.
fn tdigit(k: u32) -> u32 {
    return (k >> SP.shift) & ((1u << SP.bits) - 1u);
}

// This thread's tile of segment seg: (tile, its first key, its keys among the segment's: 0 past
// them). With varlen 2, the tile's own count of keys from its start (a tile-local compaction).
fn sort_span(lid: u32, wid: vec3<u32>, seg: u32) -> vec3<u32> {
    let tile = wid.x * STW + lid;
    let first = tile * SP.tile;
    let n = seg_len(seg);
    var keys = 0u;
    if first < n {
        keys = min(SP.tile, n - first);
        if SP.varlen == 2u {
            keys = min(keys, seglen[seg * SP.tiles + tile].w);
        }
    }
    return vec3<u32>(tile, seg * SP.len + first, keys);
}

// radix_scatter for CPU adapters: each thread takes a whole tile and walks it in order, sending
// every key to its digit's next slot (the digit's start in the segment plus the tile's prefix,
// counted up as it goes), so the scatter is stable without a local sort. A CPU adapter pays for
// barriers and for every memory access of every lane: this kernel has no barrier and four
// accesses per key besides the key and payload, against three splits with their scans (and
// their barriers) in radix_scatter. (On a GPU the serial walk would leave the lanes' writes
// uncoalesced.)
@compute @workgroup_size(8)
fn radix_scatter_tiles(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.y;
    let span = sort_span(lid, wid, seg);
    if span.z == 0u {
        return; // (no barriers below)
    }
    // each digit's start in the segment: `totals` holds the digits' counts (radix_scan_tiles;
    // this walk over the digits is their scan, so radix_digits does not run)
    let digits = 1u << SP.bits;
    let row = (seg * SP.tiles + span.x) * digits;
    let base = span.y;
    let out = seg * SP.len;
    var start = 0u;
    if SP.bits == 8u {
        // 8-bit digits: the running slots in workgroup memory (wider ones do not fit); two walks,
        // as one walk choosing its memory per key took those scatters to 44.6 ms
        let srow = lid * 256u;
        for (var d = 0u; d < 256u; d++) {
            slot[srow + d] = counts[row + d] + start;
            start += totals[seg * 256u + d];
        }
        for (var p = 0u; p < span.z; p++) {
            let kv = item_in(base + p);
            let at = srow + tdigit(kv.x);
            let dest = slot[at];
            slot[at] = dest + 1u;
            put_item(out + dest, kv.x, kv.y);
        }
        return;
    }
    for (var d = 0u; d < digits; d++) {
        counts[row + d] += start;
        start += totals[seg * digits + d];
    }
    for (var p = 0u; p < span.z; p++) {
        let kv = item_in(base + p);
        let at = row + tdigit(kv.x);
        let dest = counts[at];
        counts[at] = dest + 1u;
        put_item(out + dest, kv.x, kv.y);
    }
}

// radix_scatter_tiles' running slots of 8-bit digits, a row of 256 per thread: on llvmpipe the
// scatters of Lovász-Softmax per image at 4x21x256x256 took 39.2 ms there against 41.3 in the
// rows of `counts` (four rounds).
var<workgroup> slot: array<u32, STW * 256u>;

// radix_count for CPU adapters (see radix_scatter_tiles): a thread per tile counts its digits in
// its own row of `counts`, without atomics or barriers.
@compute @workgroup_size(8)
fn radix_count_tiles(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.y;
    let span = sort_span(lid, wid, seg);
    // (with varlen 2 a tile of the segment may hold no key: its row, which radix_scan_tiles
    // reads, is zeroed all the same)
    if span.z == 0u && !(SP.varlen == 2u && span.x < SP.tiles) {
        return;
    }
    let digits = 1u << SP.bits;
    let row = (seg * SP.tiles + span.x) * digits;
    for (var d = 0u; d < digits; d++) {
        counts[row + d] = 0u;
    }
    var p = 0u;
    if SORT4 {
        // four keys per load (the tile starts on a quad): on llvmpipe the count passes of
        // Lovász-Softmax at 4x21x256x256 took 13.7-17.3 ms against 18.0-22.9 (e7cafa9 against its
        // parent; the scatter read over quads, in builds made only to measure, was no faster and
        // the hinge's slower: it reads key by key)
        for (; p + 4u <= span.z; p += 4u) {
            let k = keys4_in((span.y + p) / 4u);
            counts[row + tdigit(k.x)] += 1u;
            counts[row + tdigit(k.y)] += 1u;
            counts[row + tdigit(k.z)] += 1u;
            counts[row + tdigit(k.w)] += 1u;
        }
    }
    for (; p < span.z; p++) {
        counts[row + tdigit(key_in(span.y + p))] += 1u;
    }
}
