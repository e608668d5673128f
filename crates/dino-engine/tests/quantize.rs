//! `dino quantize` against llama.cpp's `llama-quantize`: SmolLM2-135M (Q4_1, fetched like
//! `dino pull`) is written as F16 by Dino, then quantized to Q8_0, Q4_K_M and Q3_K_M. Every
//! tensor's type and bytes must equal what `llama-quantize` (llama-cpp-python 0.3.36's build)
//! wrote from the same F16 file: `tests/data/quantize_smollm2_*.txt` hold its tensors as
//! `name type fnv1a64` (made with `examples/tensor_hashes.rs`). Equal bytes mean equal sizes,
//! equal quality and a file llama.cpp loads.
use dino_engine::quantize::{plan, quantize, Ftype, QuantizeOptions};
use dino_formats::gguf::{GgufFile, Value};
use std::path::Path;

fn opts(ftype: Ftype) -> QuantizeOptions {
    QuantizeOptions {
        ftype,
        pure: false,
        imatrix: None,
        imatrix_path: None,
        mix: None,
        threads: 2,
        progress: false,
    }
}

#[test]
fn quantized_tensors_equal_llama_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let src = dino_testutil::model("smollm2");
    let f16 = dir.path().join("smol-f16.gguf");
    let r = quantize(&src, &f16, &opts(Ftype::F16)).unwrap();
    // Q4_1 → F16 is exact: nothing counts as quantized twice.
    assert_eq!(r.requantized, 0);
    let g = GgufFile::open(&f16).unwrap();
    assert_eq!(
        g.metadata()
            .get("general.file_type")
            .and_then(Value::as_int),
        Some(1)
    );
    for ft in [Ftype::Q8_0, Ftype::Q4_K_M, Ftype::Q3_K_M] {
        let out = dir.path().join(format!("smol-{}.gguf", ft.name()));
        let r = quantize(&f16, &out, &opts(ft)).unwrap();
        dino_testutil::assert_tensors_match_golden(
            &out,
            &format!("quantize_smollm2_{}.txt", ft.name().to_ascii_lowercase()),
            ft.name(),
        );
        assert_eq!(
            r.bytes_out,
            GgufFile::open(&out)
                .unwrap()
                .tensors()
                .iter()
                .map(|t| t.size)
                .sum::<u64>()
        );
    }
}

/// The mixes' rules on SmolLM2's shapes (30 layers, rows of 576 = not whole 256-blocks, 1536 =
/// whole): the head shared with the embedding at Q8_0 (Q6_K does not fit), Q4_K_M's `ffn_down`
/// at Q6_K on `use_more_bits` layers and Q4_K elsewhere, its 576-wide matrices at Q5_0.
#[test]
fn mix_rules_on_smollm2_shapes() {
    let src = GgufFile::open(dino_testutil::model("smollm2")).unwrap();
    let types = plan(&src, Ftype::Q4_K_M, false, false);
    let ty = |name: &str| {
        let i = src.tensors().iter().position(|t| t.name == name).unwrap();
        types[i].name()
    };
    assert_eq!(ty("token_embd.weight"), "q8_0");
    assert_eq!(ty("output_norm.weight"), "f32");
    assert_eq!(ty("blk.0.ffn_down.weight"), "q6_K");
    assert_eq!(ty("blk.3.ffn_down.weight"), "q4_K");
    assert_eq!(ty("blk.5.ffn_down.weight"), "q6_K");
    assert_eq!(ty("blk.29.ffn_down.weight"), "q6_K");
    assert_eq!(ty("blk.7.attn_q.weight"), "q5_0");
    let pure = plan(&src, Ftype::Q4_K_M, true, false);
    let i = src
        .tensors()
        .iter()
        .position(|t| t.name == "blk.0.ffn_down.weight")
        .unwrap();
    assert_eq!(pure[i].name(), "q4_K", "--pure: no mix rule");
}

/// Bad input: a truncated file, a missing one and the input as output give errors that name
/// the problem; Q2_K_S without an importance matrix is refused as llama.cpp refuses it.
#[test]
fn bad_input_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = dino_testutil::model("smollm2");
    let bytes = std::fs::read(&src).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let out = dir.path().join("out.gguf");
    let e = quantize(&cut, &out, &opts(Ftype::Q8_0)).unwrap_err();
    assert!(!e.to_string().is_empty());
    assert!(!out.exists());
    let e = quantize(&dir.path().join("none.gguf"), &out, &opts(Ftype::Q8_0)).unwrap_err();
    assert!(e.to_string().contains("none.gguf"), "{e}");
    let e = quantize(&src, &src, &opts(Ftype::Q8_0)).unwrap_err();
    assert!(e.to_string().contains("overwrite"), "{e}");
    let e = quantize(&src, &out, &opts(Ftype::Q2_K_S)).unwrap_err();
    assert!(e.to_string().contains("imatrix"), "{e}");
}

/// KL divergence against the F16 original: zero for the original itself (every top token the
/// same), and growing as bits go: Q8_0 < Q4_K_M < Q3_K_M, with the PPL ratio ordered alike.
#[test]
fn kl_divergence_orders_the_quantizations() {
    use dino_engine::{kl_divergence, Engine, EngineOptions, PerplexityOptions};
    let dir = tempfile::tempdir().unwrap();
    let f16 = dir.path().join("f16.gguf");
    quantize(&dino_testutil::model("smollm2"), &f16, &opts(Ftype::F16)).unwrap();
    let text = std::fs::read_to_string(dino_testutil::hamlet()).unwrap();
    let load = |p: &Path| {
        Engine::load(
            p,
            &EngineOptions {
                threads: 2,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let po = PerplexityOptions {
        n_ctx: 256,
        max_chunks: Some(2),
        n_batch: 256,
    };
    let base = load(&f16);
    let own = kl_divergence(&base, &base, &text, &po, |_, _, _| {}).unwrap();
    assert_eq!(own.kld_mean, 0.0);
    assert_eq!(own.same_top, 1.0);
    assert_eq!(own.ppl_ratio, 1.0);
    let mut last = (0.0, 1.0);
    for ft in [Ftype::Q8_0, Ftype::Q4_K_M, Ftype::Q3_K_M] {
        let out = dir.path().join(format!("{}.gguf", ft.name()));
        quantize(&f16, &out, &opts(ft)).unwrap();
        let r = kl_divergence(&load(&out), &base, &text, &po, |_, _, _| {}).unwrap();
        eprintln!(
            "{}: KLD {:.5} ± {:.5}, same top {:.2} %, PPL ratio {:.4}",
            ft.name(),
            r.kld_mean,
            r.kld_err,
            100.0 * r.same_top,
            r.ppl_ratio
        );
        assert_eq!(r.n_scored, 2 * 127);
        assert!(
            r.kld_mean > last.0,
            "{}: KLD {} not above {}",
            ft.name(),
            r.kld_mean,
            last.0
        );
        assert!(
            r.ppl_ratio > last.1 - 0.01,
            "{}: PPL ratio {}",
            ft.name(),
            r.ppl_ratio
        );
        last = (r.kld_mean, r.ppl_ratio);
    }
}
