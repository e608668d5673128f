//! Activation sparsity on a real model (SmolLM2-135M Q4_1): thresholds from calibration, the
//! share of zeroed inputs they give, decode through the column layouts against the dense kernels
//! on the same zeroed inputs, and the cost in KL divergence rising with the level.

use dino_engine::sparsity::Thresholds;
use dino_engine::{Engine, EngineOptions, PerplexityOptions};
use dino_models::{Batch, Logits};

fn load(path: &std::path::Path, sparsity: Option<dino_models::Sparsity>) -> Engine {
    Engine::load(
        path,
        &EngineOptions {
            threads: 2,
            sparsity,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn sparse_decode_matches_the_dense_kernels_and_costs_little() {
    let model = dino_testutil::model("smollm2");
    let text = std::fs::read_to_string(dino_testutil::hamlet()).unwrap();
    let dense = load(&model, None);
    let opts = PerplexityOptions {
        n_ctx: 128,
        max_chunks: Some(4),
        n_batch: 128,
    };
    let (_, report) =
        dino_engine::imatrix::calibrate(&dense, &text, "hamlet", &opts, |_, _, _| {}).unwrap();
    let th: Thresholds = report.thresholds;
    assert_eq!(th.table.len(), 30 * 7);
    let tokens = dense
        .tokenizer
        .encode(&text[20_000..24_000], true, false)
        .unwrap();
    let tokens = &tokens[..48];

    let run_all = |s: Option<&dino_models::Sparsity>| {
        dense.model.set_sparsity(s).unwrap();
        let mut kv = dense.new_kv(64).unwrap();
        let mut all = Logits::default();
        dense
            .forward(&Batch::from_tokens(tokens, 0, 0, true), &mut kv, &mut all)
            .unwrap();
        dense.model.set_sparsity(None).unwrap();
        (0..tokens.len())
            .map(|i| all.row(i).to_vec())
            .collect::<Vec<_>>()
    };
    let base = run_all(None);
    // The calibrated thresholds zero about their share of the inputs of other text. At 40 %
    // the inputs are too dense for the column layouts to pay: none is built (no memory spent)
    // and the dense kernels run on the zeroed inputs; at 80 % most one-token products run by
    // columns.
    let mut k_cols = 0.0;
    for (level, shares, columns) in [(0.4, 0.3..0.5, 0.0..1e-9), (0.8, 0.65..0.92, 0.6..1.01)] {
        let sp = th.sparsity(level).unwrap();
        let sparse = load(&model, Some(sp.clone()));
        let mut kv = sparse.new_kv(64).unwrap();
        let mut one = Logits::default();
        let mut step_logits = Vec::new();
        for (p, &t) in tokens.iter().enumerate() {
            // One token at a time: the column layouts where they pay.
            sparse
                .forward(&Batch::from_tokens(&[t], p, 0, true), &mut kv, &mut one)
                .unwrap();
            step_logits.push(one.last().to_vec());
        }
        let measured = sparse.model.measured_sparsity().unwrap();
        assert!(shares.contains(&measured), "level {level}: {measured}");
        let by_columns = sparse.model.column_share().unwrap();
        assert!(
            columns.contains(&by_columns),
            "level {level}: {by_columns} by columns"
        );

        // The whole run at once: the dense kernels on zeroed inputs. Which inputs fall under a
        // threshold depends on every earlier rounding, so the two paths' masks part after a few
        // layers and their logits differ by more than rounding; their cost against the dense
        // model must be the same.
        let masked = run_all(Some(&sp));
        k_cols = mean_kld(&base, &step_logits);
        let k_masked = mean_kld(&base, &masked);
        eprintln!(
            "level {level}: measured {measured:.3}, by columns {by_columns:.3}; KLD from dense: \
             one token at a time {k_cols:.4}, whole run {k_masked:.4}"
        );
        assert!(
            k_cols < 1.5 * k_masked + 0.02 && k_masked < 1.5 * k_cols + 0.02,
            "level {level}: KLD from dense: column decode {k_cols}, dense kernels on zeroed \
             inputs {k_masked}"
        );
    }

    // Cost rises with the level; dense is free.
    let kld = |level: f32| mean_kld(&base, &run_all(Some(&th.sparsity(level).unwrap())));
    let (k0, k25, k50) = (kld(0.0), kld(0.25), kld(0.5));
    eprintln!("KLD at levels 0/0.25/0.5/0.8: {k0:.2e} {k25:.4} {k50:.4} {k_cols:.4}");
    assert!(k0 < 1e-9, "{k0}");
    assert!(k25 > 0.0 && k25 < k50, "{k25} {k50}");
    assert!(k25 < 0.2, "25 % sparsity on SmolLM2: KLD {k25}");
}

/// Mean KL divergence of the rows of `q` from those of `p`.
fn mean_kld(p: &[Vec<f32>], q: &[Vec<f32>]) -> f64 {
    let lp = |r: &[f32]| {
        let m = r.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let s: f64 = r.iter().map(|&x| (x as f64 - m).exp()).sum();
        r.iter()
            .map(|&x| x as f64 - m - s.ln())
            .collect::<Vec<f64>>()
    };
    p.iter()
        .zip(q)
        .map(|(a, b)| {
            let (a, b) = (lp(a), lp(b));
            a.iter()
                .zip(&b)
                .map(|(x, y)| x.exp() * (x - y))
                .sum::<f64>()
        })
        .sum::<f64>()
        / p.len() as f64
}
