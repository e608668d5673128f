//! Properties of the public quant API: round-trip error bounds per type, dot products against an
//! f64 reference, and checked entry points that return errors (never panic) on bad input.

use dino_core::GgmlType::{self, *};
use dino_kernels::dispatch::kernels;
use dino_kernels::quant::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn qbytes(t: GgmlType, n: usize) -> Vec<u8> {
    vec![0u8; t.row_size(n as u64).unwrap() as usize]
}

fn roundtrip(t: GgmlType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut q = qbytes(t, x.len());
    quantize_row(t, x, &mut q).unwrap();
    let mut y = vec![0f32; x.len()];
    dequantize_row(t, &q, &mut y).unwrap();
    (q, y)
}

fn normal(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    // Box-Muller; good enough for test data.
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random_range(1e-7f32..1.0);
            let u2: f32 = rng.random();
            scale * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

/// ggml's test-quantize-fns data: `0.1 + 2 cos(i + offset)`.
fn ggml_test_data(n: usize, offset: f32) -> Vec<f32> {
    (0..n)
        .map(|i| 0.1 + 2.0 * (i as f32 + offset).cos())
        .collect()
}

/// ggml's `array_rmse`: sqrt(sum of squared differences) / n.
fn ggml_rmse(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| ((x - y) as f64).powi(2))
        .sum();
    s.sqrt() / a.len() as f64
}

#[test]
fn api_tables() {
    assert_eq!(SUPPORTED.len(), 15);
    for &t in GgmlType::all() {
        assert_eq!(is_supported(t), vec_dot_type(t).is_some(), "{t}");
        assert_eq!(is_supported(t), kernels(t).is_some(), "{t}");
    }
    assert_eq!(vec_dot_type(F32), Some(F32));
    assert_eq!(vec_dot_type(F16), Some(F16));
    assert_eq!(vec_dot_type(BF16), Some(BF16));
    for t in [Q4_0, Q5_0, Q8_0] {
        assert_eq!(vec_dot_type(t), Some(Q8_0));
    }
    for t in [Q4_1, Q5_1] {
        assert_eq!(vec_dot_type(t), Some(Q8_1));
    }
    for t in [Q2_K, Q3_K, Q4_K, Q5_K, Q6_K] {
        assert_eq!(vec_dot_type(t), Some(Q8_K));
    }
    assert!(!is_supported(IQ2_XS) && !is_supported(I8) && !is_supported(MXFP4));
}

/// The thresholds of ggml's tests/test-quantize-fns.cpp, on its data.
#[test]
fn ggml_test_quantize_fns_thresholds() {
    const N: usize = 32 * 128;
    let x = ggml_test_data(N, 0.0);
    let x2 = ggml_test_data(N, 1.0);
    let dot_ref: f64 = x.iter().zip(&x2).map(|(&a, &b)| a as f64 * b as f64).sum();
    for t in SUPPORTED {
        let (q, y) = roundtrip(t, &x);
        let max_err = match t {
            Q2_K => 0.0075,
            Q3_K => 0.0040,
            _ => 0.002,
        };
        let e = ggml_rmse(&x, &y);
        assert!(
            e < max_err,
            "{t}: total quantization error {e} >= {max_err}"
        );

        let act = vec_dot_type(t).unwrap();
        let (qa, _) = roundtrip(act, &x2);
        let d = vec_dot(t, N, &q, &qa) as f64;
        let err = (d - dot_ref).abs() / N as f64;
        assert!(
            err < 0.02,
            "{t}: dot product error {err} >= 0.02 ({d} vs {dot_ref})"
        );
    }
}

