// Stable compaction of the Lovász keys: elements with key NONE (hinge: error <= 0; softmax: dropped
// by threshold.wgsl; ignored) carry no loss and no gradient, so only the others are sorted. Per
// segment: count kept elements per tile, scan, and scatter them in their original order to the
// front of the segment in a new [segment][len] array (what follows them is never read as a kept
// element: the passes after this one read only each segment's counts below); the dropped
// elements' labels are counted into segsum (fg in .y, bg in .z) so that the foreground total
// stays exact, segsum.x receives the kept count, which the Lovász passes read on the device, and
// segsum.w the keys the sort takes (the same count). The CPU adapters' compaction
// (compact_local_tiles) leaves the kept elements at the front of each tile instead, where the
// sort's first pass reads them.

@group(0) @binding(0) var<uniform> LP: LovParams;        // the uncompacted segments
// (`SortWords`: sortin1.wgsl; the CPU adapters' tile kernels read interleaved items, itemsin.wgsl or
// itemsin2.wgsl)
@group(0) @binding(1) var<storage, read> keys_in: SortWords;
@group(0) @binding(2) var<storage, read> vals_in: SortWords;
// (`SortOut`: sortout1.wgsl, or the CPU adapters' items, itemsout.wgsl)
@group(0) @binding(3) var<storage, read_write> keys_out: SortOut;
@group(0) @binding(4) var<storage, read_write> vals_out: array<u32>;
@group(0) @binding(5) var<storage, read_write> tilecnt: array<vec4<u32>>; // [seg][tile]: kept, fg, bg dropped, slots
@group(0) @binding(6) var<storage, read_write> segsum: array<vec4<u32>>;  // [seg]: kept, fg, bg dropped, slots
// The tile kernels (CPU adapters, Lovász-Softmax): [seg] the thresholds of threshold.wgsl, which
// they apply as they read, in place of lovasz_drop
@group(0) @binding(7) var<storage, read> thr: array<u32>;
// The bad-input flags of the statistics pass, or of the hinge's compaction (compact_args)
@group(0) @binding(8) var<storage, read> status: array<u32>;

const CT: u32 = 2048u;
const CIPT: u32 = 8u;
const NONE: u32 = 0xFFFFFFFFu;

// The tile's counts: integers, so workgroup atomics give the same totals in any order, with two
// barriers instead of a scan's four.
var<workgroup> tile_total: array<atomic<u32>, 3>;

@compute @workgroup_size(256)
fn compact_count(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = wid.x + wid.z * LP.fold;
    let seg = wid.y;
    if tile >= LP.tiles {
        return;
    }
    if lid < 3u {
        atomicStore(&tile_total[lid], 0u);
    }
    workgroupBarrier();
    var c = vec4<u32>(0u);
    for (var r = 0u; r < CIPT; r++) {
        let j = tile * CT + r * 256u + lid;
        let i = seg * LP.len + min(j, LP.len - 1u);
        c += select(vec4<u32>(0u), kind_of(key_in(i), val_in(i)), j < LP.len);
    }
    atomicAdd(&tile_total[0], c.x);
    atomicAdd(&tile_total[1], c.y);
    atomicAdd(&tile_total[2], c.z);
    workgroupBarrier();
    if lid == 0u {
        // (.w: the keys to sort, the kept elements)
        let kept = atomicLoad(&tile_total[0]);
        tilecnt[seg * LP.tiles + tile] = vec4<u32>(kept, atomicLoad(&tile_total[1]), atomicLoad(&tile_total[2]), kept);
    }
}

// Per segment: exclusive scan of the kept counts over tiles (in place), totals into segsum.
@compute @workgroup_size(256)
fn compact_scan(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.x;
    var carry = vec4<u32>(0u);
    for (var start = 0u; start < LP.tiles; start += 256u) {
        let i = start + lid;
        var v = vec4<u32>(0u);
        if i < LP.tiles {
            v = tilecnt[seg * LP.tiles + i];
        }
        let ex = wg_scan4(lid, v);
        if i < LP.tiles {
            tilecnt[seg * LP.tiles + i] = carry + ex;
        }
        carry += scan_total4;
    }
    if lid == 0u {
        segsum[seg] = carry;
    }
}

// The local compactions' segment sums on CPU adapters (compact_local_tiles, hinge_local_tiles): a
// thread per segment (STW to a workgroup, tiles.wgsl) adds its tiles' counts, without barriers,
// and leaves them for the sort's first pass to read.
@compute @workgroup_size(8)
fn compact_sum_tiles(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.x * STW + lid;
    if seg >= LP.segs {
        return;
    }
    var sum = vec4<u32>(0u);
    for (var t = 0u; t < LP.tiles; t++) {
        sum += tilecnt[seg * LP.tiles + t];
    }
    segsum[seg] = sum;
}

// Kept elements to the front of their segment, in their original order.
@compute @workgroup_size(256)
fn compact_scatter(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = wid.x + wid.z * LP.fold;
    let seg = wid.y;
    if tile >= LP.tiles {
        return;
    }
    var k: array<u32, CIPT>;
    var v: array<u32, CIPT>;
    var kept = 0u;
    for (var r = 0u; r < CIPT; r++) {
        let j = tile * CT + CIPT * lid + r;
        k[r] = NONE;
        v[r] = NONE;
        if j < LP.len {
            k[r] = key_in(seg * LP.len + j);
            v[r] = val_in(seg * LP.len + j);
        }
        kept += select(0u, 1u, k[r] != NONE);
    }
    let ex = wg_scan4(lid, vec4<u32>(kept, 0u, 0u, 0u));
    var pos = tilecnt[seg * LP.tiles + tile].x + ex.x;
    for (var r = 0u; r < CIPT; r++) {
        if k[r] != NONE {
            put_item(seg * LP.len + pos, k[r], v[r]);
            pos += 1u;
        }
    }
}

