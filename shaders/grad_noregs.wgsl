// Stand-in for grad_regs.wgsl (see noregs.wgsl).

fn softmax_regs(n: u32, ni: u32, t0: u32, lid: u32) {}
