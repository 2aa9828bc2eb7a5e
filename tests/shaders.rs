//! Every kernel parses and validates with naga and translates to SPIR-V (Vulkan), MSL (Metal),
//! HLSL (DX12) and GLSL (OpenGL ES 3.1 / desktop 4.3): how Linux CI proves the other back ends compile.

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use segloss::shaders::{Access, Binding, Kernel, KERNELS, SHARED_CONSTANTS};

/// One specialization: the override constants of `common.wgsl`, all of them named (bools as 0/1).
#[allow(clippy::too_many_arguments)]
fn constants(
    softmax: bool,
    kinds: u32,
    nterms: u32,
    sensspec: bool,
    lovasz: u32,
    validate: u32,
    region: bool,
    accum: bool,
    wide: bool,
) -> naga::back::PipelineConstants {
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    [
        ("SOFTMAX", b(softmax)),
        ("KINDS", f64::from(kinds)),
        ("NTERMS", f64::from(nterms)),
        ("SENSSPEC", b(sensspec)),
        ("LOVASZ", f64::from(lovasz)),
        ("VALIDATE", f64::from(validate)),
        ("REGION", b(region)),
        ("ACCUM", b(accum)),
        ("WIDE", b(wide)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Specializations to translate: every kernel is built per combination of these constants.
///
/// The pixel-loss and Lovász constants are crossed with SOFTMAX under the defaults of the others
/// (no input checks, region coefficients present, output overwritten); a few representative
/// combinations then cover VALIDATE (0 and all checks), REGION and ACCUM in both states, with
/// each activation, rather than the full cross product.
fn specializations(k: &Kernel) -> Vec<naga::back::PipelineConstants> {
    if !k.specialized {
        return vec![Default::default()];
    }
    let mut out = Vec::new();
    for softmax in [false, true] {
        for (kinds, nterms) in [(0, 0), (1, 1), (3, 2), (15, 4), (12, 3)] {
            for (sensspec, lovasz) in [(false, 0), (true, 1), (false, 2)] {
                // the wide statistics tiles of CPU adapters with the sigmoid pixel losses, and
                // their gradient's threads of the most pixels
                let wide = !softmax && sensspec;
                let mut c = constants(softmax, kinds, nterms, sensspec, lovasz, 0, true, false, wide);
                if wide {
                    c.insert("GPIX".to_string(), shared("GPIX_MAX") as f64);
                } else if softmax && lovasz == 0 {
                    // a CPU adapter's softmax gradient without Lovász (gpu::GRAD_PIX_SOFTMAX_CPU)
                    c.insert("GPIX".to_string(), 8.0);
                }
                out.push(c);
            }
        }
        for (kinds, nterms, sensspec, lovasz, validate, region, accum) in [
            (15, 4, true, 1, 15, true, false),  // every check with every term
            (3, 2, false, 2, 15, false, true),  // checks, no region coefficients, added to the output
            (0, 0, false, 1, 15, false, false), // checks, Lovász alone
            (12, 3, true, 0, 0, true, true),    // no checks, region and pixel losses added to the output
            (0, 0, false, 0, 0, false, true),   // nothing but the (empty) accumulation
        ] {
            out.push(constants(
                softmax,
                kinds,
                nterms,
                sensspec,
                lovasz,
                validate,
                region,
                accum,
                !softmax && validate != 0,
            ));
        }
    }
    // the confusion counts of the hard predictions in the statistics pass, with each activation
    for softmax in [false, true] {
        let mut c = constants(softmax, 3, 2, false, 0, 15, true, false, !softmax);
        c.insert("COUNTS".to_string(), 1.0);
        out.push(c);
    }
    // a CPU adapter's softmax with the classes in registers (CREG: 21 classes, and the most), with
    // checks, confusion counts, fused cross-entropy and every pixel term
    for (creg, kinds, nterms, validate) in [(21, 3, 2, 15), (shared("CREG_MAX"), 15, 4, 0), (3, 12, 3, 15)] {
        let mut c = constants(true, kinds, nterms, true, 0, validate, true, false, true);
        c.insert("CREG".to_string(), creg as f64);
        c.insert("COUNTS".to_string(), 1.0);
        c.insert("FUSED".to_string(), 1.0);
        c.insert("LSE".to_string(), f64::from(u8::from(validate == 0)));
        // (gpu::GRAD_PIX_SOFTMAX_REGS)
        c.insert("GPIX".to_string(), 16.0);
        // the long statistics tiles (gpu::STATS_PIX_LONG)
        c.insert("SPIX".to_string(), shared("PIX_LONG") as f64);
        // the softmax region lines with their slope (21 classes) and without (the others)
        c.insert("SLOPE".to_string(), f64::from(u8::from(creg == 21)));
        out.push(c);
    }
    // cross-entropy alone in a softmax statistics pass (every slot ce, with and without checks)
    for (nterms, validate) in [(1, 0), (4, 15)] {
        let mut c = constants(true, 1 << 2, nterms, false, 0, validate, false, false, false);
        c.insert("PIXEL_ONLY".to_string(), 1.0);
        out.push(c);
    }
    out
}

/// The value of a constant of [`SHARED_CONSTANTS`].
fn shared(name: &str) -> u64 {
    SHARED_CONSTANTS.iter().find(|(n, _)| *n == name).map(|&(_, v)| v).expect(name)
}

/// Every specialization of kernel `k`, overrides resolved, validated.
fn modules(k: &Kernel) -> Vec<(naga::Module, naga::valid::ModuleInfo)> {
    let (m, info) = module(k);
    specializations(k)
        .iter()
        .map(|c| {
            let (m2, i2) = naga::back::pipeline_constants::process_overrides(&m, &info, None, c)
                .unwrap_or_else(|e| panic!("{}: overrides {c:?}: {e}", k.name));
            (m2.into_owned(), i2.into_owned())
        })
        .collect()
}

fn module(k: &Kernel) -> (naga::Module, naga::valid::ModuleInfo) {
    let m = naga::front::wgsl::parse_str(k.source)
        .unwrap_or_else(|e| panic!("{}: WGSL parse error:\n{}", k.name, e.emit_to_string(k.source)));
    // The WebGPU baseline: no optional capabilities; subgroup operations for the kernels built
    // only where the device has them
    let caps = if k.uses_subgroups() { Capabilities::SUBGROUP } else { Capabilities::empty() };
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&m)
        .unwrap_or_else(|e| panic!("{}: validation error:\n{}", k.name, e.emit_to_string(k.source)));
    (m, info)
}

#[test]
fn kernels_validate_without_optional_capabilities() {
    // (but subgroup operations in the kernels that take them, and only there)
    let sg: Vec<&str> = KERNELS.iter().filter(|k| k.uses_subgroups()).map(|k| k.name).collect();
    assert_eq!(sg, ["stats_sg", "stats_sg_regs"]);
    for k in KERNELS {
        let (m, _) = module(k);
        assert!(
            m.entry_points.iter().any(|e| e.name == k.entry && e.stage == naga::ShaderStage::Compute),
            "{}: no compute entry {}",
            k.name,
            k.entry
        );
    }
}

#[test]
fn kernels_translate_to_spirv() {
    for k in KERNELS {
        for (m, info) in modules(k) {
            let words = spv::write_vec(&m, &info, &spv::Options::default(), None)
                .unwrap_or_else(|e| panic!("{}: SPIR-V: {e}", k.name));
            assert_eq!(words[0], 0x0723_0203, "{}: not a SPIR-V module", k.name);
        }
    }
}

#[test]
fn kernels_translate_to_msl() {
    for k in KERNELS {
        for (m, info) in modules(k) {
            let (src, _) = msl::write_string(&m, &info, &msl::Options::default(), &msl::PipelineOptions::default())
                .unwrap_or_else(|e| panic!("{}: MSL: {e}", k.name));
            assert!(src.contains("kernel void"), "{}: no MSL kernel", k.name);
        }
    }
}

#[test]
fn kernels_translate_to_hlsl() {
    for k in KERNELS {
        for (m, info) in modules(k) {
            let mut out = String::new();
            let opts = hlsl::Options::default();
            let popts = hlsl::PipelineOptions::default();
            hlsl::Writer::new(&mut out, &opts, &popts)
                .write(&m, &info, None)
                .unwrap_or_else(|e| panic!("{}: HLSL: {e}", k.name));
            assert!(out.contains("[numthreads("), "{}: no HLSL compute entry", k.name);
        }
    }
}

#[test]
fn kernels_translate_to_glsl() {
    for k in KERNELS {
        for (m, info) in modules(k) {
            for version in [glsl::Version::Embedded { version: 310, is_webgl: false }, glsl::Version::Desktop(430)] {
                let mut out = String::new();
                let opts = glsl::Options { version, ..Default::default() };
                let popts = glsl::PipelineOptions {
                    shader_stage: naga::ShaderStage::Compute,
                    entry_point: k.entry.to_string(),
                    multiview: None,
                };
                glsl::Writer::new(&mut out, &m, &info, &opts, &popts, Default::default())
                    .and_then(|mut w| w.write())
                    .unwrap_or_else(|e| panic!("{}: GLSL {version:?}: {e}", k.name));
                assert!(out.contains("layout(local_size_x"), "{}: no GLSL compute layout", k.name);
            }
        }
    }
}

/// Whether a global's address space is what a binding declared `access` binds.
fn access_matches(access: Access, space: naga::AddressSpace) -> bool {
    use naga::{AddressSpace, StorageAccess};
    match (access, space) {
        (Access::Uniform, AddressSpace::Uniform) => true,
        (Access::Read, AddressSpace::Storage { access }) => access == StorageAccess::LOAD,
        (Access::ReadWrite, AddressSpace::Storage { access }) => access.contains(StorageAccess::STORE),
        _ => false,
    }
}

/// Where kernel `k`'s binding declarations and its WGSL disagree, one line each: every declared
/// binding i is the WGSL variable of that name at `@group(0) @binding(i)` with the declared
/// access, no name is declared twice, and the entry point uses no resource that is not declared.
fn binding_errors(k: &Kernel) -> Vec<String> {
    let mut errors = Vec::new();
    let mut err = |binding: String, what: String| errors.push(format!("{}: {binding}: {what}", k.name));
    for (i, b) in k.bindings.iter().enumerate() {
        if let Some(j) = k.bindings[..i].iter().position(|o| o.name == b.name) {
            err(format!("binding {i} `{}`", b.name), format!("name declared twice (also binding {j})"));
        }
    }
    let (m, info) = module(k);
    let Some(ep) = m.entry_points.iter().position(|e| e.name == k.entry) else {
        err("-".into(), format!("no entry point `{}`", k.entry));
        return errors;
    };
    for (i, b) in k.bindings.iter().enumerate() {
        let at = format!("binding {i} `{}` ({:?})", b.name, b.access);
        let here: Vec<_> = m
            .global_variables
            .iter()
            .map(|(_, g)| g)
            .filter(|g| g.binding.as_ref().is_some_and(|r| r.group == 0 && r.binding as usize == i))
            .collect();
        if here.is_empty() {
            let what = match m.global_variables.iter().find(|(_, g)| g.name.as_deref() == Some(b.name)) {
                Some((_, g)) => match &g.binding {
                    Some(r) => format!(
                        "no WGSL variable at @group(0) @binding({i}); `{}` is at @group({}) @binding({})",
                        b.name, r.group, r.binding
                    ),
                    None => format!("WGSL `{}` has no binding", b.name),
                },
                None => format!("no WGSL variable at @group(0) @binding({i}), none named `{}`", b.name),
            };
            err(at.clone(), what);
        }
        for g in here {
            let name = g.name.as_deref().unwrap_or("<unnamed>");
            if name != b.name {
                err(at.clone(), format!("the WGSL variable at @group(0) @binding({i}) is `{name}`"));
            }
            if !access_matches(b.access, g.space) {
                err(at.clone(), format!("WGSL `{name}` is {:?}", g.space));
            }
        }
    }
    // What the entry point (and every function it calls) uses.
    let uses = info.get_entry_point(ep);
    for (h, g) in m.global_variables.iter() {
        if uses[h].is_empty() {
            continue;
        }
        let name = g.name.as_deref().unwrap_or("<unnamed>");
        match &g.binding {
            Some(r) if r.group != 0 || r.binding as usize >= k.bindings.len() => err(
                format!("@group({}) @binding({}) `{name}`", r.group, r.binding),
                format!("used by the entry point, not declared (group 0 has {} bindings)", k.bindings.len()),
            ),
            None if !matches!(g.space, naga::AddressSpace::Private | naga::AddressSpace::WorkGroup) => {
                err(format!("`{name}`"), format!("used {:?} variable without a binding", g.space))
            }
            _ => {}
        }
    }
    errors
}

/// The variant CPU adapters build (uniforms as read-only storage) validates, translates to
/// SPIR-V (lavapipe runs it) and binds each former uniform as read-only storage.
#[test]
fn cpu_storage_variants_validate_and_bind_storage() {
    let marked: Vec<&Kernel> = KERNELS.iter().filter(|k| k.cpu_storage_params).collect();
    assert!(marked.iter().any(|k| k.name == "finalize"), "finalize binds its parameters as storage on CPU adapters");
    for k in marked {
        let src: &'static str = String::leak(k.source_for(true).into_owned());
        assert!(!src.contains("var<uniform>"), "{}: a uniform is left", k.name);
        let bindings: Vec<Binding> = k
            .bindings
            .iter()
            .map(|b| Binding { access: if b.access == Access::Uniform { Access::Read } else { b.access }, ..*b })
            .collect();
        let variant = Kernel { source: src, bindings: Vec::leak(bindings), ..*k };
        let errors = binding_errors(&variant);
        assert!(errors.is_empty(), "{}: {}", k.name, errors.join("\n"));
        for (m, info) in modules(&variant) {
            spv::write_vec(&m, &info, &spv::Options::default(), None)
                .unwrap_or_else(|e| panic!("{} (storage parameters): SPIR-V: {e}", k.name));
        }
    }
}

#[test]
fn bindings_match_the_wgsl() {
    let errors: Vec<_> = KERNELS.iter().flat_map(binding_errors).collect();
    assert!(errors.is_empty(), "kernel bindings do not match the WGSL:\n{}", errors.join("\n"));
}

/// The value of a constant's initializer, when it is a non-negative integral scalar.
fn constant_value(m: &naga::Module, c: &naga::Constant) -> Result<u64, String> {
    use naga::Literal as L;
    let naga::Expression::Literal(lit) = m.global_expressions[c.init] else {
        return Err(format!("not a literal: {:?}", m.global_expressions[c.init]));
    };
    let v = match lit {
        L::U32(v) => Some(u64::from(v)),
        L::U64(v) => Some(v),
        L::I32(v) => u64::try_from(v).ok(),
        L::I64(v) | L::AbstractInt(v) => u64::try_from(v).ok(),
        L::F32(v) if v >= 0.0 && v.fract() == 0.0 => Some(v as u64),
        L::F64(v) | L::AbstractFloat(v) if v >= 0.0 && v.fract() == 0.0 => Some(v as u64),
        _ => None,
    };
    v.ok_or_else(|| format!("not a non-negative integer: {lit:?}"))
}

/// Where `shared` and the WGSL of `kernels` disagree, one line each: every shared constant has
/// its Rust value in each kernel that declares a constant of that name, and some kernel declares
/// it (so a constant renamed on either side is caught).
fn constant_errors(kernels: &[Kernel], shared: &[(&str, u64)]) -> Vec<String> {
    let modules: Vec<_> = kernels.iter().map(|k| (k.name, module(k).0)).collect();
    let mut errors = Vec::new();
    for &(name, value) in shared {
        let mut declared = false;
        for (kernel, m) in &modules {
            for (_, c) in m.constants.iter().filter(|(_, c)| c.name.as_deref() == Some(name)) {
                declared = true;
                match constant_value(m, c) {
                    Ok(v) if v == value => {}
                    Ok(v) => errors.push(format!("{kernel}: const {name} = {v} in the WGSL, {value} in Rust")),
                    Err(e) => errors.push(format!("{kernel}: const {name}: {e} (Rust: {value})")),
                }
            }
        }
        if !declared {
            errors.push(format!("{name}: no kernel declares a constant of that name (Rust: {value})"));
        }
    }
    errors
}

#[test]
fn shared_constants_match_the_wgsl() {
    let errors = constant_errors(KERNELS, SHARED_CONSTANTS);
    assert!(errors.is_empty(), "shared constants do not match the WGSL:\n{}", errors.join("\n"));
}

/// `kernel` with its bindings replaced (leaked: the declarations are `'static`).
fn with_bindings(k: &Kernel, f: impl FnOnce(&mut Vec<Binding>)) -> Kernel {
    let mut b = k.bindings.to_vec();
    f(&mut b);
    Kernel { bindings: Vec::leak(b), ..*k }
}

/// `kernel` with `from` replaced by `to` in its WGSL (leaked).
fn with_source(k: &Kernel, from: &str, to: &str) -> Kernel {
    assert!(k.source.contains(from), "{}: no `{from}` to replace", k.name);
    Kernel { source: String::leak(k.source.replacen(from, to, 1)), ..*k }
}

/// The two checks above fail on the mistakes they are there for (mutated copies of real kernels;
/// positions are looked up by name, so a reordered declaration keeps this test meaningful).
#[test]
fn the_checks_catch_mismatches() {
    use segloss::shaders::{GRAD, LOVASZ_KEYS, RADIX_COUNT, STATS};
    let fails = |k: Kernel, expect: &str| {
        let e = binding_errors(&k);
        assert!(e.iter().any(|e| e.contains(expect)), "{}: expected an error with `{expect}`, got {e:?}", k.name);
    };
    let at = |k: &Kernel, name: &str| k.binding(name).unwrap_or_else(|| panic!("{}: no `{name}`", k.name)) as usize;
    let (logits, tgt, status) = (at(&STATS, "logits"), at(&STATS, "tgt"), at(&STATS, "status"));

    // Two names of the same access swapped: each is reported at its binding.
    fails(
        with_bindings(&STATS, |b| b.swap(logits, tgt)),
        &format!("binding {logits} `tgt` (Read): the WGSL variable at @group(0) @binding({logits}) is `logits`"),
    );
    // Access changed on either side.
    fails(
        with_bindings(&STATS, |b| b[status].access = Access::Read),
        &format!("binding {status} `status` (Read): WGSL `status` is Storage"),
    );
    fails(with_bindings(&GRAD, |b| b[at(&GRAD, "P")].access = Access::Read), "`P` (Read): WGSL `P` is Uniform");
    fails(
        with_bindings(&GRAD, |b| b[at(&GRAD, "elem_out")].access = Access::Uniform),
        "`elem_out` (Uniform): WGSL `elem_out` is Storage",
    );
    fails(
        with_source(&GRAD, "var<storage, read> coefs", "var<storage, read_write> coefs"),
        "`coefs` (Read): WGSL `coefs` is Storage",
    );
    // A used binding left out of the declaration.
    let grad = at(&GRAD, "elem_out");
    fails(
        with_bindings(&GRAD, |b| b.truncate(grad)),
        &format!("@group(0) @binding({grad}) `elem_out`: used by the entry point, not declared"),
    );
    // A binding declared that the WGSL lacks.
    let n = LOVASZ_KEYS.bindings.len();
    fails(
        with_bindings(&LOVASZ_KEYS, |b| b.push(Binding { name: "extra", access: Access::Read })),
        &format!("binding {n} `extra` (Read): no WGSL variable at @group(0) @binding({n}), none named `extra`"),
    );
    // A name declared twice.
    let (keys_in, vals_in) = (at(&RADIX_COUNT, "keys_in"), at(&RADIX_COUNT, "vals_in"));
    fails(
        with_bindings(&RADIX_COUNT, |b| b[vals_in].name = "keys_in"),
        &format!("binding {vals_in} `keys_in`: name declared twice (also binding {keys_in})"),
    );
    // The WGSL moved a used variable to another group or number.
    let decl = format!("@group(0) @binding({status})");
    fails(
        with_source(&STATS, &decl, &format!("@group(1) @binding({status})")),
        &format!("@group(1) @binding({status}) `status`: used by the entry point, not declared"),
    );
    fails(
        with_source(&STATS, &decl, "@group(0) @binding(99)"),
        &format!("no WGSL variable at @group(0) @binding({status}); `status` is at @group(0) @binding(99)"),
    );
    // A kernel whose entry point is not in its source.
    fails(Kernel { entry: "stats2", ..STATS }, "no entry point `stats2`");

    let shared = |s: &[(&str, u64)]| constant_errors(&[STATS, GRAD], s);
    assert_eq!(shared(&[("K", 16), ("GWG", 256), ("V_SOFT", 8)]), Vec::<String>::new());
    let e = shared(&[("K", 17)]);
    assert!(e.iter().any(|e| e.contains("stats: const K = 16 in the WGSL, 17 in Rust")), "{e:?}");
    assert!(e.iter().any(|e| e.contains("gradient: const K = 16 in the WGSL, 17 in Rust")), "{e:?}");
    let e = shared(&[("KK", 16)]);
    assert!(e.iter().any(|e| e.contains("KK: no kernel declares a constant of that name")), "{e:?}");
    let e = constant_errors(&[with_source(&STATS, "const PIX: u32 = 16u;", "const PIX: u32 = 8u;")], &[("PIX", 16)]);
    assert!(e.iter().any(|e| e.contains("stats: const PIX = 8 in the WGSL, 16 in Rust")), "{e:?}");
}

/// Expands the `// @unroll TEMPLATE` blocks of a shader source: each such line is followed by
/// TEMPLATE once per class register k in 0..CREG_MAX (`#k` replaced by k), then `// @end`. WGSL
/// has no macros, and lavapipe does not unroll loops: these blocks are how the kernels index a
/// pixel's logits by constants only, which keeps them in registers.
fn expand_unrolls(src: &str, n: u64) -> Result<String, String> {
    let mut out = Vec::new();
    let mut lines = src.split('\n').enumerate();
    while let Some((i, line)) = lines.next() {
        out.push(line.to_string());
        let Some((indent, template)) = line.split_once("// @unroll ") else { continue };
        if !indent.trim().is_empty() {
            continue;
        }
        loop {
            match lines.next() {
                Some((_, l)) if l.trim() == "// @end" => {
                    out.extend((0..n).map(|k| format!("{indent}{}", template.replace("#k", &k.to_string()))));
                    out.push(l.to_string());
                    break;
                }
                Some(_) => {}
                None => return Err(format!("line {}: @unroll without // @end", i + 1)),
            }
        }
    }
    Ok(out.join("\n"))
}

/// Every `@unroll` block of `shaders/` holds its expansion. `SEGLOSS_WRITE_UNROLL=1 cargo test
/// --test shaders unrolled` rewrites the blocks after a template changed.
#[test]
fn unrolled_blocks_match_their_templates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let write = std::env::var_os("SEGLOSS_WRITE_UNROLL").is_some();
    let mut stale = Vec::new();
    let mut blocks = 0;
    for entry in std::fs::read_dir(&dir).expect("shaders/") {
        let path = entry.expect("shaders/ entry").path();
        if path.extension().is_none_or(|e| e != "wgsl") {
            continue;
        }
        let src = std::fs::read_to_string(&path).expect("read shader");
        blocks += src.matches("// @unroll ").count();
        let expanded = expand_unrolls(&src, shared("CREG_MAX")).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if expanded != src {
            if write {
                std::fs::write(&path, expanded).expect("write shader");
            } else {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(blocks > 0, "no @unroll blocks found in {}", dir.display());
    assert!(stale.is_empty(), "@unroll blocks out of date (rerun with SEGLOSS_WRITE_UNROLL=1): {stale:?}");
}

#[test]
fn unroll_expansion_repeats_the_template_per_class() {
    let src = "a\n    // @unroll x[#k] = f(#ku);\n    old\n    // @end\nb";
    assert_eq!(
        expand_unrolls(src, 3).unwrap(),
        "a\n    // @unroll x[#k] = f(#ku);\n    x[0] = f(0u);\n    x[1] = f(1u);\n    x[2] = f(2u);\n    // @end\nb"
    );
    assert!(expand_unrolls("// @unroll x\n", 2).is_err());
}