/// Per-element bounds that follow from each format, on Gaussian data with outliers.
#[test]
fn roundtrip_error_bounds() {
    let mut rng = StdRng::seed_from_u64(7);
    let n = 4 * 256;
    for scale in [1e-3f32, 1.0, 100.0] {
        let mut x = normal(&mut rng, n, scale);
        x[17] = 9.0 * scale;
        x[300] = -12.0 * scale;
        for t in SUPPORTED {
            let (_, y) = roundtrip(t, &x);
            let bs = t.block_size().max(32);
            for (b, (xb, yb)) in x.chunks(bs).zip(y.chunks(bs)).enumerate() {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                let min = xb.iter().fold(f32::MAX, |m, &v| m.min(v));
                let max = xb.iter().fold(-f32::MAX, |m, &v| m.max(v));
                // f16 scales add up to 2^-11 relative error on top of the rounding step.
                let h = 1.0 + 2f32.powi(-10);
                for (i, (&a, &b2)) in xb.iter().zip(yb).enumerate() {
                    let err = (a - b2).abs();
                    let bound = match t {
                        F32 => 0.0,
                        F16 => a.abs() * 2f32.powi(-11) + 6e-8,
                        BF16 => a.abs() * 2f32.powi(-8),
                        // Step amax/8; the +max side clamps at 7 steps: error up to one step.
                        Q4_0 => amax / 8.0 * h + amax * 2e-3,
                        Q5_0 => amax / 16.0 * h + amax * 2e-3,
                        Q4_1 => 0.5 * (max - min) / 15.0 * h + (min.abs() + max.abs()) * 1e-3,
                        Q5_1 => 0.5 * (max - min) / 31.0 * h + (min.abs() + max.abs()) * 1e-3,
                        Q8_0 | Q8_1 => 0.5 * amax / 127.0 * h + amax * 1e-3,
                        Q8_K => 0.5 * amax / 127.0 * 1.0001,
                        // K-quants: the scale search gives no simple per-element bound; bound by
                        // a fraction of the super-block max.
                        Q6_K => amax * 0.04,
                        Q5_K => amax * 0.05,
                        Q4_K => amax * 0.1,
                        Q3_K => amax * 0.25,
                        Q2_K => amax * 0.5,
                        _ => unreachable!(),
                    };
                    assert!(
                        err <= bound,
                        "{t} scale {scale}: block {b} element {i}: {a} -> {b2} (err {err} > {bound})"
                    );
                }
            }
        }
    }
}

/// Relative RMS error per K-quant on Gaussian data (ggml's quantizers reach about these).
#[test]
fn k_quant_relative_rmse() {
    let mut rng = StdRng::seed_from_u64(11);
    let x = normal(&mut rng, 16 * 256, 1.0);
    let rms = (x.iter().map(|v| (v * v) as f64).sum::<f64>() / x.len() as f64).sqrt();
    for (t, limit) in [
        (Q2_K, 0.38),
        (Q3_K, 0.2),
        (Q4_K, 0.09),
        (Q5_K, 0.047),
        (Q6_K, 0.024),
        (Q8_K, 0.009),
    ] {
        let (_, y) = roundtrip(t, &x);
        let e = (x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / x.len() as f64)
            .sqrt();
        eprintln!("{t}: relative rmse {:.4} (limit {limit})", e / rms);
        assert!(e / rms < limit, "{t}: relative rmse {} >= {limit}", e / rms);
    }
}

/// vec_dot(w, quantize_act(x)) against the f64 dot of dequantized weights with x.
///
/// Tolerances: (1) against the dequantized activations the kernels are exact up to f32
/// rounding: 1e-5 of sum |w a|, plus for Q4_1/Q5_1 the f16 rounding of `s` (2^-10 |m| |s|).
/// (2) against the unquantized x the activation rounding adds at most half a quantization step
/// per element: sum |w_i| * 0.5 * amax_block / 127 (times 1.001 for f16 scales).
#[test]
fn vec_dot_matches_f64_reference() {
    let mut rng = StdRng::seed_from_u64(3);
    for n in [256usize, 512, 2048] {
        for t in SUPPORTED {
            let w_f = normal(&mut rng, n, 0.5);
            let x = normal(&mut rng, n, 2.0);
            let (wq, w) = roundtrip(t, &w_f);
            let act = vec_dot_type(t).unwrap();
            let (xq, xd) = roundtrip(act, &x);
            let got = vec_dot(t, n, &wq, &xq) as f64;

            let dot_q: f64 = w.iter().zip(&xd).map(|(&a, &b)| a as f64 * b as f64).sum();
            let abs_q: f64 = w
                .iter()
                .zip(&xd)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            let mut tol = 1e-5 * abs_q + 1e-30;
            if matches!(t, Q4_1 | Q5_1) {
                for (wb, xb) in wq.chunks(t.type_size()).zip(xq.chunks(act.type_size())) {
                    let m = f16_from_le([wb[2], wb[3]]) as f64;
                    let s = f16_from_le([xb[2], xb[3]]) as f64;
                    tol += m.abs() * s.abs() * 2f64.powi(-10);
                }
            }
            assert!(
                (got - dot_q).abs() <= tol,
                "{t} n={n}: {got} vs {dot_q} (quantized activations), tol {tol}"
            );

            let dot_x: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            let bs = act.block_size();
            let mut tol_x = tol;
            for (wb, xb) in w.chunks(bs.max(1)).zip(x.chunks(bs.max(1))) {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                let step = match act {
                    F32 => 0.0,
                    F16 => amax * 2f64.powi(-11),
                    BF16 => amax * 2f64.powi(-8),
                    _ => 0.5 * amax / 127.0 * 1.001 + amax * 2f64.powi(-11),
                };
                tol_x += wb.iter().map(|&v| (v as f64).abs()).sum::<f64>() * step;
            }
            assert!(
                (got - dot_x).abs() <= tol_x,
                "{t} n={n}: {got} vs {dot_x} (f32 activations), tol {tol_x}"
            );
        }
    }
}

