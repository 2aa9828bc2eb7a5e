// Zeros `out`, unless the checks found bad input (then nothing is written): where a
// Lovász hinge's weights pass writes the gradient of a device-checked input into the caller's
// slice (gpu::lovasz::HingeGrad), the elements without a loss get their zero here. A thread per
// element, workgroup rows of 256 threads (gx, gy as in copy.wgsl). zero4.wgsl: four per store.

@group(0) @binding(0) var<storage, read> status: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn zero_unless_bad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if status[0] == 0u && i < arrayLength(&out) {
        out[i] = 0.0;
    }
}
