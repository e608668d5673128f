//! Quantized KV caches (`--cache-type-k/-v q8_0|q4_0`) on a real model (SmolLM2-135M, head size
//! 64): perplexity against the f16 cache's, through the prompt path (batches of 512: the cache
//! gathered to f32) and through the decode kernel (batches of 32: the blocks read in place);
//! the cache's memory; a head size the blocks do not divide refused at load.

use dino_engine::{perplexity, Engine, EngineOptions, KvCache, KvType, KvTypes, PerplexityOptions};

fn load(types: KvTypes) -> Engine {
    Engine::load(
        dino_testutil::model("smollm2"),
        &EngineOptions {
            threads: 2,
            kv_types: types,
            ..Default::default()
        },
    )
    .expect("model loads")
}

fn hamlet() -> String {
    let text = std::fs::read_to_string(dino_testutil::hamlet()).unwrap();
    text.strip_suffix('\n').unwrap_or(&text).to_string()
}

/// Perplexity of the first two chunks of hamlet.txt at ctx 512, in batches of `n_batch`.
fn ppl(engine: &Engine, text: &str, n_batch: usize) -> f64 {
    let opts = PerplexityOptions {
        n_ctx: 512,
        max_chunks: Some(2),
        n_batch,
    };
    perplexity(engine, text, &opts, |_, _, _| {}).unwrap().ppl
}

/// Q8_0 keys and values stay within 1 % of the f16 cache's perplexity, Q4_0 within 5 %, the
/// mixed pairings between, on both attention paths; the decode kernel and the prompt path agree
/// on every cache type.
#[test]
fn quantized_kv_perplexity_tracks_the_f16_cache() {
    use KvType::*;
    let text = hamlet();
    let base = ppl(&load(KvTypes::F16), &text, 512);
    let base_decode = ppl(&load(KvTypes::F16), &text, 32);
    eprintln!("f16: PPL {base:.4} (prompt path), {base_decode:.4} (decode kernel)");
    assert!((base_decode - base).abs() / base < 0.005);
    for (k, v, tol) in [
        (Q8_0, Q8_0, 0.01),
        (Q8_0, F16, 0.01),
        (F16, Q8_0, 0.01),
        (Q4_0, Q4_0, 0.05),
        (Q8_0, Q4_0, 0.05),
    ] {
        let engine = load(KvTypes { k, v });
        for n_batch in [512, 32] {
            let got = ppl(&engine, &text, n_batch);
            let rel = (got - base).abs() / base;
            eprintln!(
                "k {k} v {v}, batches of {n_batch}: PPL {got:.4} vs f16 {base:.4} ({:+.3} %)",
                100.0 * (got - base) / base
            );
            assert!(
                rel < tol,
                "k {k} v {v}, batches of {n_batch}: PPL {got} vs f16 {base}"
            );
        }
    }
}

/// The cache's memory follows its types: Q8_0 is 34/64 of f16's, Q4_0 18/64; the engine's
/// block size and `bytes_for` agree with the cache it makes.
#[test]
fn kv_memory_follows_the_types() {
    let f16 = load(KvTypes::F16);
    let f16_bytes = f16.new_kv(512).unwrap().bytes();
    // 30 layers × 3 KV heads × 64 values × 512 positions × K and V × 2 bytes.
    assert_eq!(f16_bytes, 30 * 3 * 64 * 512 * 2 * 2);
    for (t, frac) in [(KvType::Q8_0, 34.0 / 64.0), (KvType::Q4_0, 18.0 / 64.0)] {
        let types = KvTypes { k: t, v: t };
        let e = load(types);
        let kv = e.new_kv(512).unwrap();
        assert_eq!(kv.types(), types);
        assert_eq!(kv.bytes() as f64, f16_bytes as f64 * frac, "{types}");
        assert_eq!(
            kv.bytes(),
            KvCache::bytes_for(e.model.kv_shape(), types, 512, 1).unwrap()
        );
        assert_eq!(kv.bytes(), e.kv_block_bytes() * (512 / 16));
        // The batched engine's paged pool takes the engine's types too.
        assert_eq!(e.new_kv_paged(512, 2, 10).unwrap().types(), types);
    }
}

/// A model whose head size (48) is not a whole number of 32-value blocks loads with an f16
/// cache, and is refused with an error naming the type and the head size for a quantized one.
#[test]
fn a_head_size_the_blocks_do_not_divide_is_refused() {
    use dino_testutil::random_model::{write_random_model, Shape};
    let dir = std::env::temp_dir().join(format!("dino-kv-types-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("qwen3-hd48.gguf");
    let shape = Shape::arch_test("qwen3").unwrap();
    assert_eq!(shape.head_dim(), 48);
    write_random_model(&path, &shape, dino_core::GgmlType::F32, 3).unwrap();
    let opts = |k, v| EngineOptions {
        threads: 1,
        kv_types: KvTypes { k, v },
        ..Default::default()
    };
    let e = Engine::load(&path, &opts(KvType::F16, KvType::F16)).expect("an f16 cache is fine");
    let err = e
        .new_kv_typed(
            64,
            1,
            KvTypes {
                k: KvType::Q8_0,
                v: KvType::F16,
            },
        )
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("q8_0") && err.contains("48"), "{err}");
    for (k, v) in [(KvType::Q8_0, KvType::Q8_0), (KvType::F16, KvType::Q4_0)] {
        let err = Engine::load(&path, &opts(k, v))
            .err()
            .expect("refused")
            .to_string();
        eprintln!("{err}");
        assert!(
            err.contains("48") && err.contains("multiple of 32"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