#[test]
fn zeros_and_constants() {
    for t in SUPPORTED {
        let n = 512;
        let (q, y) = roundtrip(t, &vec![0.0; n]);
        assert!(y.iter().all(|&v| v == 0.0), "{t}: zeros");
        let act = vec_dot_type(t).unwrap();
        let (qa, _) = roundtrip(act, &vec![1.0; n]);
        assert_eq!(vec_dot(t, n, &q, &qa), 0.0, "{t}: zero weights");
        let (_, y) = roundtrip(t, &vec![0.25; n]);
        for &v in &y {
            let tol = match t {
                Q2_K => 0.25 * 0.2,
                Q3_K | Q4_K | Q5_K => 0.25 * 0.05,
                _ => 0.25 * 0.01,
            };
            assert!((v - 0.25).abs() <= tol, "{t}: constant 0.25 -> {v}");
        }
    }
}

#[test]
fn q8_1_sum_field_and_q8_k_bsums() {
    let mut rng = StdRng::seed_from_u64(5);
    let x = normal(&mut rng, 512, 1.0);
    let (q, _) = roundtrip(Q8_1, &x);
    for b in as_blocks::<BlockQ8_1>(&q) {
        let sum: i32 = b.qs.iter().map(|&v| v as i32).sum();
        // s = f16(d * sum) with the unrounded d; d itself is stored as f16.
        let want = sum as f32 * b.d();
        assert!(
            (b.s() - want).abs() <= want.abs() * 2f32.powi(-9) + 1e-7,
            "s {} vs d*sum {want}",
            b.s()
        );
    }
    let (q, _) = roundtrip(Q8_K, &x);
    for b in as_blocks::<BlockQ8K>(&q) {
        for j in 0..16 {
            let sum: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&v| v as i32).sum();
            assert_eq!(b.bsum(j) as i32, sum);
        }
        assert!(
            b.qs.iter().all(|&v| v >= -127),
            "Q8_K stays within -127..=127"
        );
    }
}

