// Stand-in for lovasz_regs.wgsl (see noregs.wgsl).

fn keys_regs(n: u32, s: u32, x: ptr<function, array<f32, CREG_MAX>>, lab: u32, lse: vec2<f32>) {}
