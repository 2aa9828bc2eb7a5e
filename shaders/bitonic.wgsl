// Bitonic sort of short segments (at most 2048 keys), one workgroup per segment, entirely in
// workgroup memory: the fast path for small segments, where the radix sort's passes over memory
// and dispatches cost more than the network's barriers. Keys ascending, ties by payload index
// (bits 0..30), so the result equals the stable radix sort's. Bindings of sortio.wgsl; sorts
// keys_out/vals_out (or the items of itemsout.wgsl) in place (each workgroup owns its segment), keys_in/vals_in unused. With varlen,
// segment s sorts its first seglen[s].w keys and fills the rest of its `len` with padding.

var<workgroup> bk: array<u32, 2048>;
var<workgroup> bv: array<u32, 2048>;

fn before(a: u32, b: u32) -> bool {
    return bk[a] < bk[b] || (bk[a] == bk[b] && (bv[a] & 0x7FFFFFFFu) < (bv[b] & 0x7FFFFFFFu));
}

@compute @workgroup_size(256)
fn bitonic_sort(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let seg = wid.x;
    let base = seg * SP.len;
    var n = 1u;
    while n < SP.len {
        n <<= 1u;
    }
    // with varlen, only the first seglen[seg].w keys are read; the rest of the segment is
    // written back as padding (NONE), which sorts last
    let real = seg_len(seg);
    for (var i = lid; i < n; i += 256u) {
        if i < real {
            let kv = get_item(base + i);
            bk[i] = kv.x;
            bv[i] = kv.y;
        } else {
            bk[i] = 0xFFFFFFFFu;
            bv[i] = 0xFFFFFFFFu;
        }
    }
    workgroupBarrier();
    for (var k = 2u; k <= n; k <<= 1u) {
        for (var j = k >> 1u; j > 0u; j >>= 1u) {
            for (var t = lid; t < n / 2u; t += 256u) {
                let i = (t / j) * 2u * j + (t % j);
                let l = i + j;
                if before(l, i) == ((i & k) == 0u) {
                    let tk = bk[i];
                    let tv = bv[i];
                    bk[i] = bk[l];
                    bv[i] = bv[l];
                    bk[l] = tk;
                    bv[l] = tv;
                }
            }
            workgroupBarrier();
        }
    }
    for (var i = lid; i < SP.len; i += 256u) {
        put_item(base + i, bk[i], bv[i]);
    }
}
