// Lovász-Softmax: drops the elements that carry neither loss nor gradient before the sort. In a
// segment sorted by error (descending), every background element after the segment's last
// foreground element has Jaccard weight I / ((U - 1) U) with I = 0: zero. The foreground elements
// all have keys <= T, the largest foreground key (the smallest foreground error), so a background
// element with key > T sorts after all of them and is dropped (its key becomes NONE; compact.wgsl
// then leaves it out of the sort and counts its label). A segment without foreground keeps only the
// elements tied at its smallest key: there the first sorted element has weight 1 and all others 0.
// Exact: values and gradients are those of the full sort.

@group(0) @binding(0) var<uniform> LP: LovParams;
@group(0) @binding(1) var<storage, read_write> keys: array<u32>;
@group(0) @binding(2) var<storage, read> vals: array<u32>;
// [seg]: (largest foreground key, complement of the smallest key), cleared to zero by the host
@group(0) @binding(3) var<storage, read_write> thr: array<atomic<u32>>;

const HT: u32 = 2048u;
const HIPT: u32 = 8u;
const NONE: u32 = 0xFFFFFFFFu;

var<workgroup> tile_fg: atomic<u32>;
var<workgroup> tile_min: atomic<u32>;

// Per tile: the largest foreground key and the smallest key (integer max, so the result does not
// depend on the order of the atomics), then one global atomic per tile.
@compute @workgroup_size(256)
fn lovasz_threshold(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = wid.x + wid.z * LP.fold;
    let seg = wid.y;
    if tile >= LP.tiles {
        return;
    }
    if lid == 0u {
        atomicStore(&tile_fg, 0u);
        atomicStore(&tile_min, 0u);
    }
    workgroupBarrier();
    var fg = 0u;
    var mn = 0u; // complement of the smallest key
    for (var r = 0u; r < HIPT; r++) {
        let j = tile * HT + r * 256u + lid;
        if j < LP.len {
            let v = vals[seg * LP.len + j];
            if v != NONE {
                let k = keys[seg * LP.len + j];
                mn = max(mn, ~k);
                if (v >> 31u) == 1u {
                    fg = max(fg, k);
                }
            }
        }
    }
    atomicMax(&tile_fg, fg);
    atomicMax(&tile_min, mn);
    workgroupBarrier();
    if lid == 0u {
        atomicMax(&thr[2u * seg], atomicLoad(&tile_fg));
        atomicMax(&thr[2u * seg + 1u], atomicLoad(&tile_min));
    }
}

// Marks the background elements past the threshold as dropped.
@compute @workgroup_size(256)
fn lovasz_drop(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = wid.x + wid.z * LP.fold;
    let seg = wid.y;
    if tile >= LP.tiles {
        return;
    }
    let t = drop_threshold(atomicLoad(&thr[2u * seg]), atomicLoad(&thr[2u * seg + 1u]));
    for (var r = 0u; r < HIPT; r++) {
        let j = tile * HT + r * 256u + lid;
        if j < LP.len {
            let i = seg * LP.len + j;
            let k = keys[i];
            let d = dropped_key(k, vals[i], t);
            if d != k {
                keys[i] = d;
            }
        }
    }
}
