// How lovasz.wgsl's and lovasz_tiles.wgsl's weights passes write an element's Jaccard weight into
// `lw` (LovParams: fg_mul, bg_mul).

// What lovasz_weights writes for an element with label counts c and Jaccard weight w.
fn weight_out(c: vec2<u32>, w: f32) -> f32 {
    return w * select(LP.bg_mul, LP.fg_mul, c.x == 1u);
}

// lovasz_weights' write of weight_out o at element at: added to what lw holds with `accum` (the
// hinge's gradient beside a pixel term's), a constant at every call (lavapipe's compiler folds
// the branch away; a uniform read here cost the weights passes half as much again).
fn write_weight(at: u32, o: f32, accum: bool) {
    if accum {
        lw[at] = lw[at] + o;
    } else {
        lw[at] = o;
    }
}
