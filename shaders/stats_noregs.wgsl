// Stand-ins for stats_regs.wgsl (see noregs.wgsl).

fn ce_regs(n: u32, s: u32, lab: u32, lse: vec2<f32>, tf: array<Term, 4>, x: ptr<function, array<f32, CREG_MAX>>) {}

fn add_regs(accs: ptr<function, array<Acc, CREG_MAX>>, x: ptr<function, array<f32, CREG_MAX>>, n: u32, s: u32, lab: u32, lse: vec2<f32>, tp0: Term, tp1: Term, tp2: Term, tp3: Term) {}

fn write_regs(lid: u32, n: u32, tile: u32, accs: ptr<function, array<Acc, CREG_MAX>>, pa2: vec4<f32>, pa3: vec4<f32>, nq: u32, sg: vec2<u32>) {}
