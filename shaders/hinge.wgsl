// The Lovász hinge's keys on CPU adapters, computed in their compaction (see compact.wgsl's
// compact_local_tiles): a thread per tile of LP.sort_tile elements computes its elements' keys,
// writes the kept ones to the front of its own tile, in order, and checks the input where
// VALIDATE asks. Against lovasz_keys and a compaction after it, the uncompacted keys are never
// written nor read back. A hinge segment is an image's elements (or all of them) in logits order:
// element j of segment seg is logit seg * LP.len + j.

// (`Floats` and `Words`: io1.wgsl, or io4.wgsl's quads for the VEC4 kernels, which take segments
// of 4k elements: their tiles are then whole quads)
@group(0) @binding(0) var<storage, read> logits: Floats;
@group(0) @binding(1) var<storage, read> tgt: Words;
@group(0) @binding(2) var<uniform> P: Params;
@group(0) @binding(3) var<uniform> LP: LovParams;
// (the CPU adapters' interleaved items, itemsout.wgsl: vals_out is not written)
@group(0) @binding(4) var<storage, read_write> keys_out: SortOut;
@group(0) @binding(5) var<storage, read_write> vals_out: array<u32>;
@group(0) @binding(6) var<storage, read_write> tilecnt: array<vec4<u32>>; // [seg][tile]: kept, fg, bg dropped, kept
// The bad-input flags (checks.wgsl): the compaction checks every element where VALIDATE asks (an
// input checked on the device whose only loss is the hinge: no statistics pass reads it)
@group(0) @binding(7) var<storage, read_write> status: array<atomic<u32>>;

// A thread per tile (LP.sort_tile elements; LP.tiles of them per segment) writes its kept keys
// and payloads to the front of its own tile, in order (put_kept), and leaves (kept, fg dropped,
// bg dropped, kept) in tilecnt, as compact_local_tiles does.
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
