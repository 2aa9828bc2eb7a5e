// Lovász hinge and Lovász-Softmax around the segmented sort (radix.wgsl).
//
// Segments (all of length LP.len): hinge, one per batch or image (all channels flattened);
// softmax, one per class (batch) or per (image, class). An element's sort key is the complement
// of its error's f32 bits, so an ascending sort is a descending sort by error; errors <= 0 and
// ignored elements get the largest key (they carry no loss and no gradient, and sort last). The
// payload is the element's logits index with its label in bit 31 (0xFFFFFFFF: ignored).
//
// After the sort, the Jaccard gradient of sorted position k needs only the number of foreground
// and background elements at positions <= k of its segment (a segmented scan) and the segment's
// foreground total: fg: 1 / U, bg: I / ((U - 1) U) with U = gts + cumsum(1-g), I = gts - cumsum(g),
// the closed forms of J_k - J_{k-1} (no cancellation).

// (the key pass, which reads the logits and targets: lovasz_keys.wgsl)
@group(0) @binding(0) var<uniform> LP: LovParams;
// (`KeyWords`: keys1.wgsl)
@group(0) @binding(1) var<storage, read_write> keys: KeyWords;
@group(0) @binding(2) var<storage, read_write> vals: array<u32>;
@group(0) @binding(3) var<storage, read_write> tilecnt: array<vec2<u32>>; // [seg][tile] fg, bg
@group(0) @binding(4) var<storage, read_write> segsum: array<vec4<u32>>;  // [seg] value bits, gts, gtn, 0
// [element] Jaccard weight; softmax on logits: then [n][s] the log-sum-exp of each pixel
@group(0) @binding(5) var<storage, read_write> lw: array<f32>;
@group(0) @binding(6) var<storage, read_write> vpart: array<f32>;         // [seg][tile] value partials

const LT: u32 = 2048u; // tile: 256 threads x 8 items
const LIPT: u32 = 8u;
const NONE: u32 = 0xFFFFFFFFu;

var<workgroup> fred: array<f32, 256>;
var<workgroup> seg_kept: u32;

// Sum of v over the workgroup in a fixed tree order (deterministic). Uniform control flow.
fn wg_sum(lid: u32, v: f32) -> f32 {
    fred[lid] = v;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride >>= 1u) {
        if lid < stride {
            fred[lid] += fred[lid + stride];
        }
        workgroupBarrier();
    }
    let total = fred[0];
    workgroupBarrier();
    return total;
}

// Foreground and background counts of each sorted tile.
@compute @workgroup_size(256)
fn lovasz_count(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = wid.x + wid.z * LP.fold;
    let seg = wid.y;
    if tile >= LP.tiles {
        return;
    }
    // the segment's sorted elements (compact.wgsl left their count in .x); what follows them in
    // the compacted arrays is not written
    let kept = min(segsum[seg].x, LP.len);
    var cnt = vec2<u32>(0u);
    for (var r = 0u; r < LIPT; r++) {
        let j = tile * LT + r * 256u + lid;
        if j < kept {
            cnt += label_counts(get_val(seg * LP.len + j));
        }
    }
    let sc = wg_scan2(lid, cnt);
    if lid == 0u {
        tilecnt[seg * LP.tiles + tile] = sc.zw;
    }
}

// Per segment: exclusive scan of the tile counts in place; the totals (gts, gtn).
@compute @workgroup_size(256)
fn lovasz_scan(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.x;
    // the tiles holding the segment's sorted elements (compact.wgsl left its count in .x); the
    // passes before and after this one may run over more tiles, where they read nothing
    if lid == 0u {
        seg_kept = segsum[seg].x;
    }
    let kept = workgroupUniformLoad(&seg_kept);
    let tiles = min((kept + LT - 1u) / LT, LP.tiles);
    var carry = vec2<u32>(0u);
    for (var start = 0u; start < tiles; start += 256u) {
        let i = start + lid;
        var v = vec2<u32>(0u);
        if i < tiles {
            v = tilecnt[seg * LP.tiles + i];
        }
        let r = wg_scan2(lid, v);
        if i < tiles {
            tilecnt[seg * LP.tiles + i] = carry + r.xy;
        }
        carry += r.zw;
    }
    if lid == 0u {
        // .y, .z hold the labels of the elements compact.wgsl left out; .w keeps the kept count
        let prior = segsum[seg];
        segsum[seg] = vec4<u32>(0u, prior.y + carry.x, prior.z + carry.y, kept);
    }
}

// Jaccard weight of every sorted position, scattered to its element; value partial per tile.
@compute @workgroup_size(256)
fn lovasz_weights(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = wid.x + wid.z * LP.fold;
    let seg = wid.y;
    if tile >= LP.tiles {
        return;
    }
    var k: array<u32, LIPT>;
    var v: array<u32, LIPT>;
    var cnt = vec2<u32>(0u);
    let kept = min(segsum[seg].w, LP.len); // lovasz_scan moved the kept count to .w
    for (var r = 0u; r < LIPT; r++) {
        let j = tile * LT + LIPT * lid + r;
        k[r] = NONE;
        v[r] = NONE;
        if j < kept {
            let kv = get_kv(seg * LP.len + j);
            k[r] = kv.x;
            v[r] = kv.y;
        }
        cnt += label_counts(v[r]);
    }
    let sc = wg_scan2(lid, cnt);
    var run = tilecnt[seg * LP.tiles + tile] + sc.xy; // counts before this thread's items
    // gts: the segment's foreground total (exclusive prefix of the last tile + its count)
    let gts = segsum[seg].y;
    var acc = 0.0;
    for (var r = 0u; r < LIPT; r++) {
        if v[r] == NONE {
            continue;
        }
        let c = label_counts(v[r]);
        run += c;
        let w = jaccard_weight(c, run, gts);
        write_weight(v[r] & 0x7FFFFFFFu, weight_out(c, w), ACCUM);
        if k[r] != NONE {
            acc += bitcast<f32>(~k[r]) * w;
        }
    }
    let total = wg_sum(lid, acc);
    if lid == 0u {
        vpart[seg * LP.tiles + tile] = total;
    }
}

// Per segment: the loss value, sum of the tile partials in a fixed order.
@compute @workgroup_size(256)
fn lovasz_value(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.x;
    var acc = 0.0;
    let tiles = min((segsum[seg].w + LT - 1u) / LT, LP.tiles); // tiles with sorted elements
    for (var t = lid; t < tiles; t += 256u) {
        acc += vpart[seg * LP.tiles + t];
    }
    let total = wg_sum(lid, acc);
    if lid == 0u {
        segsum[seg].x = bitcast<u32>(total);
    }
}
