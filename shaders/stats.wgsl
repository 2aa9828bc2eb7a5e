// Fused statistics pass: reads logits and targets once and writes, per (image, tile, class), the
// workgroup partial of every sum the requested losses need. No atomics: reduce.wgsl adds the tiles
// in a fixed order, so the same input gives bit-identical sums on every run.

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> tgt: array<u32>;
@group(0) @binding(2) var<uniform> P: Params;
@group(0) @binding(3) var<storage, read> terms: array<Term>;
@group(0) @binding(4) var<storage, read> cw: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;

const WG: u32 = 128u;   // threads per workgroup
const PIX: u32 = 16u;   // pixels per thread: a tile is WG * PIX pixels of one image

var<workgroup> red: array<f32, 2048>; // K * WG

@compute @workgroup_size(128)
fn stats(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tile = wid.x;
    let n = wid.y;
    let base = tile * WG * PIX;
    // Per pixel: label (softmax) or 0 (sigmoid), INVALID when ignored or outside; log-sum-exp.
    var lab: array<u32, 16>;
    var lse: array<f32, 16>;
    for (var i = 0u; i < PIX; i++) {
        let s = base + i * WG + lid;
        lab[i] = INVALID;
        lse[i] = 0.0;
        if s < P.s {
            if P.mode == 1u {
                lab[i] = tgt[n * P.s + s];
                if lab[i] != INVALID {
                    lse[i] = log_sum_exp(n, s);
                }
            } else {
                lab[i] = 0u;
            }
        }
    }
    let cf = f32(P.c);
    for (var c = 0u; c < P.c; c++) {
        var acc: array<f32, 16>;
        for (var k = 0u; k < K; k++) {
            acc[k] = 0.0;
        }
        for (var i = 0u; i < PIX; i++) {
            if lab[i] == INVALID {
                continue;
            }
            let s = base + i * WG + lid;
            let e = (n * P.c + c) * P.s + s;
            let x = logits[e];
            var g: f32;
            var p: f32;
            var nlp: f32;      // -log p
            var nlq = 0.0;     // -log(1 - p), sigmoid only
            if P.mode == 1u {
                g = select(0.0, 1.0, lab[i] == c);
                nlp = lse[i] - x;
                p = exp(-nlp);
            } else {
                let tb = tgt[e];
                if tb == INVALID {
                    continue;
                }
                g = bitcast<f32>(tb);
                p = sigmoid(x);
                nlp = softplus(-x);
                nlq = softplus(x);
            }
            acc[0] += p * g;
            acc[1] += p;
            acc[2] += g;
            acc[3] += p * p;
            acc[4] += g * g;
            acc[5] += 1.0;
            if P.sensspec != 0u {
                let d = g - p;
                acc[6] += d * d * g;
                acc[7] += d * d * (1.0 - g);
            }
            for (var t = 0u; t < P.nterms; t++) {
                let tp = terms[t];
                let o = 8u + 2u * t;
                switch tp.kind {
                    case BCE: {
                        let gs = g * (1.0 - tp.label_smoothing) + 0.5 * tp.label_smoothing;
                        acc[o] += gs * nlp;
                        acc[o + 1u] += (1.0 - gs) * nlq;
                    }
                    case FOCAL_SIGMOID: {
                        acc[o] += focal_sigmoid(x, g, tp).x;
                    }
                    case CE: {
                        // class c's share of the pixel's (weighted, smoothed) cross-entropy
                        let wt = cw[t * P.c + lab[i]];
                        let q = (1.0 - tp.label_smoothing) * wt * g + tp.label_smoothing / cf * cw[t * P.c + c];
                        acc[o] += q * nlp;
                        acc[o + 1u] += wt * g;
                    }
                    case FOCAL_SOFTMAX: {
                        if lab[i] == c {
                            acc[o] += focal_softmax(nlp, tp).x;
                        }
                    }
                    default: {}
                }
            }
        }
        for (var k = 0u; k < P.nk; k++) {
            red[k * WG + lid] = acc[k];
        }
        workgroupBarrier();
        for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
            if lid < stride {
                for (var k = 0u; k < P.nk; k++) {
                    red[k * WG + lid] += red[k * WG + lid + stride];
                }
            }
            workgroupBarrier();
        }
        if lid == 0u {
            let o = ((n * P.tiles + tile) * P.c + c) * K;
            for (var k = 0u; k < P.nk; k++) {
                partials[o + k] = red[k * WG];
            }
        }
        workgroupBarrier();
    }
}
