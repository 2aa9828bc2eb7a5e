// threshold.wgsl's lovasz_threshold for CPU adapters: a thread per tile (tiles.wgsl, see
// radix_scatter_tiles), without workgroup atomics or barriers, reading the keys and payloads,
// the CPU adapters' interleaved items, through itemsin.wgsl (or two per load, itemsin2.wgsl). The compaction then drops as it reads
// (compact_local_tiles), in place of lovasz_drop.

@group(0) @binding(0) var<uniform> LP: LovParams;
@group(0) @binding(1) var<storage, read> keys_in: SortWords;
@group(0) @binding(2) var<storage, read> vals_in: SortWords;
// [seg]: (largest foreground key, complement of the smallest key), cleared to zero by the host
@group(0) @binding(3) var<storage, read_write> thr: array<atomic<u32>>;

// The (largest foreground key, complement of the smallest key) of key k with payload v, (0, 0)
// where it is ignored.
fn thr_of(k: u32, v: u32) -> vec2<u32> {
    let live = v != 0xFFFFFFFFu;
    return vec2<u32>(select(0u, k, live && (v >> 31u) == 1u), select(0u, ~k, live));
}

@compute @workgroup_size(8)
fn lovasz_threshold_tiles(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.y;
    let span = tile_span(lid, wid, LP.len, LP.len);
    if span.z == 0u {
        return;
    }
    var m = vec2<u32>(0u);
    var p = 0u;
    if SORT4 {
        // four elements per load (the tile starts on a quad)
        for (; p + 4u <= span.z; p += 4u) {
            let kv = quad_in((span.y + p) / 4u);
            let k = kv.k;
            let v = kv.v;
            m = max(max(m, max(thr_of(k.x, v.x), thr_of(k.y, v.y))), max(thr_of(k.z, v.z), thr_of(k.w, v.w)));
        }
    }
    for (; p < span.z; p++) {
        m = max(m, thr_of(key_in(span.y + p), val_in(span.y + p)));
    }
    atomicMax(&thr[2u * seg], m.x);
    atomicMax(&thr[2u * seg + 1u], m.y);
}
