//! Every kernel parses and validates with naga and translates to SPIR-V (Vulkan), MSL (Metal),
//! HLSL (DX12) and GLSL (OpenGL ES 3.1 / desktop 4.3): how Linux CI proves the other back ends compile.

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use segloss::shaders::KERNELS;

/// Specializations to translate: every kernel is built per combination of these constants.
fn specializations(k: &segloss::shaders::Kernel) -> Vec<naga::back::PipelineConstants> {
    if !k.specialized {
        return vec![Default::default()];
    }
    let mut out = Vec::new();
    for softmax in [0.0, 1.0] {
        for (kinds, nterms) in [(0.0, 0.0), (1.0, 1.0), (3.0, 2.0), (15.0, 4.0), (12.0, 3.0)] {
            for (sensspec, lovasz) in [(0.0, 0.0), (1.0, 1.0), (0.0, 2.0)] {
                out.push(
                    [
                        ("SOFTMAX", softmax),
                        ("KINDS", kinds),
                        ("NTERMS", nterms),
                        ("SENSSPEC", sensspec),
                        ("LOVASZ", lovasz),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                );
            }
        }
    }
    out
}

/// Every specialization of kernel `k`, overrides resolved, validated.
fn modules(k: &segloss::shaders::Kernel) -> Vec<(naga::Module, naga::valid::ModuleInfo)> {
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

fn module(k: &segloss::shaders::Kernel) -> (naga::Module, naga::valid::ModuleInfo) {
    let m = naga::front::wgsl::parse_str(k.source)
        .unwrap_or_else(|e| panic!("{}: WGSL parse error:\n{}", k.name, e.emit_to_string(k.source)));
    // The WebGPU baseline: no optional capabilities.
    let info = Validator::new(ValidationFlags::all(), Capabilities::empty())
        .validate(&m)
        .unwrap_or_else(|e| panic!("{}: validation error:\n{}", k.name, e.emit_to_string(k.source)));
    (m, info)
}

#[test]
fn kernels_validate_without_optional_capabilities() {
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
