// Stand-in for checks_regs.wgsl (see noregs.wgsl).

fn check_regs(x: ptr<function, array<f32, CREG_MAX>>, n: u32, s: u32, lab: u32, each: bool) {}
