// The Lovász hinge's sort key and payload of element e (see lovasz.wgsl), for the kernels that
// bind `logits`, `tgt` and `P`: the key NONE when the error is <= 0 (no loss, no gradient), the
// payload NONE when the element is ignored. Branch-free (a CPU adapter runs both sides of a
// branch on its lanes, masked).
fn hinge_kv(e: u32) -> vec2<u32> {
    return hinge_kv_of(e, lg(e), tgt_at(e));
}

// hinge_kv of element e with logit x and raw target word w.
fn hinge_kv_of(e: u32, x: f32, w: u32) -> vec2<u32> {
    let tb = tword_of(w);
    let g = bitcast<f32>(tb);
    let err = hinge_error(x, g);
    let live = tb != INVALID;
    return vec2<u32>(
        select(0xFFFFFFFFu, ~bitcast<u32>(err), live && err > 0.0),
        select(0xFFFFFFFFu, e | select(0u, 0x80000000u, g > 0.5), live),
    );
}
