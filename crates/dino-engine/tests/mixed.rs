//! Layer-wise mixed precision on a real model (SmolLM2-135M as F16, made from the catalog file):
//! sensitivities measured around the Q4_K_M mix, an allocation under a byte budget, and the
//! budgeted file written by `quantize` from a sensitivity file.
use dino_core::GgmlType;
use dino_engine::mixed::{allocate, measure, point_name, Budget, Sensitivity, SensitivityOptions};
use dino_engine::quantize::{quantize, Ftype, MixOptions, QuantizeOptions};
use dino_formats::gguf::GgufFile;

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
fn sensitivities_rank_types_and_budgets_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let f16 = dir.path().join("f16.gguf");
    quantize(&dino_testutil::model("smollm2"), &f16, &opts(Ftype::F16)).unwrap();
    let src = GgufFile::open(&f16).unwrap();
    let text = std::fs::read_to_string(dino_testutil::hamlet()).unwrap();
    let point = opts(Ftype::Q4_K_M);
    let picked = [
        "blk.0.ffn_down.weight",
        "blk.29.ffn_down.weight",
        "blk.3.attn_v.weight",
    ];
    let s = measure(
        &src,
        &point,
        &text,
        dir.path(),
        &SensitivityOptions {
            n_tokens: 64,
            threads: 2,
            progress: false,
            only: Some(picked.iter().map(|s| s.to_string()).collect()),
        },
    )
    .unwrap();
    assert_eq!(s.point, point_name(&point));
    assert!(s.base_kld > 0.0 && s.base_kld < 1.0, "{}", s.base_kld);
    assert!(s.matches(&src));
    for t in &s.tensors {
        if !picked.contains(&t.name.as_str()) {
            // Not measured: only the operating point's own type.
            assert_eq!(t.options.len(), 1, "{}", t.name);
            assert_eq!(t.options[0].2, s.base_kld);
            continue;
        }
        let cost = |ty: GgmlType| t.options.iter().find(|o| o.0 == ty).map(|o| o.2);
        // Sizes go up with the types, and the coarsest type costs most.
        assert!(t.options.windows(2).all(|w| w[0].1 < w[1].1), "{}", t.name);
        let lo = t.options[0].2;
        assert!(
            t.options[1..].iter().all(|o| o.2 < lo),
            "{}: {:?}",
            t.name,
            t.options
        );
        if t.name.contains("ffn_down") {
            assert!(cost(GgmlType::Q3_K).unwrap() > cost(GgmlType::Q6_K).unwrap());
        }
    }
    // Round trip through the file, then a budget: the Q4_K_M file's size is respected, and the
    // allocation moves bytes to where they buy most.
    let sf = dir.path().join("smol.sens");
    s.save(&sf).unwrap();
    assert_eq!(Sensitivity::load(&sf).unwrap(), s);
    let q4 = dir.path().join("q4km.gguf");
    quantize(&f16, &q4, &point).unwrap();
    let size = std::fs::metadata(&q4).unwrap().len();
    let mixed = dir.path().join("mixed.gguf");
    let r = quantize(
        &f16,
        &mixed,
        &QuantizeOptions {
            mix: Some(MixOptions {
                budget: Budget::Bytes(size),
                calib_text: text.clone(),
                calib_tokens: 64,
                sensitivity_file: Some(sf.clone()),
            }),
            ..opts(Ftype::Q4_K_M)
        },
    )
    .unwrap();
    let m = r.mix.unwrap();
    assert!(m.predicted_kld <= 0.0);
    assert!(std::fs::metadata(&mixed).unwrap().len() <= size);
    let g = GgufFile::open(&mixed).unwrap();
    assert_eq!(g.tensors().len(), src.tensors().len());
    for t in g.tensors() {
        if let Some(&ty) = m.types.get(&t.name) {
            assert_eq!(t.ty, ty, "{}", t.name);
        }
    }
    // A budget below the coarsest mix is refused; so is a non-matching sensitivity file.
    let small = allocate(&s, 0, 1000);
    assert!(small.is_err());
    let e = quantize(
        &f16,
        &mixed,
        &QuantizeOptions {
            mix: Some(MixOptions {
                budget: Budget::Bpw(1.0),
                calib_text: text,
                calib_tokens: 64,
                sensitivity_file: Some(sf),
            }),
            ..opts(Ftype::Q4_K_M)
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("budget"), "{e}");
}
