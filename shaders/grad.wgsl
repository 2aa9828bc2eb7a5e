// Elementwise gradient pass: d loss / d logits of a whole expression. Region losses arrive as
// per-(image, class) coefficients of d loss / d p that finalize.wgsl wrote on the device (the
// expression's coefficient block, bound as `coefs`), chained through the sigmoid or the softmax;
// pixel losses (bce, ce, focal) add their direct d / d x with the scales finalize resolved
// (coefs[2 t], coefs[2 t + 1]: scale and pos_weight of pixel term t). The output is a slice of
// any buffer (the caller's included): overwritten, or added to with ACCUM. Nothing is written
// when the statistics pass found bad input.

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> tgt: array<u32>;
@group(0) @binding(2) var<uniform> P: Params;
@group(0) @binding(3) var<storage, read> terms: array<Term>;
@group(0) @binding(4) var<storage, read> cw: array<f32>;
@group(0) @binding(5) var<storage, read> coefs: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad: array<f32>;
@group(0) @binding(7) var<storage, read> lw: array<f32>; // Lovász Jaccard weight per element
@group(0) @binding(8) var<storage, read> status: array<u32>; // bad-input flags of the statistics pass

const GWG: u32 = 256u;
const NCOEF: u32 = 5u;

// Pixel term t with the scale and pos_weight finalize resolved.
fn term(t: u32) -> Term {
    var tp = terms[t];
    tp.scale = coefs[2u * t];
    tp.pos_weight = coefs[2u * t + 1u];
    return tp;
}

// d loss / d p of the region losses for one element.
fn region_dp(n: u32, c: u32, p: f32, g: f32) -> f32 {
    if !REGION {
        return 0.0;
    }
    let o = P.region_base + (n * P.c + c) * NCOEF;
    let d = g - p;
    return coefs[o] * g + coefs[o + 1u] + 2.0 * coefs[o + 2u] * p
        - 2.0 * d * (coefs[o + 3u] * g + coefs[o + 4u] * (1.0 - g));
}

// Scale of the Lovász term for segment `seg`.
fn lovasz_scale(seg: u32) -> f32 {
    return coefs[P.lov_base + seg];
}

fn put(e: u32, d: f32) {
    if ACCUM {
        grad[e] += d;
    } else {
        grad[e] = d;
    }
}

// d loss / d p_c of the region and Lovász-Softmax terms for one element of a softmax pixel.
fn softmax_dp(n: u32, c: u32, e: u32, p: f32, g: f32) -> f32 {
    var u = region_dp(n, c, p, g);
    if LOVASZ != 0u {
        var seg = c;
        if LOVASZ == 2u {
            seg = n * P.c + c;
        }
        // d |g - p| / d p = sign(p - g), 0 where the error is 0
        u += lovasz_scale(seg) * lw[e] * sign(p - g);
    }
    return u;
}

@compute @workgroup_size(256)
fn gradient(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    // x (and z, for very large images) walk the pixels of image y: no integer division per thread.
    let s = (wid.x + wid.z * nwg.x) * GWG + lid;
    let n = wid.y;
    if s >= P.s || status[0] != 0u {
        return;
    }
    let idx = n * P.s + s;
    let cf = f32(P.c);
    if SOFTMAX {
        let lab = tword(idx);
        if lab == INVALID {
            for (var c = 0u; c < P.c; c++) {
                put((n * P.c + c) * P.s + s, 0.0);
            }
            return;
        }
        let lse = log_sum_exp(n, s);
        let nlq = lse - logits[(n * P.c + lab) * P.s + s]; // -log p_true
        var dot = 0.0;
        for (var c = 0u; c < P.c; c++) {
            let p = exp(logits[(n * P.c + c) * P.s + s] - lse);
            dot += p * softmax_dp(n, c, (n * P.c + c) * P.s + s, p, select(0.0, 1.0, lab == c));
        }
        for (var c = 0u; c < P.c; c++) {
            let e = (n * P.c + c) * P.s + s;
            let x = logits[e];
            let p = exp(x - lse);
            let g = select(0.0, 1.0, lab == c);
            var d = p * (softmax_dp(n, c, e, p, g) - dot);
            for (var t = 0u; t < NTERMS; t++) {
                let tp = term(t);
                if has(FOCAL_SIGMOID) && tp.kind == FOCAL_SIGMOID {
                    d += tp.scale * focal_sigmoid(x, g, tp).y;
                }
                if has(CE) && tp.kind == CE {
                    let ls = tp.label_smoothing;
                    d += tp.scale * ((1.0 - ls) * cw[t * P.c + lab] * (p - g) + ls / cf * (tp.weight_sum * p - cw[t * P.c + c]));
                }
                if has(FOCAL_SOFTMAX) && tp.kind == FOCAL_SOFTMAX {
                    d += tp.scale * focal_softmax(nlq, tp).y * (g - p);
                }
            }
            put(e, d);
        }
    } else {
        for (var c = 0u; c < P.c; c++) {
            let e = (n * P.c + c) * P.s + s;
            let tb = tword(e);
            if tb == INVALID {
                put(e, 0.0);
                continue;
            }
            let g = bitcast<f32>(tb);
            let x = logits[e];
            let pq = sigmoid2(x);
            let p = pq.x;
            let q = pq.y;
            var d = region_dp(n, c, p, g) * p * q;
            if LOVASZ != 0u {
                // hinge: d relu(1 - x (2g - 1)) / d x
                if hinge_error(x, g) > 0.0 {
                    d -= lovasz_scale(select(0u, n, LOVASZ == 2u)) * lw[e] * (2.0 * g - 1.0);
                }
            }
            for (var t = 0u; t < NTERMS; t++) {
                let tp = term(t);
                if has(BCE) && tp.kind == BCE {
                    let gs = g * (1.0 - tp.label_smoothing) + 0.5 * tp.label_smoothing;
                    d += tp.scale * ((1.0 - gs) * p - tp.pos_weight * gs * q);
                }
                if has(FOCAL_SIGMOID) && tp.kind == FOCAL_SIGMOID {
                    d += tp.scale * focal_sigmoid(x, g, tp).y;
                }
            }
            put(e, d);
        }
    }
}
