// Segmented, stable LSD radix sort of u32 keys with u32 payloads: 8-bit digits, reduce-then-scan
// (count, scan, scatter), no subgroup operations and no forward-progress assumptions. All
// segments have the same length `len` and are sorted in one dispatch per step; tiles never
// straddle segments. One pass per digit, `shift` = 0, 8, 16, 24.

struct SortParams {
    len: u32,   // segment length
    segs: u32,  // segments
    tiles: u32, // tiles per segment
    shift: u32, // digit shift of this pass
}

@group(0) @binding(0) var<uniform> SP: SortParams;
@group(0) @binding(1) var<storage, read> keys_in: array<u32>;
@group(0) @binding(2) var<storage, read> vals_in: array<u32>;
@group(0) @binding(3) var<storage, read_write> counts: array<u32>; // [seg][digit][tile]
@group(0) @binding(4) var<storage, read_write> totals: array<u32>; // [seg][digit]
@group(0) @binding(5) var<storage, read_write> keys_out: array<u32>;
@group(0) @binding(6) var<storage, read_write> vals_out: array<u32>;

const T: u32 = 1024u; // tile: 256 threads x 4 items

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> sk: array<u32, 1024>;
var<workgroup> sv: array<u32, 1024>;
var<workgroup> dbase: array<u32, 256>;
var<workgroup> first: array<u32, 256>;

fn digit(k: u32) -> u32 {
    return (k >> SP.shift) & 255u;
}

// Digit histogram of each tile (integer atomics in shared memory: the counts are exact).
@compute @workgroup_size(256)
fn radix_count(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = wid.x;
    let seg = wid.y;
    atomicStore(&hist[lid], 0u);
    workgroupBarrier();
    for (var r = 0u; r < 4u; r++) {
        let j = tile * T + r * 256u + lid;
        if j < SP.len {
            atomicAdd(&hist[digit(keys_in[seg * SP.len + j])], 1u);
        }
    }
    workgroupBarrier();
    counts[(seg * 256u + lid) * SP.tiles + tile] = atomicLoad(&hist[lid]);
}

// Per (digit, segment): exclusive scan of the tile counts in place, and the digit's total.
@compute @workgroup_size(256)
fn radix_scan(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let d = wid.x;
    let seg = wid.y;
    let base = (seg * 256u + d) * SP.tiles;
    var carry = 0u;
    for (var start = 0u; start < SP.tiles; start += 256u) {
        let i = start + lid;
        var v = 0u;
        if i < SP.tiles {
            v = counts[base + i];
        }
        let r = wg_scan2(lid, vec2<u32>(v, 0u));
        if i < SP.tiles {
            counts[base + i] = carry + r.x;
        }
        carry += r.z;
    }
    if lid == 0u {
        totals[seg * 256u + d] = carry;
    }
}

// Stable local sort of the tile by the digit (four 2-bit splits), then each item goes to
// segment start + digit base + tile prefix + its rank among the tile's items of that digit.
@compute @workgroup_size(256)
fn radix_scatter(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = wid.x;
    let seg = wid.y;
    let ds = wg_scan2(lid, vec2<u32>(totals[seg * 256u + lid], 0u));
    dbase[lid] = ds.x;
    var k: array<u32, 4>;
    var v: array<u32, 4>;
    for (var r = 0u; r < 4u; r++) {
        let j = tile * T + 4u * lid + r;
        k[r] = 0xFFFFFFFFu; // padding sorts after every real item (stable: it starts last)
        v[r] = 0u;
        if j < SP.len {
            k[r] = keys_in[seg * SP.len + j];
            v[r] = vals_in[seg * SP.len + j];
        }
    }
    for (var b = 0u; b < 8u; b += 2u) {
        var cnt = vec2<u32>(0u);
        for (var r = 0u; r < 4u; r++) {
            let q = (digit(k[r]) >> b) & 3u;
            if q < 2u {
                cnt.x += 1u << (16u * q);
            } else {
                cnt.y += 1u << (16u * (q - 2u));
            }
        }
        let sc = wg_scan2(lid, cnt);
        let t0 = sc.z & 0xFFFFu;
        let t1 = sc.z >> 16u;
        let t2 = sc.w & 0xFFFFu;
        var off = vec4<u32>(sc.x & 0xFFFFu, sc.x >> 16u, sc.y & 0xFFFFu, sc.y >> 16u)
            + vec4<u32>(0u, t0, t0 + t1, t0 + t1 + t2);
        for (var r = 0u; r < 4u; r++) {
            let q = (digit(k[r]) >> b) & 3u;
            sk[off[q]] = k[r];
            sv[off[q]] = v[r];
            off[q] += 1u;
        }
        workgroupBarrier();
        for (var r = 0u; r < 4u; r++) {
            k[r] = sk[4u * lid + r];
            v[r] = sv[4u * lid + r];
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let p = 4u * lid + r;
        let d = digit(k[r]);
        if p == 0u || digit(sk[p - 1u]) != d {
            first[d] = p;
        }
    }
    workgroupBarrier();
    let real = min(T, SP.len - tile * T);
    for (var r = 0u; r < 4u; r++) {
        let p = 4u * lid + r;
        if p < real {
            let d = digit(k[r]);
            let dest = seg * SP.len + dbase[d] + counts[(seg * 256u + d) * SP.tiles + tile] + (p - first[d]);
            keys_out[dest] = k[r];
            vals_out[dest] = v[r];
        }
    }
}
