// lovasz.wgsl's lovasz_count and lovasz_weights for CPU adapters (see radix_scatter_tiles): a
// thread per sorted tile, walked in order, without scans, tree sums or barriers. Workgroup (tile
// group, segment): tiles STW x + lane (tiles.wgsl). The weights are those of lovasz_weights bit
// for bit (integer counts); a tile's value partial is summed in position order. The sorted keys
// and payloads, the CPU adapters' interleaved items, come through itemsin.wgsl, or two per load
// through itemsin2.wgsl where every tile starts on a quad (on llvmpipe a load costs per lane,
// whatever its width).

@group(0) @binding(0) var<uniform> LP: LovParams;
@group(0) @binding(1) var<storage, read> keys_in: SortWords;
@group(0) @binding(2) var<storage, read> vals_in: SortWords;
@group(0) @binding(3) var<storage, read_write> tilecnt: array<vec2<u32>>; // [seg][tile] fg, bg
@group(0) @binding(4) var<storage, read_write> segsum: array<vec4<u32>>;  // [seg] (lovasz.wgsl)
@group(0) @binding(5) var<storage, read_write> lw: array<f32>;            // [element] Jaccard weight (weight_out)
@group(0) @binding(6) var<storage, read_write> vpart: array<f32>;         // [seg][tile] value partials

@compute @workgroup_size(8)
fn lovasz_count_tiles(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.y;
    let span = tile_span(lid, wid, LP.len, min(segsum[seg].x, LP.len));
    if span.z == 0u {
        return; // (lovasz_scan reads the tiles holding kept elements only)
    }
    var cnt = vec2<u32>(0u);
    var p = 0u;
    if SORT4 {
        for (; p + 4u <= span.z; p += 4u) {
            let v = vals4_in((span.y + p) / 4u);
            cnt += label_counts(v.x) + label_counts(v.y) + label_counts(v.z) + label_counts(v.w);
        }
    }
    for (; p < span.z; p++) {
        cnt += label_counts(val_in(span.y + p));
    }
    tilecnt[seg * LP.tiles + span.x] = cnt;
}

// lovasz_scan for CPU adapters: a thread per segment (STW to a workgroup) walks the tiles
// holding its sorted elements, without barriers (the same integers as lovasz_scan's).
@compute @workgroup_size(8)
fn lovasz_scan_tiles(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.x * STW + lid;
    if seg >= LP.segs {
        return;
    }
    let kept = segsum[seg].x;
    let tiles = min((kept + TILE - 1u) / TILE, LP.tiles);
    var carry = vec2<u32>(0u);
    for (var t = 0u; t < tiles; t++) {
        let i = seg * LP.tiles + t;
        let v = tilecnt[i];
        tilecnt[i] = carry;
        carry += v;
    }
    // .y, .z hold the labels of the elements the compaction left out; .w keeps the kept count
    let prior = segsum[seg];
    segsum[seg] = vec4<u32>(0u, prior.y + carry.x, prior.z + carry.y, kept);
}

// The next sorted element (key k, payload v; kept, so both are real) after the counts `run`:
// writes its weight (added to lw's with `accum`, write_weight) and adds its share of the value to
// `acc`.
fn weigh(k: u32, v: u32, run: ptr<function, vec2<u32>>, acc: ptr<function, f32>, gts: u32, accum: bool) {
    let c = label_counts(v);
    *run += c;
    let w = jaccard_weight(c, *run, gts);
    write_weight(v & 0x7FFFFFFFu, weight_out(c, w), accum);
    *acc += bitcast<f32>(~k) * w;
}

@compute @workgroup_size(8)
fn lovasz_weights_tiles(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    weights_tiles(lid, wid, false);
}

// lovasz_weights_tiles adding to what lw holds (the hinge's gradient beside a pixel term's).
@compute @workgroup_size(8)
fn lovasz_weights_tiles_add(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    weights_tiles(lid, wid, true);
}

fn weights_tiles(lid: u32, wid: vec3<u32>, accum: bool) {
    let seg = wid.y;
    // (lovasz_scan moved the kept count to .w)
    let span = tile_span(lid, wid, LP.len, min(segsum[seg].w, LP.len));
    if span.z == 0u {
        return; // (lovasz_value reads the tiles holding kept elements only)
    }
    var run = tilecnt[seg * LP.tiles + span.x]; // counts before this tile
    let gts = segsum[seg].y;
    var acc = 0.0;
    var p = 0u;
    if SORT4 {
        for (; p + 4u <= span.z; p += 4u) {
            let kv = quad_in((span.y + p) / 4u);
            weigh(kv.k.x, kv.v.x, &run, &acc, gts, accum);
            weigh(kv.k.y, kv.v.y, &run, &acc, gts, accum);
            weigh(kv.k.z, kv.v.z, &run, &acc, gts, accum);
            weigh(kv.k.w, kv.v.w, &run, &acc, gts, accum);
        }
    }
    for (; p < span.z; p++) {
        let kv = item_in(span.y + p);
        weigh(kv.x, kv.y, &run, &acc, gts, accum);
    }
    vpart[seg * LP.tiles + span.x] = acc;
}
