//! Importance matrices: `dino calibrate`'s statistics on a real model (SmolLM2-135M, fetched like
//! `dino pull`), llama.cpp's imatrix file formats, and `dino quantize --imatrix` against
//! llama-quantize --imatrix.
//!
//! The quantization check uses a synthetic importance matrix (made here from the tensor names,
//! the same on every machine) so that its golden data does not depend on this machine's
//! activations: `tests/data/quantize_imatrix_smollm2_*.txt` hold the tensors llama-quantize
//! (llama-cpp-python 0.3.36's build) wrote from the same F16 file with the same imatrix file,
//! as `name type fnv1a64`. To remake them, run this test with `DINO_KEEP_IMATRIX=DIR`, which
//! leaves `DIR/synthetic.imatrix` and `DIR/f16.gguf` for llama-quantize.
use dino_engine::imatrix::{calibrate, Imatrix, ImatrixEntry};
use dino_engine::quantize::{quantize, Ftype, QuantizeOptions};
use dino_engine::{Engine, EngineOptions, PerplexityOptions};
use dino_formats::gguf::GgufFile;
use std::path::Path;

fn hashes(path: &Path) -> Vec<String> {
    dino_testutil::tensor_hashes(path).unwrap()
}

fn opts(ftype: Ftype, imatrix: Option<Imatrix>) -> QuantizeOptions {
    QuantizeOptions {
        ftype,
        pure: false,
        imatrix,
        imatrix_path: None,
        mix: None,
        threads: 2,
        progress: false,
    }
}

fn engine(p: &Path) -> Engine {
    Engine::load(
        p,
        &EngineOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap()
}

/// A deterministic importance matrix for every layer matrix of `file`: per channel
/// `sum = count · w` with `w` in [0.01, 4] from a xorshift seeded by the name (exact in f32,
/// so `sum / count` is `w` bit for bit), a few channels 0, and count 256.
fn synthetic(file: &GgufFile) -> Imatrix {
    let mut im = Imatrix {
        datasets: vec!["synthetic".into()],
        chunk_count: 1,
        chunk_size: 256,
        ..Imatrix::default()
    };
    for t in file.tensors() {
        if !t.name.starts_with("blk.") || t.dims.len() != 2 {
            continue;
        }
        let mut x = dino_testutil::fnv1a(t.name.as_bytes()) | 1;
        let sums = (0..t.dims[0])
            .map(|j| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if j % 97 == 5 {
                    return 0.0;
                }
                let u = (x >> 40) as f32 / (1u64 << 24) as f32; // [0, 1), 24 bits: exact
                256.0 * (0.01 + 4.0 * u * u)
            })
            .collect();
        im.entries.insert(
            t.name.clone(),
            ImatrixEntry {
                sums,
                counts: vec![256.0],
            },
        );
    }
    im
}

/// `dino quantize --imatrix` writes the same tensors as llama-quantize --imatrix with the same
/// importance file: the weighted Q4_0, Q4_1, Q5_0, Q4_K, Q5_K and Q2_K quantizers and the
/// imatrix-only mix rule (Q4_0 files raise the first eighth of ffn_down to Q4_1). The file
/// round-trips through llama.cpp's GGUF imatrix format on the way.
#[test]
fn imatrix_quantization_equals_llama_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let f16 = dir.path().join("f16.gguf");
    quantize(
        &dino_testutil::model("smollm2"),
        &f16,
        &opts(Ftype::F16, None),
    )
    .unwrap();
    let im = synthetic(&GgufFile::open(&f16).unwrap());
    let im_path = dir.path().join("synthetic.imatrix");
    im.save(&im_path).unwrap();
    let loaded = Imatrix::load(&im_path).unwrap();
    assert_eq!(loaded, im);
    if let Ok(keep) = std::env::var("DINO_KEEP_IMATRIX") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&im_path, Path::new(&keep).join("synthetic.imatrix")).unwrap();
        std::fs::copy(&f16, Path::new(&keep).join("f16.gguf")).unwrap();
    }
    for ft in [Ftype::Q3_K_M, Ftype::Q4_0, Ftype::Q2_K_S] {
        let out = dir.path().join(format!("{}.gguf", ft.name()));
        let r = quantize(&f16, &out, &opts(ft, Some(loaded.clone()))).unwrap();
        assert!(r.with_imatrix > 0);
        // The token embedding (the tied output head) has no entry, as in llama-imatrix's files.
        assert_eq!(r.without_imatrix, vec!["token_embd.weight".to_string()]);
        dino_testutil::assert_tensors_match_golden(
            &out,
            &format!(
                "quantize_imatrix_smollm2_{}.txt",
                ft.name().to_ascii_lowercase()
            ),
            ft.name(),
        );
        // Without the imatrix the weighted tensors come out differently.
        if ft == Ftype::Q3_K_M {
            let plain = dir.path().join("plain.gguf");
            quantize(&f16, &plain, &opts(ft, None)).unwrap();
            let differ = hashes(&plain)
                .iter()
                .zip(&hashes(&out))
                .filter(|(a, b)| a != b)
                .count();
            assert!(
                differ > 100,
                "only {differ} tensors changed with the imatrix"
            );
        }
    }
}