#[test]
fn errors_never_panics() {
    let x = vec![1.0f32; 64];
    let mut y = vec![0f32; 64];
    // Unsupported types.
    assert!(dequantize_row(IQ2_XS, &[0u8; 1024], &mut y).is_err());
    assert!(quantize_row(IQ4_NL, &x, &mut [0u8; 36]).is_err());
    assert!(try_vec_dot(TQ1_0, 256, &[0u8; 1024], &[0u8; 1024]).is_err());
    for t in SUPPORTED {
        let bs = t.block_size();
        let n = 256;
        let rs = t.row_size(n as u64).unwrap() as usize;
        let src = vec![0u8; rs];
        // Source too short.
        let mut out = vec![0f32; n];
        assert!(dequantize_row(t, &src[..rs - 1], &mut out).is_err(), "{t}");
        assert!(dequantize_row(t, &[], &mut out).is_err(), "{t}");
        // Length not a multiple of the block size.
        if bs > 1 {
            let mut odd = vec![0f32; n + 1];
            assert!(
                dequantize_row(t, &vec![0u8; rs * 2], &mut odd).is_err(),
                "{t}"
            );
            assert!(
                quantize_row(t, &vec![0.0; n - 1], &mut vec![0u8; rs]).is_err(),
                "{t}"
            );
            assert!(
                try_vec_dot(t, n - 1, &src, &vec![0u8; 4 * rs]).is_err(),
                "{t}"
            );
        }
        // Destination of the wrong size.
        assert!(
            quantize_row(t, &vec![0.0; n], &mut vec![0u8; rs + 1]).is_err(),
            "{t}"
        );
        assert!(
            quantize_row(t, &vec![0.0; n], &mut vec![0u8; rs - 1]).is_err(),
            "{t}"
        );
        // Activations too short.
        let act = vec_dot_type(t).unwrap();
        let ars = act.row_size(n as u64).unwrap() as usize;
        assert!(try_vec_dot(t, n, &src, &vec![0u8; ars - 1]).is_err(), "{t}");
        assert!(
            try_vec_dot(t, n, &src[..rs - 1], &vec![0u8; ars]).is_err(),
            "{t}"
        );
        assert_eq!(
            try_vec_dot(t, n, &src, &vec![0u8; ars]).unwrap(),
            0.0,
            "{t}"
        );
        // Empty rows are fine.
        assert!(dequantize_row(t, &[], &mut []).is_ok());
        assert!(quantize_row(t, &[], &mut []).is_ok());
    }
}

#[test]
#[should_panic(expected = "not a multiple")]
fn vec_dot_panics_with_a_message_on_bad_length() {
    vec_dot(Q4_0, 33, &[0u8; 64], &[0u8; 128]);
}

/// Unaligned input (mmap data is only byte-aligned): views at every offset give identical results.
#[test]
fn unaligned_rows() {
    let mut rng = StdRng::seed_from_u64(9);
    let x = normal(&mut rng, 256, 1.0);
    for t in SUPPORTED {
        let (q, y) = roundtrip(t, &x);
        let (qa, _) = roundtrip(vec_dot_type(t).unwrap(), &x);
        let want = vec_dot(t, 256, &q, &qa);
        for off in 1..4 {
            let mut buf = vec![0u8; off];
            buf.extend_from_slice(&q);
            let mut abuf = vec![0u8; off + 1];
            abuf.extend_from_slice(&qa);
            let mut y2 = vec![0f32; 256];
            dequantize_row(t, &buf[off..], &mut y2).unwrap();
            assert_eq!(y, y2, "{t} offset {off}");
            assert_eq!(
                vec_dot(t, 256, &buf[off..], &abuf[off + 1..]),
                want,
                "{t} offset {off}"
            );
        }
    }
}

/// Non-finite and huge inputs give garbage values but never a panic (overflow checks are on in
/// the test profile), on every ISA's activation quantizer too.
#[test]
fn non_finite_inputs_do_not_panic() {
    let n = 512;
    let rows: Vec<Vec<f32>> = vec![
        vec![f32::NAN; n],
        vec![f32::INFINITY; n],
        (0..n)
            .map(|i| {
                if i % 7 == 0 {
                    f32::NEG_INFINITY
                } else {
                    i as f32
                }
            })
            .collect(),
        (0..n)
            .map(|i| if i % 5 == 0 { f32::NAN } else { 1.0 })
            .collect(),
        vec![f32::MAX; n],
        (0..n)
            .map(|i| if i % 2 == 0 { f32::MAX } else { -f32::MAX })
            .collect(),
        vec![f32::MIN_POSITIVE / 8.0; n],
    ];
    for t in SUPPORTED {
        for x in &rows {
            let (q, _) = roundtrip(t, x);
            for isa in dino_kernels::dispatch::Isa::ALL {
                if let Some(k) = dino_kernels::dispatch::kernels_for(isa, t) {
                    let act = k.act_type;
                    let mut qa = qbytes(act, n);
                    (k.quantize_act)(x, &mut qa);
                    let _ = (k.vec_dot)(n, &q, &qa);
                }
            }
        }
    }
}