// The compaction of CPU adapters (Lovász-Softmax; the hinge's computes its keys as it goes,
// hinge.wgsl): a thread per tile walks it in order, without atomics, scans or barriers, and drops
// the background past the segment's threshold as it reads (lovasz_drop's rule, threshold.wgsl),
// so no pass writes the drops. Workgroup (tile group, segment): tiles STW x + lane.

// Segment seg's threshold (lovparams.wgsl).
fn seg_threshold(seg: u32) -> u32 {
    return drop_threshold(thr[2u * seg], thr[2u * seg + 1u]);
}

// A thread per tile (LP.sort_tile elements, LP.tiles per segment: up to LOCAL_TILES of the radix
// sort's tiles, within llvmpipe's loop limit: gpu::lovasz::local_tile) writes its kept elements
// to the front of its own tile, in order, and leaves (kept, fg dropped, bg dropped, kept) in
// tilecnt, which compact_sum_tiles adds up per segment and the sort's first pass reads as the
// tile's count of keys (sortio.wgsl: varlen 2); that pass's scatter leaves the keys dense. A segment the bitonic network sorts is one tile, so
// dense already. One walk instead of a count, a scan and a scatter.
@compute @workgroup_size(8)
fn compact_local_tiles(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.y;
    let tile = wid.x * STW + lid;
    let first = tile * LP.sort_tile;
    if first >= LP.len {
        return;
    }
    let n = min(LP.sort_tile, LP.len - first);
    let base = seg * LP.len + first;
    let t = seg_threshold(seg);
    var c = vec4<u32>(0u);
    var pos = base;
    var p = 0u;
    if SORT4 {
        for (; p + 4u <= n; p += 4u) {
            let kv = quad_in((base + p) / 4u);
            let k = vec4<u32>(
                dropped_key(kv.k.x, kv.v.x, t),
                dropped_key(kv.k.y, kv.v.y, t),
                dropped_key(kv.k.z, kv.v.z, t),
                dropped_key(kv.k.w, kv.v.w, t),
            );
            c += kind_of(k.x, kv.v.x) + kind_of(k.y, kv.v.y) + kind_of(k.z, kv.v.z) + kind_of(k.w, kv.v.w);
            pos = put_kept(pos, vec2<u32>(k.x, kv.v.x));
            pos = put_kept(pos, vec2<u32>(k.y, kv.v.y));
            pos = put_kept(pos, vec2<u32>(k.z, kv.v.z));
            pos = put_kept(pos, vec2<u32>(k.w, kv.v.w));
        }
    }
    for (; p < n; p++) {
        let v = val_in(base + p);
        let k = dropped_key(key_in(base + p), v, t);
        c += kind_of(k, v);
        pos = put_kept(pos, vec2<u32>(k, v));
    }
    c.w = c.x;
    tilecnt[seg * LP.tiles + tile] = c;
}

var<workgroup> longest: atomic<u32>;

// The radix tile kernels' tile on long segments (radix.wgsl; gpu::radix_layout).
const RADIX_TILE_WIDE: u32 = 16384u;

// One workgroup, after the compaction: where the checks (the statistics pass, or the hinge's
// compaction) found bad input, every segment's
// kept count and keys to sort become 0. Then the indirect dispatch size (x, y, z) of the passes
// over the compacted segments,
// written to vals_out[0..3]: the tiles of the longest sorted segment (its kept elements;
// at least one), the segments;
// to vals_out[4..7] that of the tile kernels (STW tiles per workgroup), and to vals_out[8..11]
// that of the radix tile kernels over tiles of RADIX_TILE_WIDE.
@compute @workgroup_size(256)
fn compact_args(@builtin(local_invocation_index) lid: u32) {
    if lid == 0u {
        atomicStore(&longest, 0u);
    }
    workgroupBarrier();
    // bad input: nothing to sort, no weights written (a hinge's weights pass may write the
    // caller's gradient, which bad input leaves untouched)
    let bad = status[0] != 0u;
    var m = 0u;
    for (var s = lid; s < LP.segs; s += 256u) {
        if bad {
            segsum[s] = vec4<u32>(0u, segsum[s].yz, 0u);
        }
        m = max(m, segsum[s].w);
    }
    atomicMax(&longest, m);
    workgroupBarrier();
    if lid == 0u {
        let tiles = max(1u, (atomicLoad(&longest) + CT - 1u) / CT);
        // (folded past the device's limit in x: tile = x + z fold)
        vals_out[0] = min(tiles, LP.fold);
        vals_out[1] = LP.segs;
        vals_out[2] = (tiles + LP.fold - 1u) / LP.fold;
        vals_out[4] = (tiles + STW - 1u) / STW;
        vals_out[5] = LP.segs;
        vals_out[6] = 1u;
        let wide = max(1u, (atomicLoad(&longest) + RADIX_TILE_WIDE - 1u) / RADIX_TILE_WIDE);
        vals_out[8] = (wide + STW - 1u) / STW;
        vals_out[9] = LP.segs;
        vals_out[10] = 1u;
    }
}
