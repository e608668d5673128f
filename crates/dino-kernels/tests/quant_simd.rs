//! Every SIMD kernel against its scalar twin: every entry of every non-scalar ISA table this CPU
//! can run, on random data, several lengths (one block, several, odd element counts for the
//! float types), random-byte ("hostile") weight blocks with finite scales, and extreme values.
//!
//! Tolerances:
//! - activation quantizers (`quantize_act`) and `dequantize`: byte/bit-identical;
//! - quantized dot products: the integer sums are exact in both, only the f32 accumulation
//!   order differs: |simd - scalar| <= 1e-5 * sum_i |w_i a_i| (+ 1e-30);
//! - F32/F16/BF16 dot products (f32 FMA lanes vs f64 accumulation):
//!   |simd - scalar| <= n * 2^-23 * sum_i |w_i a_i| (+ 1e-30).

use dino_core::GgmlType::{self, *};
use dino_kernels::dispatch::{kernels_for, Isa, TypeKernels};
use dino_kernels::quant::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn simd_levels() -> Vec<Isa> {
    let v: Vec<Isa> = Isa::ALL
        .into_iter()
        .filter(|&i| i != Isa::Scalar && i.available())
        .collect();
    if v.is_empty() {
        eprintln!("no SIMD level available on this CPU: scalar-vs-SIMD tests are vacuous");
    }
    v
}

fn scalar(t: GgmlType) -> &'static TypeKernels {
    kernels_for(Isa::Scalar, t).unwrap()
}

fn rand_f32(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) * scale)
        .collect()
}

/// Offsets of the f16 scale fields in a block of `t` (for patching random bytes).
fn f16_fields(t: GgmlType) -> &'static [usize] {
    match t {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q8_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        _ => &[],
    }
}

/// Random bytes for a weight row of `t`, with every scale made finite (a random f16 in
/// +-[2^-14, scale_max], or for float types every element).
fn hostile_row(rng: &mut StdRng, t: GgmlType, n: usize, scale_max: f32) -> Vec<u8> {
    let mut b: Vec<u8> = (0..t.row_size(n as u64).unwrap())
        .map(|_| rng.random())
        .collect();
    let finite = |rng: &mut StdRng| {
        let v = rng.random_range(2f32.powi(-14)..scale_max) * if rng.random() { 1.0 } else { -1.0 };
        f16_to_le(v)
    };
    match t {
        F32 => {
            for c in b.chunks_exact_mut(4) {
                c.copy_from_slice(&(rng.random_range(-1.0f32..1.0) * scale_max).to_le_bytes());
            }
        }
        F16 => {
            for c in b.chunks_exact_mut(2) {
                c.copy_from_slice(&finite(rng));
            }
        }
        BF16 => {
            for c in b.chunks_exact_mut(2) {
                let v = rng.random_range(-1.0f32..1.0) * scale_max;
                c.copy_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
            }
        }
        Q8_K => {
            for blk in b.chunks_exact_mut(t.type_size()) {
                blk[..4].copy_from_slice(&rng.random_range(-scale_max..scale_max).to_le_bytes());
                // Quants of -128 cannot come from our quantizer; keep weights in -127..=127 too.
                for q in &mut blk[4..260] {
                    if *q == 0x80 {
                        *q = 0x81;
                    }
                }
            }
        }
        _ => {
            for blk in b.chunks_exact_mut(t.type_size()) {
                for &off in f16_fields(t) {
                    blk[off..off + 2].copy_from_slice(&finite(rng));
                }
            }
        }
    }
    b
}

fn quantize_act_both(t: GgmlType, isa: Isa, x: &[f32]) -> Vec<u8> {
    let act = vec_dot_type(t).unwrap();
    let mut qs = vec![0u8; act.row_size(x.len() as u64).unwrap() as usize];
    let mut qv = qs.clone();
    (scalar(t).quantize_act)(x, &mut qs);
    (kernels_for(isa, t).unwrap().quantize_act)(x, &mut qv);
    assert_eq!(
        qs,
        qv,
        "{isa} quantize_act for {t} differs from scalar (n = {})",
        x.len()
    );
    qs
}

