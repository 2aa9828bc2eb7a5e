// keep.wgsl over vec4: four elements per access (slices of 4k elements on 16 bytes).

@group(0) @binding(0) var<storage, read> status: array<u32>;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;

@compute @workgroup_size(256)
fn copy_unless_bad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if status[0] == 0u && i < arrayLength(&out) {
        out[i] = src[i];
    }
}
