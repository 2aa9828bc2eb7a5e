// Bandwidth probe for benchmarks: out = logits * 1, one read and one write per element, the
// memory traffic floor of any elementwise pass over the logits.

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if i < arrayLength(&logits) {
        out[i] = logits[i];
    }
}
