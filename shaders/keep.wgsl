// Copies `src` into `out`, unless the checks found bad input (then nothing is written): where a
// gradient slice shares its buffer with the input, the passes write scratch (`src`), which goes
// into the caller's slice only where the input is good, so that bad input leaves the slice as it
// was. A thread per element, workgroup rows of 256 threads (gx, gy as in copy.wgsl). keep4.wgsl:
// four per access.

@group(0) @binding(0) var<storage, read> status: array<u32>;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn copy_unless_bad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if status[0] == 0u && i < arrayLength(&out) {
        out[i] = src[i];
    }
}
