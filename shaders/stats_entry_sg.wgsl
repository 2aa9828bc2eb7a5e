// The statistics pass's entry point with subgroup operations, on CPU adapters that have them:
// each subgroup adds its lanes' sums itself (see write_partials), so the pass has no barrier.
const SUBGROUPS: bool = true;
// the most pixels a thread takes (stats.wgsl): the long softmax tiles
const PIX_ARRAY: u32 = PIX_LONG;

fn chunk_sum(v: vec4<f32>) -> vec4<f32> {
    return subgroupAdd(v);
}

@compute @workgroup_size(128)
fn stats(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) sid: u32,
    @builtin(subgroup_id) sgi: u32,
) {
    stats_main(lid, wid, nwg, vec2<u32>(sid, sgi));
}
