//! `dino prune` on a real model (SmolLM2-135M Q4_1): the written file keeps the source's bytes
//! for what it keeps, loads and runs; and the measured choices beat the alternatives: removing
//! the block of layers with the smallest angular distance costs less KL divergence than
//! removing the first layers, and keeping the FFN channels ranked by activation × weight costs
//! less than keeping as many channels at random.

use std::collections::BTreeMap;

use dino_engine::prune::{ffn_channels, measure, prune, PrunePlan};
use dino_engine::{kl_divergence, Engine, EngineOptions, PerplexityOptions};
use dino_formats::gguf::GgufFile;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

fn load(path: &std::path::Path) -> Engine {
    Engine::load(
        path,
        &EngineOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap()
}

fn opts() -> PerplexityOptions {
    PerplexityOptions {
        n_ctx: 128,
        max_chunks: Some(3),
        n_batch: 128,
    }
}

#[test]
fn measured_pruning_beats_the_alternatives_and_writes_a_loadable_file() {
    let model = dino_testutil::model("smollm2");
    let text = std::fs::read_to_string(dino_testutil::hamlet()).unwrap();
    let base = load(&model);
    let src = GgufFile::open(&model).unwrap();
    let stats = measure(&base, &text, &opts(), 2, |_, _, _| {}).unwrap();
    assert_eq!(stats.n_layer, 30);
    assert_eq!(stats.dist.len(), 2);
    assert_eq!(stats.dist[0].len(), 30);
    assert_eq!(stats.dist[1].len(), 29);
    assert!(stats
        .dist
        .iter()
        .flatten()
        .all(|d| (0.0..=1.0).contains(d) && *d > 0.0));
    assert_eq!(stats.ffn_sq.len(), 30);
    assert!(stats.ffn_sq.iter().all(|v| v.len() == 1536));

    let dir = tempfile::tempdir().unwrap();
    let kld = |plan: &PrunePlan, name: &str| {
        let out = dir.path().join(name);
        prune(&src, &out, plan, false).unwrap();
        let e = load(&out);
        kl_divergence(&e, &base, &text, &opts(), |_, _, _| {})
            .unwrap()
            .kld_mean
    };

    // Layers: the measured block against the first two layers.
    let (start, _) = stats.best_block(2).unwrap();
    assert!(start > 0, "the first layers turn the stream the most");
    let best = PrunePlan {
        layers: vec![start, start + 1],
        ffn_keep: None,
    };
    let first = PrunePlan {
        layers: vec![0, 1],
        ffn_keep: None,
    };
    let (k_best, k_first) = (kld(&best, "best.gguf"), kld(&first, "first.gguf"));
    eprintln!(
        "KLD: layers {start}, {} removed {k_best:.4}; layers 0, 1 {k_first:.4}",
        start + 1
    );
    assert!(
        k_best > 0.0 && k_best < 0.5 * k_first,
        "{k_best} vs {k_first}"
    );

    // FFN channels: by importance against at random, half of them kept.
    let kept = ffn_channels(&src, &stats, 0.5).unwrap();
    assert!(kept.values().all(|v| v.len() == 768));
    let mut rng = StdRng::seed_from_u64(5);
    let random: BTreeMap<usize, Vec<usize>> = (0..30)
        .map(|l| {
            let mut v: Vec<usize> = (0..1536).collect();
            v.shuffle(&mut rng);
            let mut v = v[..768].to_vec();
            v.sort_unstable();
            (l, v)
        })
        .collect();
    let ranked = PrunePlan {
        layers: vec![],
        ffn_keep: Some(kept.clone()),
    };
    let chance = PrunePlan {
        layers: vec![],
        ffn_keep: Some(random),
    };
    let (k_ranked, k_chance) = (kld(&ranked, "ranked.gguf"), kld(&chance, "chance.gguf"));
    eprintln!("KLD: half the FFN channels by importance {k_ranked:.4}, at random {k_chance:.4}");
    assert!(k_ranked < 0.7 * k_chance, "{k_ranked} vs {k_chance}");

    // Both at once: what is kept is the source's bytes, renumbered and cut.
    let both = PrunePlan {
        layers: vec![3, 4],
        ffn_keep: Some(kept.clone()),
    };
    let out = dir.path().join("both.gguf");
    let r = prune(&src, &out, &both, false).unwrap();
    assert_eq!((r.n_layer_out, r.n_ff_out), (28, 768));
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.metadata().get_u32("llama.block_count").unwrap(), 28);
    assert_eq!(
        f.metadata().get_u32("llama.feed_forward_length").unwrap(),
        768
    );
    assert_eq!(f.tensors().len(), src.tensors().len() - 2 * 9);
    // Layer 5 of the source is layer 3 of the output.
    let (_, a) = src.tensor("blk.5.attn_q.weight").unwrap();
    let (_, b) = f.tensor("blk.3.attn_q.weight").unwrap();
    assert_eq!(a, b);
    let (t, a) = src.tensor("blk.5.ffn_up.weight").unwrap();
    let (u, b) = f.tensor("blk.3.ffn_up.weight").unwrap();
    assert_eq!(u.dims, vec![576, 768]);
    let rb = t.ty.row_size(576).unwrap() as usize;
    for (i, &c) in kept[&5].iter().enumerate() {
        assert_eq!(&b[i * rb..(i + 1) * rb], &a[c * rb..(c + 1) * rb]);
    }
    let (d, _) = f.tensor("blk.3.ffn_down.weight").unwrap();
    assert_eq!(d.dims, vec![768, 576]);
    assert_eq!(f.tensor_info("blk.28.attn_q.weight"), None);
    let e = load(&out);
    assert_eq!(e.model.info().hparams.n_layer, 28);
    assert_eq!(e.model.info().hparams.n_ff, 768);

    // Bad plans are clear errors.
    let err = |p: PrunePlan| {
        prune(&src, &dir.path().join("bad.gguf"), &p, false)
            .unwrap_err()
            .to_string()
    };
    assert!(err(PrunePlan {
        layers: vec![30],
        ffn_keep: None
    })
    .contains("does not exist"));
    assert!(err(PrunePlan {
        layers: (0..30).collect(),
        ffn_keep: None
    })
    .contains("leaves none"));
    assert!(ffn_channels(&src, &stats, 0.0).is_err());
    assert!(ffn_channels(&src, &stats, 1.5).is_err());
    assert!(!dir.path().join("bad.gguf").exists());
}
