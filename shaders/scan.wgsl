// Workgroup-wide exclusive scan of vec2<u32> over 256 invocations (Hillis-Steele in shared
// memory). For the kernels that sort and rank; call in uniform control flow.

const SCAN_WG: u32 = 256u;

var<workgroup> scan_buf: array<vec2<u32>, 256>;

// Returns (exclusive prefix .xy, workgroup total .zw) of v.
fn wg_scan2(lid: u32, v: vec2<u32>) -> vec4<u32> {
    scan_buf[lid] = v;
    workgroupBarrier();
    for (var off = 1u; off < SCAN_WG; off <<= 1u) {
        var t = vec2<u32>(0u);
        if lid >= off {
            t = scan_buf[lid - off];
        }
        workgroupBarrier();
        scan_buf[lid] += t;
        workgroupBarrier();
    }
    let inclusive = scan_buf[lid];
    let total = scan_buf[SCAN_WG - 1u];
    workgroupBarrier();
    return vec4<u32>(inclusive - v, total);
}
