// The elementwise output `elem_out` (`Floats`) of the statistics and gradient passes, element by
// element; out4.wgsl over vec4 (see io1.wgsl).
fn eout_get(i: u32) -> f32 {
    return elem_out[i];
}

fn eout_set(i: u32, v: f32) {
    elem_out[i] = v;
}

fn eout_get4(q: u32) -> vec4<f32> {
    let i = 4u * q;
    return vec4<f32>(elem_out[i], elem_out[i + 1u], elem_out[i + 2u], elem_out[i + 3u]);
}

fn eout_set4(q: u32, v: vec4<f32>) {
    let i = 4u * q;
    elem_out[i] = v.x;
    elem_out[i + 1u] = v.y;
    elem_out[i + 2u] = v.z;
    elem_out[i + 3u] = v.w;
}
