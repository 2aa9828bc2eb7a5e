// The Lovász hinge's keys on CPU adapters, straight into the compacted segments (see
// compact.wgsl): a thread per tile of a segment counts its kept elements and the dropped ones'
// labels (hinge_count_tiles), compact_scan gives each tile its first slot, and the thread computes
// the keys again and writes the kept ones in order (hinge_compact_tiles). Against lovasz_keys,
// compact_count and compact_scatter, the uncompacted keys are never written nor read back. A
// hinge segment is an image's elements (or all of them) in logits order: element j of segment
// seg is logit seg * LP.len + j.

// (`Floats` and `Words`: io1.wgsl, or io4.wgsl's quads for the VEC4 kernels, which take segments
// of 4k elements: their tiles are then whole quads)
@group(0) @binding(0) var<storage, read> logits: Floats;
@group(0) @binding(1) var<storage, read> tgt: Words;
@group(0) @binding(2) var<uniform> P: Params;
@group(0) @binding(3) var<uniform> LP: LovParams;
// (the CPU adapters' interleaved items, itemsout.wgsl: vals_out is not written)
@group(0) @binding(4) var<storage, read_write> keys_out: SortOut;
@group(0) @binding(5) var<storage, read_write> vals_out: array<u32>;
@group(0) @binding(6) var<storage, read_write> tilecnt: array<vec4<u32>>; // [seg][tile]: kept, fg, bg dropped, slots
// The bad-input flags (checks.wgsl): the count checks every element where VALIDATE asks (an
// input checked on the device whose only loss is the hinge: no statistics pass reads it)
@group(0) @binding(7) var<storage, read_write> status: array<atomic<u32>>;

// (tiles: tiles.wgsl)
@compute @workgroup_size(8)
fn hinge_count_tiles(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let span = tile_span(lid, wid, LP.len, LP.len);
    if span.z == 0u {
        return;
    }
    var c = vec4<u32>(0u);
    if VEC4 {
        for (var p = 0u; p < span.z; p += 4u) {
            let e = span.y + p;
            let x = lg4(e / 4u);
            let w = tgt4(e / 4u);
            let k0 = hinge_kv_of(e, x.x, w.x);
            let k1 = hinge_kv_of(e + 1u, x.y, w.y);
            let k2 = hinge_kv_of(e + 2u, x.z, w.z);
            let k3 = hinge_kv_of(e + 3u, x.w, w.w);
            c += kind_of(k0.x, k0.y) + kind_of(k1.x, k1.y) + kind_of(k2.x, k2.y) + kind_of(k3.x, k3.y);
            check_sigmoid(e, x.x, w.x);
            check_sigmoid(e + 1u, x.y, w.y);
            check_sigmoid(e + 2u, x.z, w.z);
            check_sigmoid(e + 3u, x.w, w.w);
        }
    } else {
        for (var p = 0u; p < span.z; p++) {
            let e = span.y + p;
            let x = lg(e);
            let w = tgt_at(e);
            let kv = hinge_kv_of(e, x, w);
            c += kind_of(kv.x, kv.y);
            check_sigmoid(e, x, w);
        }
    }
    c.w = guard_slots(c.x, span.z);
    tilecnt[wid.y * LP.tiles + span.x] = c;
    flush_bad();
}

@compute @workgroup_size(8)
fn hinge_compact_tiles(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.y;
    let span = tile_span(lid, wid, LP.len, LP.len);
    if span.z == 0u {
        return;
    }
    let first = seg * LP.len + tilecnt[seg * LP.tiles + span.x].w;
    var pos = first;
    let base = span.y;
    let real = span.z;
    // (put_kept, put_guard: kept.wgsl)
    if VEC4 {
        for (var p = 0u; p < real; p += 4u) {
            let e = base + p;
            let x = lg4(e / 4u);
            let w = tgt4(e / 4u);
            pos = put_kept(pos, hinge_kv_of(e, x.x, w.x));
            pos = put_kept(pos, hinge_kv_of(e + 1u, x.y, w.y));
            pos = put_kept(pos, hinge_kv_of(e + 2u, x.z, w.z));
            pos = put_kept(pos, hinge_kv_of(e + 3u, x.w, w.w));
        }
    } else {
        for (var p = 0u; p < real; p++) {
            pos = put_kept(pos, hinge_kv(base + p));
        }
    }
    put_guard(first, pos, real);
}

// The hinge's keys on CPU adapters where the radix sort takes them (segments past the bitonic
// crossover): one walk instead of count, scan and compaction. A thread per tile of the sort's
// first pass (LP.sort_tile elements; LP.tiles of them per segment) writes its kept keys and
// payloads to the front of its own tile, in order (put_kept; no guard: no other thread writes
// in the tile), checks its elements where VALIDATE asks, and leaves (kept, fg dropped, bg
// dropped, kept) in tilecnt, which the sort's first pass reads as each tile's count of keys
// (sortio.wgsl: varlen 2) and compact_sum_tiles adds into each segment's sums. That pass's
// scatter leaves the kept keys dense.
@compute @workgroup_size(8)
fn hinge_local_tiles(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = wid.x * STW + lid;
    let first = tile * LP.sort_tile;
    if first >= LP.len {
        return;
    }
    let n = min(LP.sort_tile, LP.len - first);
    let base = wid.y * LP.len + first;
    var c = vec4<u32>(0u);
    var pos = base;
    if VEC4 {
        for (var p = 0u; p < n; p += 4u) {
            let e = base + p;
            let x = lg4(e / 4u);
            let w = tgt4(e / 4u);
            let k0 = hinge_kv_of(e, x.x, w.x);
            let k1 = hinge_kv_of(e + 1u, x.y, w.y);
            let k2 = hinge_kv_of(e + 2u, x.z, w.z);
            let k3 = hinge_kv_of(e + 3u, x.w, w.w);
            c += kind_of(k0.x, k0.y) + kind_of(k1.x, k1.y) + kind_of(k2.x, k2.y) + kind_of(k3.x, k3.y);
            pos = put_kept(pos, k0);
            pos = put_kept(pos, k1);
            pos = put_kept(pos, k2);
            pos = put_kept(pos, k3);
            check_sigmoid(e, x.x, w.x);
            check_sigmoid(e + 1u, x.y, w.y);
            check_sigmoid(e + 2u, x.z, w.z);
            check_sigmoid(e + 3u, x.w, w.w);
        }
    } else {
        for (var p = 0u; p < n; p++) {
            let e = base + p;
            let x = lg(e);
            let w = tgt_at(e);
            let kv = hinge_kv_of(e, x, w);
            c += kind_of(kv.x, kv.y);
            pos = put_kept(pos, kv);
            check_sigmoid(e, x, w);
        }
    }
    c.w = c.x;
    tilecnt[wid.y * LP.tiles + tile] = c;
    flush_bad();
}