/// Calibration on a real model: an entry for every layer matrix (q, k, v sharing one input,
/// gate and up another), every token counted, non-negative sums, and the GGUF file round trip.
#[test]
fn calibrate_collects_every_layer_matrix() {
    let model = dino_testutil::model("smollm2");
    let e = engine(&model);
    let text = std::fs::read_to_string(dino_testutil::hamlet()).unwrap();
    let po = PerplexityOptions {
        n_ctx: 128,
        max_chunks: Some(2),
        n_batch: 64,
    };
    let mut seen = 0;
    let (im, r) = calibrate(&e, &text, "hamlet.txt", &po, |_, _, _| seen += 1).unwrap();
    assert_eq!(seen, 2);
    let n_layer = e.model.info().hparams.n_layer;
    assert_eq!(r.n_entries, 7 * n_layer);
    assert_eq!(im.entries.len(), 7 * n_layer);
    assert_eq!((im.chunk_count, im.chunk_size), (2, 128));
    assert!(r.perplexity.ppl > 1.0 && r.perplexity.ppl < 1000.0);
    for (name, en) in &im.entries {
        assert!(name.starts_with("blk."), "{name}");
        assert_eq!(en.counts, vec![256.0], "{name}");
        assert!(en.sums.iter().all(|v| v.is_finite() && *v >= 0.0), "{name}");
        assert!(en.sums.iter().any(|v| *v > 0.0), "{name}");
    }
    for il in 0..n_layer {
        let s = |m: &str| &im.entries[&format!("blk.{il}.{m}.weight")].sums;
        assert_eq!(s("attn_q"), s("attn_k"));
        assert_eq!(s("attn_q"), s("attn_v"));
        assert_eq!(s("ffn_gate"), s("ffn_up"));
        let hp = &e.model.info().hparams;
        assert_eq!(s("attn_q").len(), hp.n_embd);
        assert_eq!(s("attn_output").len(), hp.n_q_dim());
        assert_eq!(s("ffn_down").len(), hp.n_ff);
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("smol.imatrix");
    im.save(&p).unwrap();
    assert_eq!(Imatrix::load(&p).unwrap(), im);
    let g = GgufFile::open(&p).unwrap();
    assert_eq!(
        g.metadata().opt_str("general.type").unwrap(),
        Some("imatrix")
    );
    // Weights are the mean squares.
    let w = im
        .weights("blk.0.ffn_down.weight", e.model.info().hparams.n_ff)
        .unwrap()
        .unwrap();
    let en = &im.entries["blk.0.ffn_down.weight"];
    assert_eq!(w[3], en.sums[3] / 256.0);
    assert!(im.weights("blk.0.ffn_down.weight", 7).is_err());
    assert!(im.weights("no.such.weight", 7).unwrap().is_none());
}

/// llama-imatrix's older `.dat` files load (sums there are already means times the call
/// count); malformed files give errors that name the problem, never a panic or a huge
/// allocation.
#[test]
fn imatrix_files_old_and_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let mut dat = Vec::new();
    dat.extend(1i32.to_le_bytes());
    let name = b"blk.0.attn_q.weight";
    dat.extend((name.len() as i32).to_le_bytes());
    dat.extend(name);
    dat.extend(10i32.to_le_bytes()); // ncall
    dat.extend(4i32.to_le_bytes()); // nval
    for v in [10.0f32, 20.0, 0.0, 5.0] {
        dat.extend(v.to_le_bytes());
    }
    dat.extend(3i32.to_le_bytes()); // chunks
    dat.extend(5i32.to_le_bytes());
    dat.extend(b"wiki!");
    let p = dir.path().join("old.dat");
    std::fs::write(&p, &dat).unwrap();
    let im = Imatrix::load(&p).unwrap();
    assert_eq!(im.chunk_count, 3);
    assert_eq!(im.datasets, vec!["wiki!".to_string()]);
    assert_eq!(
        im.weights("blk.0.attn_q.weight", 4).unwrap().unwrap(),
        vec![1.0, 2.0, 0.0, 0.5]
    );

    let check = |bytes: &[u8], want: &str| {
        let p = dir.path().join("bad.imatrix");
        std::fs::write(&p, bytes).unwrap();
        let e = Imatrix::load(&p).unwrap_err().to_string();
        assert!(e.contains(want), "{want:?} not in {e:?}");
    };
    check(b"", "too short");
    check(&dat[..30], "truncated");
    let mut huge = dat.clone();
    huge[4 + 4 + name.len() + 4..][..4].copy_from_slice(&i32::MAX.to_le_bytes());
    check(&huge, "does not fit");
    check(&(-3i32).to_le_bytes().repeat(8), "entry count");
    // A GGUF that is not an imatrix (a model), and a truncated GGUF imatrix.
    let mut good = Imatrix::default();
    good.entries.insert(
        "blk.0.ffn_up.weight".into(),
        ImatrixEntry {
            sums: vec![1.0; 32],
            counts: vec![2.0],
        },
    );
    let gp = dir.path().join("good.imatrix");
    good.save(&gp).unwrap();
    let bytes = std::fs::read(&gp).unwrap();
    check(&bytes[..bytes.len() - 40], "");
    let model = dino_testutil::model("smollm2");
    let e = Imatrix::load(&model).unwrap_err().to_string();
    assert!(
        e.contains("not 'imatrix'") || e.contains("unexpected tensor"),
        "{e}"
    );
}
