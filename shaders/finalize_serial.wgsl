// The finalize's entry point on CPU adapters over a few (image, class) entries: one thread walks
// them all, and its workgroup sums are the sums of one term, without barriers to pay for.
const FT: u32 = 1u;

@compute @workgroup_size(1)
fn finalize(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    finalize_main(lid, wid);
}
