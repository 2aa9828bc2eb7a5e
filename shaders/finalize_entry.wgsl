// The finalize's entry point on GPUs (and CPU adapters past a few (image, class) entries): a
// workgroup of FWG threads.
const FWG: u32 = 64u;
const FT: u32 = FWG;

@compute @workgroup_size(64)
fn finalize(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    finalize_main(lid, wid);
}