/// sum |w_i a_i| from the dequantized rows (the natural scale of the dot product).
fn abs_dot(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f64 {
    let act = vec_dot_type(t).unwrap();
    let mut wd = vec![0f32; n];
    let mut ad = vec![0f32; n];
    dequantize_row(t, w, &mut wd).unwrap();
    dequantize_row(act, a, &mut ad).unwrap();
    wd.iter()
        .zip(&ad)
        .map(|(&x, &y)| (x as f64 * y as f64).abs())
        .sum()
}

fn check_dot(t: GgmlType, isa: Isa, n: usize, w: &[u8], a: &[u8], what: &str) {
    let s = (scalar(t).vec_dot)(n, w, a) as f64;
    let v = (kernels_for(isa, t).unwrap().vec_dot)(n, w, a) as f64;
    let scale = abs_dot(t, n, w, a);
    let rel = if matches!(t, F32 | F16 | BF16) {
        n as f64 * 2f64.powi(-23)
    } else {
        1e-5
    };
    let tol = rel * scale + 1e-30;
    if s == v || (s.is_nan() && v.is_nan()) {
        return; // equal infinities / NaNs: Q8_1's f16 `s` overflows for 1e4 inputs, as in ggml
    }
    assert!(
        (s - v).abs() <= tol,
        "{isa} vec_dot {t} n={n} ({what}): simd {v} vs scalar {s}, diff {} > tol {tol}",
        (s - v).abs()
    );
}

fn lengths(t: GgmlType) -> Vec<usize> {
    let bs = t.block_size();
    if bs == 1 {
        vec![1, 7, 8, 31, 32, 33, 100, 256, 1000, 4096]
    } else {
        vec![bs, 2 * bs, 3 * bs, 4096.max(bs) / bs * bs]
    }
}

#[test]
fn vec_dot_simd_matches_scalar_random() {
    let mut rng = StdRng::seed_from_u64(42);
    for isa in simd_levels() {
        for t in SUPPORTED {
            for n in lengths(t) {
                for _ in 0..3 {
                    // Realistic: weights from our quantizer.
                    let wf = rand_f32(&mut rng, n, 1.0);
                    let mut w = vec![0u8; t.row_size(n as u64).unwrap() as usize];
                    quantize_row(t, &wf, &mut w).unwrap();
                    let a = quantize_act_both(t, isa, &rand_f32(&mut rng, n, 3.0));
                    check_dot(t, isa, n, &w, &a, "quantized weights");
                    // Hostile: random bytes with finite scales.
                    let w = hostile_row(&mut rng, t, n, 2.0);
                    check_dot(t, isa, n, &w, &a, "random-byte weights");
                }
            }
        }
    }
}

#[test]
fn vec_dot_simd_matches_scalar_extremes() {
    let mut rng = StdRng::seed_from_u64(43);
    for isa in simd_levels() {
        for t in SUPPORTED {
            let bs = t.block_size().max(32);
            for n in [bs, 8 * bs] {
                let rs = t.row_size(n as u64).unwrap() as usize;
                // Weight rows: all bits set / all clear with finite scales, huge and tiny scales.
                let mut rows: Vec<(Vec<u8>, &str)> = Vec::new();
                for (fill, name) in [
                    (0xFFu8, "all-ones bits"),
                    (0x00, "all-zero bits"),
                    (0x77, "0x77 bytes"),
                ] {
                    let mut w = vec![fill; rs];
                    for blk in w.chunks_exact_mut(t.type_size()) {
                        for &off in f16_fields(t) {
                            blk[off..off + 2].copy_from_slice(&f16_to_le(1.5));
                        }
                        if t == Q8_K {
                            blk[..4].copy_from_slice(&1.5f32.to_le_bytes());
                            blk[4..260]
                                .iter_mut()
                                .for_each(|q| *q = if fill == 0xFF { 0x81 } else { fill });
                        }
                    }
                    if matches!(t, F16 | BF16 | F32) {
                        let mut q = vec![0u8; rs];
                        quantize_row(t, &vec![if fill == 0 { 0.0 } else { -1.0 }; n], &mut q)
                            .unwrap();
                        w = q;
                    }
                    rows.push((w, name));
                }
                rows.push((hostile_row(&mut rng, t, n, 60000.0), "huge scales"));
                rows.push((hostile_row(&mut rng, t, n, 2f32.powi(-13)), "tiny scales"));
                // Activations: all max, all min, zeros, alternating huge/small, tiny.
                let acts: Vec<(Vec<f32>, &str)> = vec![
                    (vec![1e4; n], "all max"),
                    (vec![-1e4; n], "all min"),
                    (vec![0.0; n], "zeros"),
                    (
                        (0..n)
                            .map(|i| if i % 2 == 0 { 1e4 } else { -1e-4 })
                            .collect(),
                        "alternating",
                    ),
                    (rand_f32(&mut rng, n, 1e-20), "tiny"),
                    (
                        (0..n).map(|i| (i % 255) as f32 - 127.0).collect(),
                        "integer ramp",
                    ),
                ];
                for (x, xname) in &acts {
                    let a = quantize_act_both(t, isa, x);
                    for (w, wname) in &rows {
                        check_dot(t, isa, n, w, &a, &format!("{wname} x {xname}"));
                    }
                }
            }
        }
    }
}

#[test]
fn quantize_act_simd_is_byte_identical() {
    let mut rng = StdRng::seed_from_u64(44);
    for isa in simd_levels() {
        for t in SUPPORTED {
            let bs = vec_dot_type(t).unwrap().block_size();
            for n in [
                bs,
                2 * bs,
                4096 / bs.max(1) * bs.max(1),
                if bs == 1 { 37 } else { 16 * bs },
            ] {
                for scale in [1e-30f32, 1e-3, 1.0, 1e4] {
                    quantize_act_both(t, isa, &rand_f32(&mut rng, n, scale));
                }
                // Exact .5 ties after scaling (amax 127 -> id = 1 for Q8_0/Q8_1).
                let mut x: Vec<f32> = (0..n).map(|i| (i % 64) as f32 * 0.5 - 16.0).collect();
                x[0] = 127.0;
                quantize_act_both(t, isa, &x);
                // +-amax ties: the first one decides the sign of the Q8_K scale.
                let x: Vec<f32> = (0..n)
                    .map(|i| if i % 3 == 0 { -2.0 } else { 2.0 })
                    .collect();
                quantize_act_both(t, isa, &x);
                quantize_act_both(t, isa, &vec![0.0; n]);
                quantize_act_both(t, isa, &vec![-7.0; n]);
            }
        }
    }
}

#[test]
fn dequantize_simd_table_is_bit_identical() {
    let mut rng = StdRng::seed_from_u64(45);
    for isa in simd_levels() {
        for t in SUPPORTED {
            let n = 4 * t.block_size().max(64);
            let w = hostile_row(&mut rng, t, n, 4.0);
            let mut a = vec![0f32; n];
            let mut b = vec![0f32; n];
            (scalar(t).dequantize)(&w, &mut a);
            (kernels_for(isa, t).unwrap().dequantize)(&w, &mut b);
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{isa} dequantize {t}"
            );
        }
    }
}

