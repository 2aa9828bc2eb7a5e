// Workgroup-wide exclusive scans of vec4<u32> (and vec2<u32>) over 256 invocations: a raking scan
// (16 threads scan 16 values each, one thread scans their totals) with four barriers, for the
// kernels that sort and rank. Call in uniform control flow.

const SCAN_WG: u32 = 256u;

var<workgroup> scan_buf4: array<vec4<u32>, 256>;
var<workgroup> rake4: array<vec4<u32>, 17>;

// The workgroup total of the last wg_scan4.
var<workgroup> scan_total4: vec4<u32>;

// Returns the exclusive prefix of v; the workgroup total lands in `scan_total4`.
fn wg_scan4(lid: u32, v: vec4<u32>) -> vec4<u32> {
    scan_buf4[lid] = v;
    workgroupBarrier();
    if lid < 16u {
        var acc = vec4<u32>(0u);
        for (var i = 0u; i < 16u; i++) {
            acc += scan_buf4[lid * 16u + i];
            scan_buf4[lid * 16u + i] = acc;
        }
        rake4[lid] = acc;
    }
    workgroupBarrier();
    if lid == 0u {
        var acc = vec4<u32>(0u);
        for (var i = 0u; i < 16u; i++) {
            let t = rake4[i];
            rake4[i] = acc;
            acc += t;
        }
        rake4[16] = acc;
    }
    workgroupBarrier();
    let inclusive = scan_buf4[lid] + rake4[lid / 16u];
    if lid == 0u {
        scan_total4 = rake4[16];
    }
    workgroupBarrier();
    return inclusive - v;
}

// Returns (exclusive prefix .xy, workgroup total .zw) of v.
fn wg_scan2(lid: u32, v: vec2<u32>) -> vec4<u32> {
    let ex = wg_scan4(lid, vec4<u32>(v, 0u, 0u));
    return vec4<u32>(ex.xy, scan_total4.xy);
}
