// The statistics pass's entry point on every adapter: without subgroup operations.
const SUBGROUPS: bool = false;
// the most pixels a thread takes (stats.wgsl)
const PIX_ARRAY: u32 = PIX;

// (not called without subgroups)
fn chunk_sum(v: vec4<f32>) -> vec4<f32> {
    return v;
}

@compute @workgroup_size(128)
fn stats(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    stats_main(lid, wid, nwg, vec2<u32>(0u));
}