/// The batched-kernel variants (llama.cpp's repacked / tiled GEMM float orders): SIMD equals
/// scalar, bit for bit where the float order is fixed by the algorithm, and both stay within
/// the usual tolerance of the per-row `vec_dot`.
#[test]
fn batch_dot_variants_match_scalar_and_vec_dot() {
    let mut rng = StdRng::seed_from_u64(44);
    let mut checked = 0;
    for isa in simd_levels() {
        for t in SUPPORTED {
            let (Some(sb), Some(vb)) = (scalar(t).batch, kernels_for(isa, t).unwrap().batch) else {
                continue;
            };
            assert_eq!(sb.rule, vb.rule, "{t}: batch rules differ between ISAs");
            for n in lengths(t) {
                for _ in 0..3 {
                    let wf = rand_f32(&mut rng, n, 1.0);
                    let mut w = vec![0u8; t.row_size(n as u64).unwrap() as usize];
                    quantize_row(t, &wf, &mut w).unwrap();
                    let a = quantize_act_both(t, isa, &rand_f32(&mut rng, n, 3.0));
                    let (s, v) = ((sb.dot)(n, &w, &a), (vb.dot)(n, &w, &a));
                    assert_eq!(
                        s.to_bits(),
                        v.to_bits(),
                        "{isa} batch dot {t} n={n}: {v} vs {s}"
                    );
                    let r = (scalar(t).vec_dot)(n, &w, &a) as f64;
                    let tol = 1e-5 * abs_dot(t, n, &w, &a) + 1e-30;
                    assert!(
                        (s as f64 - r).abs() <= tol,
                        "{t} n={n}: batch {s} vs vec_dot {r}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 0 || simd_levels().is_empty());
}

#[test]
fn batch_rules_pick_the_tokens_llama_cpp_batches() {
    use dino_kernels::dispatch::BatchRule;
    assert_eq!(BatchRule::WholeGroupsOf4.tokens(1), 0);
    assert_eq!(BatchRule::WholeGroupsOf4.tokens(10), 8);
    assert_eq!(BatchRule::WholeGroupsOf4.tokens(12), 12);
    assert_eq!(BatchRule::AllFrom(8).tokens(7), 0);
    assert_eq!(BatchRule::AllFrom(8).tokens(10), 10);
}

/// Bit-equality of a tile kernel with its dot product, output by output (NaN equals NaN).
#[allow(clippy::too_many_arguments)]
fn check_tile(
    t: GgmlType,
    isa: Isa,
    tile: dino_kernels::dispatch::TileFn,
    dot: dino_kernels::dispatch::DotFn,
    shape: (usize, usize, usize),
    w: &[u8],
    a: &[u8],
    what: &str,
) {
    use dino_kernels::dispatch::Tile;
    let (n, n_rows, n_tok) = shape;
    let mut got = vec![f32::MAX; n_rows * n_tok];
    let mut want = got.clone();
    tile(&mut Tile {
        n,
        w,
        n_rows,
        a,
        n_tok,
        out: &mut got,
    });
    Tile {
        n,
        w,
        n_rows,
        a,
        n_tok,
        out: &mut want,
    }
    .by_dot(dot);
    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
        assert!(
            g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan()),
            "{isa} tile {t} ({what}) n={n} rows={n_rows} tok={n_tok}: output {i} (token {}, row {}) {g} != dot {e}",
            i / n_rows,
            i % n_rows
        );
    }
}

/// Every tile kernel equals its dot product bit for bit, for tile shapes that exercise the full
/// steps and the single-row / single-token edges, on random, hostile and extreme data.
#[test]
fn tile_kernels_equal_their_dot_products() {
    let mut rng = StdRng::seed_from_u64(44);
    let mut checked = 0;
    for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
        for t in SUPPORTED {
            let k = kernels_for(isa, t).unwrap();
            let mut variants = vec![];
            if let Some(tile) = k.tile {
                variants.push((tile, k.vec_dot, "per-row"));
            }
            if let Some(b) = k.batch {
                if let Some(tile) = b.tile {
                    variants.push((tile, b.dot, "batched"));
                }
            }
            for (tile, dot, kind) in variants {
                let bs = t.block_size().max(32);
                for &(nb, n_rows, n_tok) in
                    &[(1, 1, 1), (3, 5, 1), (2, 9, 7), (5, 4, 4), (1, 13, 11)]
                {
                    let n = nb * bs;
                    let rs = t.row_size(n as u64).unwrap() as usize;
                    let mut w = vec![0u8; rs * n_rows];
                    for r in 0..n_rows {
                        let row = match r % 3 {
                            0 => {
                                let mut q = vec![0u8; rs];
                                quantize_row(t, &rand_f32(&mut rng, n, 2.0), &mut q).unwrap();
                                q
                            }
                            1 => hostile_row(&mut rng, t, n, 60000.0),
                            _ => hostile_row(&mut rng, t, n, 1.0),
                        };
                        w[r * rs..(r + 1) * rs].copy_from_slice(&row);
                    }
                    let mut a = Vec::new();
                    for j in 0..n_tok {
                        let x: Vec<f32> = match j % 3 {
                            0 => rand_f32(&mut rng, n, 1.0),
                            1 => (0..n)
                                .map(|i| if i % 2 == 0 { 1e4 } else { -1e-4 })
                                .collect(),
                            _ => rand_f32(&mut rng, n, 300.0),
                        };
                        a.extend(quantize_act_both(t, isa, &x));
                    }
                    check_tile(t, isa, tile, dot, (n, n_rows, n_tok), &w, &a, kind);
                    checked += 1;
                }
            }
        }
    }
    eprintln!("{checked} tile shapes checked");
}

/// Decode attention at every SIMD level equals the scalar twin bit for bit: random and extreme
/// (f16-overflowing) values, head sizes with and without a tail, short and long contexts, the
/// cache in shuffled blocks, with and without a window start.
#[test]
fn attend_decode_simd_equals_scalar() {
    use dino_kernels::dispatch::op_kernels_for;
    use dino_kernels::ops::{
        attend_group_decode_scalar, rows_to_blocks, AttnShape, KvBlocks, KvSpan, KV_BLOCK,
    };
    use half::f16;
    use rand::seq::SliceRandom;
    let mut rng = StdRng::seed_from_u64(45);
    for isa in simd_levels() {
        let k = op_kernels_for(isa).unwrap();
        for &(hd, n_head_kv) in &[(64usize, 2usize), (128, 1), (80, 3), (72, 2)] {
            for &n_pos in &[1usize, 2, 17, 259, 300] {
                for &scale in &[1.0f32, 30.0, 3000.0] {
                    let row = n_head_kv * hd;
                    let mk = |rng: &mut StdRng| -> Vec<f16> {
                        (0..n_pos * row)
                            .map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0) * scale))
                            .collect()
                    };
                    let (kc, vc) = (mk(&mut rng), mk(&mut rng));
                    let sh = AttnShape {
                        n_head: n_head_kv,
                        n_head_kv,
                        head_dim: hd,
                        scale: 1.0 / (hd as f32).sqrt(),
                    };
                    // The rows in blocks of a store twice as large, in shuffled order.
                    let n_blocks = n_pos.div_ceil(KV_BLOCK);
                    let mut ids: Vec<u32> = (0..2 * n_blocks as u32).collect();
                    ids.shuffle(&mut rng);
                    let table = &ids[..n_blocks];
                    let mut kb = vec![f16::ZERO; 2 * n_blocks * KV_BLOCK * row];
                    let mut vb = kb.clone();
                    rows_to_blocks(&kc, n_pos, &sh, table, &mut kb);
                    rows_to_blocks(&vc, n_pos, &sh, table, &mut vb);
                    // 1 query head, and a GQA group of 3 / 10 (more than one register group).
                    let n_q = [1usize, 3, 10][n_pos % 3];
                    let q = rand_f32(&mut rng, n_q * hd, scale);
                    for kv_head in 0..n_head_kv {
                        for first in [0, n_pos / 3] {
                            let span = KvSpan {
                                k: KvBlocks { data: &kb, table },
                                v: KvBlocks { data: &vb, table },
                                kv_head,
                                first,
                                n_pos,
                            };
                            let mut want = vec![0f32; n_q * hd];
                            let mut got = vec![0f32; n_q * hd];
                            attend_group_decode_scalar(&q, &span, &sh, &mut want);
                            (k.attend_decode)(&q, &span, &sh, &mut got);
                            for (g, w) in got.iter().zip(&want) {
                                assert!(
                                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                                    "{isa} hd {hd} n_pos {n_pos} first {first} scale {scale}: {g} vs {w}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Decode attention over caches with quantized keys or values (every pairing of f16, Q8_0 and
/// Q4_0 but f16/f16) at every SIMD level equals the scalar twin bit for bit: values quantized
/// from random rows at small and large (f16-overflowing scores) scales, and random-byte blocks
/// with finite scales; head sizes with a SIMD form (64, 128, 96, 256) and without (32); short
/// and long contexts (several 256-position chunks, partial groups of eight); a window start;
/// GQA groups of 1, 3 and 10 heads (more than one register group).
#[test]
fn attend_decode_q_simd_equals_scalar() {
    use dino_kernels::dispatch::op_kernels_for;
    use dino_kernels::ops::{
        attend_group_decode_q_scalar, rows_to_blocks, rows_to_blocks_q, AttnShape, KvBlocks,
        KvRows, KvType, KvView, KV_BLOCK,
    };
    use half::f16;
    use rand::seq::SliceRandom;
    let mut rng = StdRng::seed_from_u64(48);
    // One layer's store of `ty` for `rows` (`[n_pos, row]`), in the blocks of `table`, as
    // 16-bit units (the cache's storage); `hostile`: random bytes with finite scales instead.
    struct Store(Vec<u16>);
    let make = |rng: &mut StdRng,
                ty: KvType,
                rows: &[f32],
                n_pos: usize,
                sh: &AttnShape,
                table: &[u32],
                n_blocks: usize,
                hostile: bool|
     -> Store {
        let rb = ty.row_bytes(sh.head_dim).unwrap();
        let bytes = n_blocks * KV_BLOCK * sh.n_head_kv * rb;
        let mut st = vec![0u16; bytes / 2];
        match ty {
            KvType::F16 => {
                let h: Vec<f16> = rows.iter().map(|&x| f16::from_f32(x)).collect();
                let dst: &mut [f16] =
                    half::slice::HalfBitsSliceExt::reinterpret_cast_mut(&mut st[..]);
                rows_to_blocks(&h, n_pos, sh, table, dst);
            }
            _ => {
                let mut b = vec![0u8; bytes];
                if hostile {
                    let bs = if ty == KvType::Q8_0 { 34 } else { 18 };
                    for blk in b.chunks_exact_mut(bs) {
                        for x in blk.iter_mut() {
                            *x = rng.random();
                        }
                        let d = rng.random_range(2f32.powi(-14)..4.0)
                            * if rng.random() { 1.0 } else { -1.0 };
                        blk[..2].copy_from_slice(&f16_to_le(d));
                    }
                } else {
                    rows_to_blocks_q(ty, rows, n_pos, sh, table, &mut b);
                }
                for (u, c) in st.iter_mut().zip(b.chunks_exact(2)) {
                    *u = u16::from_le_bytes([c[0], c[1]]);
                }
            }
        }
        Store(st)
    };
    fn rows_of<'a>(ty: KvType, st: &'a [u8], f: &'a [f16], table: &'a [u32]) -> KvRows<'a> {
        match ty {
            KvType::F16 => KvRows::F16(KvBlocks { data: f, table }),
            KvType::Q8_0 => KvRows::Q8_0(KvBlocks {
                data: as_blocks(st),
                table,
            }),
            KvType::Q4_0 => KvRows::Q4_0(KvBlocks {
                data: as_blocks(st),
                table,
            }),
        }
    }
    let pairs: Vec<(KvType, KvType)> = KvType::ALL
        .iter()
        .flat_map(|&k| KvType::ALL.iter().map(move |&v| (k, v)))
        .filter(|&(k, v)| (k, v) != (KvType::F16, KvType::F16))
        .collect();
    let mut checked = 0;
    for isa in simd_levels() {
        let kern = op_kernels_for(isa).unwrap();
        for &(hd, n_head_kv) in &[(64usize, 2usize), (128, 1), (96, 1), (256, 1), (32, 2)] {
            for &n_pos in &[1usize, 7, 17, 259, 600] {
                for (case, &scale) in [1.0f32, 30.0, 3000.0, 1.0].iter().enumerate() {
                    let hostile = case == 3;
                    let row = n_head_kv * hd;
                    let kf = rand_f32(&mut rng, n_pos * row, scale);
                    let vf = rand_f32(&mut rng, n_pos * row, scale);
                    let sh = AttnShape {
                        n_head: n_head_kv,
                        n_head_kv,
                        head_dim: hd,
                        scale: 1.0 / (hd as f32).sqrt(),
                    };
                    let n_blocks = n_pos.div_ceil(KV_BLOCK);
                    let mut ids: Vec<u32> = (0..2 * n_blocks as u32).collect();
                    ids.shuffle(&mut rng);
                    let table = &ids[..n_blocks];
                    let n_q = [1usize, 3, 10][(n_pos + case) % 3];
                    let q = rand_f32(&mut rng, n_q * hd, scale);
                    for &(tk, tv) in &pairs {
                        let ks = make(&mut rng, tk, &kf, n_pos, &sh, table, 2 * n_blocks, hostile);
                        let vs = make(&mut rng, tv, &vf, n_pos, &sh, table, 2 * n_blocks, hostile);
                        let kb: Vec<u8> = ks.0.iter().flat_map(|u| u.to_le_bytes()).collect();
                        let vb: Vec<u8> = vs.0.iter().flat_map(|u| u.to_le_bytes()).collect();
                        let kh: &[f16] = half::slice::HalfBitsSliceExt::reinterpret_cast(&ks.0[..]);
                        let vh: &[f16] = half::slice::HalfBitsSliceExt::reinterpret_cast(&vs.0[..]);
                        for kv_head in 0..n_head_kv {
                            for first in [0, n_pos / 3] {
                                let view = KvView {
                                    k: rows_of(tk, &kb, kh, table),
                                    v: rows_of(tv, &vb, vh, table),
                                    kv_head,
                                    first,
                                    n_pos,
                                };
                                let mut want = vec![0f32; n_q * hd];
                                let mut got = vec![f32::NAN; n_q * hd];
                                attend_group_decode_q_scalar(&q, &view, &sh, &mut want);
                                (kern.attend_decode_q)(&q, &view, &sh, &mut got);
                                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                                    assert!(
                                        g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                                        "{isa} k {tk} v {tv} hd {hd} n_pos {n_pos} first {first} scale {scale} hostile {hostile} [{i}]: {g} vs {w}"
                                    );
                                }
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    eprintln!("{checked} quantized-cache attention calls checked");
}

/// Prompt attention at every SIMD level equals the scalar twin bit for bit: random and large
/// scores (weights that underflow the exponential), partial last tiles, every visible length
/// from one position to the whole padded cache, head sizes with a scalar fallback (80).
#[test]
fn attend_prompt_simd_equals_scalar() {
    use dino_kernels::dispatch::op_kernels_for;
    use dino_kernels::ops::{attend_prompt_scalar, transpose_k, AttnShape, ATTN_TILE};
    use half::f16;
    let mut rng = StdRng::seed_from_u64(47);
    for isa in simd_levels() {
        let k = op_kernels_for(isa).unwrap();
        for &(hd, n_head_kv) in &[(64usize, 2usize), (128, 1), (80, 1)] {
            for &n_pos in &[1usize, 8, 63, 64, 65, 200] {
                for &scale in &[1.0f32, 30.0, 3000.0] {
                    let row = n_head_kv * hd;
                    let mk = |rng: &mut StdRng| -> Vec<f16> {
                        (0..n_pos * row)
                            .map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0) * scale))
                            .collect()
                    };
                    let (kc, vc) = (mk(&mut rng), mk(&mut rng));
                    let v: Vec<f32> = vc.iter().map(|x| x.to_f32()).collect();
                    let sh = AttnShape {
                        n_head: n_head_kv,
                        n_head_kv,
                        head_dim: hd,
                        scale: 1.0 / (hd as f32).sqrt(),
                    };
                    let p_pad = n_pos.div_ceil(ATTN_TILE) * ATTN_TILE;
                    let mut kt = vec![0f32; row * p_pad];
                    transpose_k(&kc, n_pos, &sh, p_pad, &mut kt);
                    let q = rand_f32(&mut rng, hd, scale);
                    for kv_head in 0..n_head_kv {
                        for n_vis in [1, n_pos.div_ceil(2), n_pos] {
                            let mut want = vec![0f32; hd];
                            let mut got = vec![f32::NAN; hd];
                            attend_prompt_scalar(
                                &q, &kt, p_pad, &v, n_vis, kv_head, &sh, &mut want,
                            );
                            (k.attend_prompt)(&q, &kt, p_pad, &v, n_vis, kv_head, &sh, &mut got);
                            for (g, w) in got.iter().zip(&want) {
                                assert!(
                                    g.to_bits() == w.to_bits(),
                                    "{isa} hd {hd} n_pos {n_pos} n_vis {n_vis} scale {scale}: {g} vs {w}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Repacked (row-interleaved) layouts: every level's packed tile and activation quantizer equal
/// the scalar reference bit for bit, on random and hostile weights, mixed activation scales,
/// tiny blocks and token counts around the 8-token micro-tile; and the result stays within
/// the bound that 8-bit activation quantization allows of the exact product.
#[test]
fn packed_tiles_equal_the_scalar_layout_and_track_the_exact_product() {
    use dino_kernels::dispatch::{packed_reference, Tile};
    use dino_kernels::panel::ROWS;
    let mut rng = StdRng::seed_from_u64(46);
    for t in SUPPORTED {
        let Some(reference) = packed_reference(t) else {
            continue;
        };
        let l = reference.layout;
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            let Some(pk) = kernels_for(isa, t).unwrap().packed else {
                continue;
            };
            assert!(std::ptr::eq(pk.layout, l), "{isa} {t}: another layout");
            for &(nu, n_rows, n_tok) in &[
                (1usize, 16usize, 1usize),
                (3, 32, 5),
                (2, 16, 8),
                (4, 48, 9),
                (9, 16, 17),
            ] {
                let n = nu * l.unit;
                let rs = t.row_size(n as u64).unwrap() as usize;
                let mut w = vec![0u8; rs * n_rows];
                for r in 0..n_rows {
                    let row = if r % 3 != 2 {
                        let mut q = vec![0u8; rs];
                        quantize_row(t, &rand_f32(&mut rng, n, 2.0), &mut q).unwrap();
                        q
                    } else {
                        hostile_row(&mut rng, t, n, 1000.0)
                    };
                    w[r * rs..(r + 1) * rs].copy_from_slice(&row);
                }
                let mut packed = vec![0u8; n_rows / ROWS * l.group_bytes(n)];
                l.pack(&w, n, n_rows, &mut packed);
                let ab = l.act.row_bytes(n);
                let mut xs = Vec::new();
                let mut a = Vec::new();
                for j in 0..n_tok {
                    let scale = [1.0, 1e4, 1e-3][j % 3];
                    let mut x = rand_f32(&mut rng, n, scale);
                    if j % 4 == 3 {
                        x[..32].fill(1e-36); // a block below the quantizer's floor
                        x[40] = 3e30;
                    }
                    let mut want = vec![0u8; ab];
                    (reference.quantize_act)(&x, &mut want);
                    let mut got = vec![0u8; ab];
                    (pk.quantize_act)(&x, &mut got);
                    assert_eq!(got, want, "{isa} {t}: activation quantizer differs");
                    a.extend(want);
                    xs.push(x);
                }
                let run = |tile: dino_kernels::dispatch::TileFn| {
                    let mut out = vec![f32::MAX; n_rows * n_tok];
                    tile(&mut Tile {
                        n,
                        w: &packed,
                        n_rows,
                        a: &a,
                        n_tok,
                        out: &mut out,
                    });
                    out
                };
                let want = run(reference.tile);
                let got = run(pk.tile);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g.to_bits() == e.to_bits(),
                        "{isa} {t} packed tile output {i}: {g} vs {e}"
                    );
                }
                let mut wd = vec![0f32; n * n_rows];
                dequantize_row(t, &w, &mut wd).unwrap();
                for (tok, x) in xs.iter().enumerate() {
                    for r in 0..n_rows {
                        let wr = &wd[r * n..(r + 1) * n];
                        let exact: f64 = wr.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
                        // Each activation moves by at most half a step (amax / 254) of its block.
                        let mut bound = 0f64;
                        let mut mag = 0f64;
                        for (e, (&wv, &xv)) in wr.iter().zip(x).enumerate() {
                            let amax = x[e / 32 * 32..][..32]
                                .iter()
                                .fold(0f32, |m, v| m.max(v.abs()));
                            let step = if amax >= 1e-30 {
                                amax as f64 / 254.0
                            } else {
                                xv.abs() as f64
                            };
                            bound += wv.abs() as f64 * step;
                            mag += (wv as f64 * xv as f64).abs();
                        }
                        let p = want[tok * n_rows + r] as f64;
                        let tol = 1.01 * bound + 1e-5 * mag + 1e-30;
                        assert!(
                            (p - exact).abs() <= tol,
                            "{t} r{r} t{tok}: {p} vs exact {exact} (bound {tol})"
                        );
                    }
                }
            }
        }
    }
}

/// The tile variants of a kernel table: (tile, the dot product it must equal, name).
fn tile_variants(
    k: &TypeKernels,
) -> Vec<(
    dino_kernels::dispatch::TileFn,
    dino_kernels::dispatch::DotFn,
    &'static str,
)> {
    let mut v = vec![];
    if let Some(tile) = k.tile {
        v.push((tile, k.vec_dot, "per-row"));
    }
    if let Some(b) = k.batch {
        if let Some(tile) = b.tile {
            v.push((tile, b.dot, "batched"));
        }
    }
    v
}

/// Weight rows of extreme content: all bits set / clear / 0x77 with finite scales (for float
/// types: all -1 / all 0 / all -1), huge and tiny scales.
fn extreme_rows(rng: &mut StdRng, t: GgmlType, n: usize) -> Vec<Vec<u8>> {
    let rs = t.row_size(n as u64).unwrap() as usize;
    let mut rows = Vec::new();
    for fill in [0xFFu8, 0x00, 0x77] {
        let mut w = vec![fill; rs];
        if t.block_size() == 1 {
            quantize_row(t, &vec![if fill == 0 { 0.0 } else { -1.0 }; n], &mut w).unwrap();
        } else {
            for blk in w.chunks_exact_mut(t.type_size()) {
                for &off in f16_fields(t) {
                    blk[off..off + 2].copy_from_slice(&f16_to_le(1.5));
                }
            }
        }
        rows.push(w);
    }
    rows.push(hostile_row(rng, t, n, 60000.0));
    rows.push(hostile_row(rng, t, n, 2f32.powi(-13)));
    rows
}

/// Activations of extreme content: all max, all min, zeros, alternating huge/small, tiny, an
/// integer ramp.
fn extreme_acts(rng: &mut StdRng, n: usize) -> Vec<Vec<f32>> {
    vec![
        vec![1e4; n],
        vec![-1e4; n],
        vec![0.0; n],
        (0..n)
            .map(|i| if i % 2 == 0 { 1e4 } else { -1e-4 })
            .collect(),
        rand_f32(rng, n, 1e-20),
        (0..n).map(|i| (i % 255) as f32 - 127.0).collect(),
    ]
}

/// Every tile kernel equals its dot product bit for bit on the cases the shape test leaves out:
/// float rows whose length exercises the 8-element steps, the scalar tail and several
/// chain-pass blocks, and for every type a tile of extreme rows × extreme activations.
#[test]
fn tile_kernels_equal_their_dot_products_on_tails_and_extremes() {
    let mut rng = StdRng::seed_from_u64(46);
    let mut checked = 0;
    for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
        for t in SUPPORTED {
            let k = kernels_for(isa, t).unwrap();
            for (tile, dot, kind) in tile_variants(k) {
                let lengths: &[usize] = if t.block_size() == 1 {
                    &[1, 7, 8, 31, 33, 100, 517, 1000, 1100, 2085]
                } else {
                    &[]
                };
                for &n in lengths {
                    for &(n_rows, n_tok) in &[(9, 7), (4, 1), (13, 5), (8, 12)] {
                        let rs = t.row_size(n as u64).unwrap() as usize;
                        let mut w = Vec::with_capacity(rs * n_rows);
                        for r in 0..n_rows {
                            if r % 2 == 0 {
                                let mut q = vec![0u8; rs];
                                quantize_row(t, &rand_f32(&mut rng, n, 2.0), &mut q).unwrap();
                                w.extend(q);
                            } else {
                                w.extend(hostile_row(&mut rng, t, n, 1.0));
                            }
                        }
                        let mut a = Vec::new();
                        for _ in 0..n_tok {
                            a.extend(quantize_act_both(t, isa, &rand_f32(&mut rng, n, 3.0)));
                        }
                        check_tile(t, isa, tile, dot, (n, n_rows, n_tok), &w, &a, kind);
                        checked += 1;
                    }
                }
                let bs = t.block_size().max(32);
                for n in [bs, 3 * bs] {
                    let w: Vec<u8> = extreme_rows(&mut rng, t, n).concat();
                    let acts = extreme_acts(&mut rng, n);
                    let a: Vec<u8> = acts
                        .iter()
                        .flat_map(|x| quantize_act_both(t, isa, x))
                        .collect();
                    let n_rows = w.len() / t.row_size(n as u64).unwrap() as usize;
                    let what = format!("{kind}, extremes");
                    check_tile(t, isa, tile, dot, (n, n_rows, acts.len()), &w, &a, &what);
                    checked += 1;
                }
            }
        }
    }
    eprintln!("{checked} tiles checked");
}

/// SwiGLU at every SIMD level equals the scalar twin bit for bit, across the exp range and
/// past its cut-offs.
#[test]
fn swiglu_simd_equals_scalar() {
    use dino_kernels::dispatch::op_kernels_for;
    let mut rng = StdRng::seed_from_u64(47);
    let mut gate: Vec<f32> = rand_f32(&mut rng, 4099, 20.0);
    gate.extend([
        0.0,
        -0.0,
        88.7,
        -88.7,
        100.0,
        -100.0,
        1e-40,
        -1e-40,
        f32::MAX,
        f32::MIN,
        1e30,
        -1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        87.0,
        -87.0,
        103.5,
        -133.0,
    ]);
    gate.extend((0..2000).map(|i| (i as f32 - 1000.0) * 0.137));
    gate.extend((0..400).map(|i| (i as f32 - 200.0) * 0.9));
    let up: Vec<f32> = rand_f32(&mut rng, gate.len(), 3.0);
    let mut want = gate.clone();
    dino_kernels::ops::swiglu_scalar(&mut want, &up);
    for isa in simd_levels() {
        let mut got = gate.clone();
        (op_kernels_for(isa).unwrap().swiglu)(&mut got, &up);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{isa} swiglu({}) = {g} vs {w}",
                gate[i]
            );
        }
    }
}

/// RoPE at every SIMD level equals the scalar twin bit for bit: both styles, partial rotation,
/// frequency factors, large positions and large values.
#[test]
fn rope_simd_equals_scalar() {
    use dino_kernels::dispatch::op_kernels_for;
    use dino_kernels::ops::{RopeParams, RopeStyle};
    let mut rng = StdRng::seed_from_u64(48);
    for style in [RopeStyle::Normal, RopeStyle::Neox] {
        for (head_dim, n_dims, factors) in
            [(64usize, 64usize, false), (128, 64, true), (80, 80, false)]
        {
            let p = RopeParams {
                style,
                n_dims,
                freq_base: 10000.0,
                freq_scale: 0.5,
                freq_factors: factors
                    .then(|| (0..n_dims / 2).map(|i| 1.0 + i as f32 * 0.1).collect()),
                attn_factor: 1.0,
            };
            for pos in [0i64, 1, 17, 4095, 100_000] {
                let mut cache = vec![0f32; n_dims];
                p.cache(pos, &mut cache);
                let x = rand_f32(&mut rng, 3 * head_dim, 1e4);
                let mut want = x.clone();
                p.apply_scalar(&mut want, head_dim, &cache);
                for isa in simd_levels() {
                    let mut got = x.clone();
                    (op_kernels_for(isa).unwrap().rope)(&p, &mut got, head_dim, &cache);
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(g, w)| g.to_bits() == w.to_bits()),
                        "{isa} {style:?} hd {head_dim} pos {pos}"
                    );
                }
            }
        }
    }
}

/// The Walsh–Hadamard rotation at every SIMD level equals the scalar twin bit for bit, and the
/// twin equals ggml's order (scale, then strides 1, 2, 4, … over the whole chunk): chunk sizes
/// 2 to 256, small, large and f32-overflowing values.
#[test]
fn fwht_simd_equals_scalar() {
    use dino_kernels::dispatch::op_kernels_for;
    use dino_kernels::ops::fwht_scalar;
    let mut rng = StdRng::seed_from_u64(49);
    // ggml_compute_forward_fwht_impl, transcribed.
    let ggml = |x: &mut [f32], n: usize| {
        let scale = 1.0 / (n as f32).sqrt();
        for c in x.chunks_exact_mut(n) {
            c.iter_mut().for_each(|v| *v *= scale);
            let mut len = 1;
            while len < n {
                for i in (0..n).step_by(2 * len) {
                    for j in 0..len {
                        let (u, v) = (c[i + j], c[i + len + j]);
                        c[i + j] = u + v;
                        c[i + len + j] = u - v;
                    }
                }
                len <<= 1;
            }
        }
    };
    for n in [2usize, 4, 8, 16, 32, 64, 128, 256, 512, 1024] {
        for scale in [1e-3f32, 1.0, 3e4, 3e37] {
            let x = rand_f32(&mut rng, 3 * n, scale);
            let mut want = x.clone();
            ggml(&mut want, n);
            let mut got = x.clone();
            fwht_scalar(&mut got, n);
            let same = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .all(|(g, w)| g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()))
            };
            assert!(same(&got, &want), "scalar n {n} scale {scale}");
            for isa in simd_levels() {
                let mut got = x.clone();
                (op_kernels_for(isa).unwrap().fwht)(&mut got, n);
                assert!(same(&got, &want), "{isa} n {n} scale {scale}");
            }
        }
    }
}

/// The column-layout kernel (activation sparsity): every level equals the scalar twin bit for
/// bit, on random, extreme and all-equal weights and inputs, zero blocks and lone inputs.
#[test]
fn column_gemv_simd_equals_scalar() {
    use dino_kernels::dispatch::op_kernels_for;
    use dino_kernels::matmul::QMatrix;
    use dino_kernels::pool::ThreadPool;
    use dino_kernels::sparse::{column_gemv_scalar, ColumnMatrix, SparsePlan};
    let mut rng = StdRng::seed_from_u64(77);
    let pool = ThreadPool::new(1);
    let (n_in, n_out) = (96usize, 208usize);
    for case in 0..6 {
        let w: Vec<f32> = match case {
            0 => rand_f32(&mut rng, n_in * n_out, 1.0),
            1 => rand_f32(&mut rng, n_in * n_out, 6e4),
            2 => vec![1.0; n_in * n_out],
            _ => rand_f32(&mut rng, n_in * n_out, 1e-3),
        };
        let wb: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let m = QMatrix::new("w", &wb, F32, n_in, n_out).unwrap();
        let c = ColumnMatrix::from_matrices(&pool, &[&m]).unwrap();
        let mut x = rand_f32(&mut rng, n_in, [1.0, 3e4, 1.0, 1e-30, 1.0, 1.0][case]);
        match case {
            3 => x[32..64].fill(0.0),                         // a block with no input
            4 => x.iter_mut().skip(1).for_each(|v| *v = 0.0), // one input in all
            5 => x.iter_mut().step_by(3).for_each(|v| *v = 0.0),
            _ => {}
        }
        let mut plan = SparsePlan::default();
        c.plan(&x, &mut plan);
        // Outputs by tiles of 64: all of them, the first, the middle one, the short last.
        for tiles in [0..4usize, 0..1, 1..2, 3..4, 2..4] {
            let len = (tiles.end * 64).min(n_out) - tiles.start * 64;
            let mut want = vec![0f32; len];
            column_gemv_scalar(&c.view(), &plan, tiles.clone(), &mut want);
            for isa in simd_levels() {
                let mut got = vec![f32::NAN; len];
                (op_kernels_for(isa).unwrap().column_gemv)(
                    &c.view(),
                    &plan,
                    tiles.clone(),
                    &mut got,
                );
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same, "{isa} case {case} tiles {tiles:?}");
            }
        }
    }
}

/// The sparse product equals its dense twin on the same zeroed inputs: `ColumnMatrix::gemv`
/// against the product over the column matrix's own weights with the plan's quantized inputs
/// (f64), and against the source matrices' dense product within the rounding of int8
/// activations.
#[test]
fn sparse_gemv_equals_its_dense_twin() {
    use dino_kernels::matmul::{self, MatmulScratch, QMatrix};
    use dino_kernels::pool::ThreadPool;
    use dino_kernels::sparse::{ColumnMatrix, SparsePlan};
    let mut rng = StdRng::seed_from_u64(78);
    let pool = ThreadPool::new(2);
    let (n_in, n_a, n_b) = (256usize, 96usize, 160usize);
    for t in [Q8_0, Q4_0, Q4_K, Q6_K] {
        let src_a = rand_f32(&mut rng, n_in * n_a, 1.0);
        let src_b = rand_f32(&mut rng, n_in * n_b, 1.0);
        let q = |src: &[f32], rows: usize| {
            let rb = t.row_size(n_in as u64).unwrap() as usize;
            let mut out = vec![0u8; rb * rows];
            for (s, d) in src.chunks_exact(n_in).zip(out.chunks_exact_mut(rb)) {
                dino_kernels::quant::quantize_row(t, s, d).unwrap();
            }
            out
        };
        let (ba, bb) = (q(&src_a, n_a), q(&src_b, n_b));
        let ma = QMatrix::new("a", &ba, t, n_in, n_a).unwrap();
        let mb = QMatrix::new("b", &bb, t, n_in, n_b).unwrap();
        let c = ColumnMatrix::from_matrices(&pool, &[&ma, &mb]).unwrap();
        let n_out = n_a + n_b;
        for sparsity in [0.0f32, 0.5, 0.9, 1.0] {
            let mut x = rand_f32(&mut rng, n_in, 2.0);
            let thr = 2.0 * sparsity;
            x.iter_mut()
                .filter(|v| v.abs() < thr)
                .for_each(|v| *v = 0.0);
            let mut y = vec![f32::NAN; n_out];
            let mut plan = SparsePlan::default();
            c.gemv(&pool, &x, &mut y, &mut plan);
            let n_read: usize = plan
                .groups
                .iter()
                .map(|g| g.0.iter().collect::<std::collections::BTreeSet<_>>().len())
                .sum();
            assert!(n_read <= x.iter().filter(|v| **v != 0.0).count());
            // The plan's quantized inputs.
            let mut xq = vec![0f64; n_in];
            for b in &plan.blocks {
                for (idx, v) in &plan.groups[b.g0 as usize..b.g1 as usize] {
                    for (k, &i) in idx.iter().enumerate() {
                        let q = v.to_le_bytes()[k] as i8;
                        if q != 0 {
                            xq[i as usize] = q as f64 * b.dx as f64;
                        }
                    }
                }
            }
            let mut dense = vec![0f32; n_out];
            let mut mm = MatmulScratch::default();
            matmul::matmul(&pool, &ma, &x, 1, &mut dense[..n_a], &mut mm);
            matmul::matmul(&pool, &mb, &x, 1, &mut dense[n_a..], &mut mm);
            for j in 0..n_out {
                let twin: f64 = (0..n_in).map(|i| xq[i] * c.weight(j, i) as f64).sum();
                let scale: f64 = (0..n_in)
                    .map(|i| (x[i] as f64 * c.weight(j, i) as f64).abs())
                    .sum::<f64>()
                    + 1e-30;
                assert!(
                    ((y[j] as f64 - twin) / scale).abs() < 1e-5,
                    "{t:?} sparsity {sparsity} out {j}: {} vs {twin}",
                    y[j]
                );
                assert!(
                    ((y[j] - dense[j]) as f64 / scale).abs() < 0.02,
                    "{t:?} sparsity {sparsity} out {j}: {} vs dense {}",
                    y[j],
                    dense[j]
                );
            }
        }
    }
}
