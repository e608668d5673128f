//! Single-thread speed of the decode attention over f16 and quantized KV caches
//! (`ops::attend_decode` with each level's kernels): one GQA group of `G` query heads over
//! `N_POS` cached positions, in ns per position and group, for head sizes 64 and 128, keys and
//! values f16, Q8_0 or Q4_0, with the rows spread over `N_CACHE` caches (default 8: from memory
//! rather than L2, as in a long context); `REPS` repetitions (best taken), `ONLY=q8_0` for one
//! key type, `ISA=avx2` for one level.
//!
//! `cargo run --release -p dino-kernels --example attn_q_bench [N_POS] [G]`
use dino_kernels::dispatch::{op_kernels_for, Isa};
use dino_kernels::ops::{
    rows_to_blocks, rows_to_blocks_q, AttnShape, KvBlocks, KvRows, KvType, KvView, KV_BLOCK,
};
use dino_kernels::quant::blocks::as_blocks;
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// One layer's store in the cache's layout: f16 values or quant blocks as bytes.
struct Store {
    h: Vec<f16>,
    b: Vec<u8>,
    ty: KvType,
}

impl Store {
    fn new(ty: KvType, rows: &[f32], n_pos: usize, sh: &AttnShape, table: &[u32]) -> Store {
        let n = table.len() * KV_BLOCK * sh.n_head_kv;
        let mut st = Store {
            h: Vec::new(),
            b: Vec::new(),
            ty,
        };
        if ty == KvType::F16 {
            st.h = vec![f16::ZERO; n * sh.head_dim];
            let rh: Vec<f16> = rows.iter().map(|&x| f16::from_f32(x)).collect();
            rows_to_blocks(&rh, n_pos, sh, table, &mut st.h);
        } else {
            st.b = vec![0u8; n * ty.row_bytes(sh.head_dim).unwrap()];
            rows_to_blocks_q(ty, rows, n_pos, sh, table, &mut st.b);
        }
        st
    }
    fn rows<'a>(&'a self, table: &'a [u32]) -> KvRows<'a> {
        match self.ty {
            KvType::F16 => KvRows::F16(KvBlocks {
                data: &self.h,
                table,
            }),
            KvType::Q8_0 => KvRows::Q8_0(KvBlocks {
                data: as_blocks(&self.b),
                table,
            }),
            KvType::Q4_0 => KvRows::Q4_0(KvBlocks {
                data: as_blocks(&self.b),
                table,
            }),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n_pos: usize = args.get(1).map_or(2048, |s| s.parse().expect("N_POS"));
    let g: usize = args.get(2).map_or(3, |s| s.parse().expect("G"));
    let n_cache: usize = std::env::var("N_CACHE").map_or(8, |s| s.parse().expect("N_CACHE"));
    let reps: usize = std::env::var("REPS").map_or(5, |s| s.parse().expect("REPS"));
    // `ONLY=q8_0`: only caches whose keys are of that type.
    let only = std::env::var("ONLY").ok();
    let mut rng = StdRng::seed_from_u64(1);
    for hd in [64usize, 128] {
        let n_head_kv = 3;
        let row = n_head_kv * hd;
        let sh = AttnShape {
            n_head: n_head_kv * g,
            n_head_kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let table: Vec<u32> = (0..n_pos.div_ceil(KV_BLOCK) as u32).collect();
        let raw: Vec<(Vec<f32>, Vec<f32>)> = (0..n_cache)
            .map(|_| {
                let mut mk = || -> Vec<f32> {
                    (0..n_pos * row)
                        .map(|_| rng.random_range(-1.0f32..1.0))
                        .collect()
                };
                (mk(), mk())
            })
            .collect();
        let q: Vec<f32> = (0..g * hd)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        for (tk, tv) in [
            (KvType::F16, KvType::F16),
            (KvType::Q8_0, KvType::Q8_0),
            (KvType::Q4_0, KvType::Q4_0),
            (KvType::Q8_0, KvType::F16),
        ] {
            if only.as_deref().is_some_and(|o| o != tk.name()) {
                continue;
            }
            let caches: Vec<(Store, Store)> = raw
                .iter()
                .map(|(k, v)| {
                    (
                        Store::new(tk, k, n_pos, &sh, &table),
                        Store::new(tv, v, n_pos, &sh, &table),
                    )
                })
                .collect();
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                let Some(k) = op_kernels_for(isa) else {
                    continue;
                };
                if std::env::var("ISA").is_ok_and(|i| i != isa.name()) {
                    continue;
                }
                if isa == Isa::Scalar && n_pos > 512 {
                    continue;
                }
                let mut out = vec![0f32; g * hd];
                let mut best = f64::MAX;
                for _ in 0..reps {
                    let t = Instant::now();
                    for (kc, vc) in &caches {
                        for kv_head in 0..n_head_kv {
                            let view = KvView {
                                k: kc.rows(&table),
                                v: vc.rows(&table),
                                kv_head,
                                first: 0,
                                n_pos,
                            };
                            match view.f16() {
                                Some(span) => (k.attend_decode)(&q, &span, &sh, &mut out),
                                None => (k.attend_decode_q)(&q, &view, &sh, &mut out),
                            }
                        }
                    }
                    best = best.min(t.elapsed().as_secs_f64());
                }
                let per = best * 1e9 / (n_cache * n_head_kv * n_pos) as f64;
                println!(
                    "hd {hd:>3}  k {tk:<4} v {tv:<4} {isa:<7} {per:>7.2} ns per position and group of {g}"
                );
            }
        }
    }
}
