// out1.wgsl's interface over an array of vec4.
fn eout_get(i: u32) -> f32 {
    return elem_out[i >> 2u][i & 3u];
}

fn eout_set(i: u32, v: f32) {
    elem_out[i >> 2u][i & 3u] = v;
}

fn eout_get4(q: u32) -> vec4<f32> {
    return elem_out[q];
}

fn eout_set4(q: u32, v: vec4<f32>) {
    elem_out[q] = v;
}
