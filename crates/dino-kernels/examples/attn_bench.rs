//! Single-thread speed of the decode attention kernel (`dispatch::OpKernels::attend_decode`):
//! one GQA group of `G` query heads over `N_POS` cached positions, in ns per position and group,
//! for head sizes 64 and 128, with the cache in L2 (`N_SEQ=1`) or spread over many sequences.
//!
//! `cargo run --release -p dino-kernels --example attn_bench [N_POS] [G]`
use dino_kernels::dispatch::{op_kernels_for, Isa};
use dino_kernels::ops::{rows_to_blocks, AttnShape, KvBlocks, KvSpan, KV_BLOCK};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n_pos: usize = args.get(1).map_or(150, |s| s.parse().expect("N_POS"));
    let g: usize = args.get(2).map_or(3, |s| s.parse().expect("G"));
    let mut rng = StdRng::seed_from_u64(1);
    for hd in [64usize, 128] {
        let n_head_kv = 3;
        let row = n_head_kv * hd;
        // Many separate caches, visited in turn, so the rows come from memory as in a batch.
        let n_cache: usize = std::env::var("N_CACHE").map_or(64, |s| s.parse().expect("N_CACHE"));
        let caches: Vec<(Vec<f16>, Vec<f16>)> = (0..n_cache)
            .map(|_| {
                let mk = |rng: &mut StdRng| -> Vec<f16> {
                    (0..n_pos * row)
                        .map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0)))
                        .collect()
                };
                (mk(&mut rng), mk(&mut rng))
            })
            .collect();
        let sh = AttnShape {
            n_head: n_head_kv * g,
            n_head_kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        // Each cache in blocks, in order.
        let table: Vec<u32> = (0..n_pos.div_ceil(KV_BLOCK) as u32).collect();
        let caches: Vec<(Vec<f16>, Vec<f16>)> = caches
            .into_iter()
            .map(|(k, v)| {
                let mut kb = vec![f16::ZERO; table.len() * KV_BLOCK * row];
                let mut vb = kb.clone();
                rows_to_blocks(&k, n_pos, &sh, &table, &mut kb);
                rows_to_blocks(&v, n_pos, &sh, &table, &mut vb);
                (kb, vb)
            })
            .collect();
        let q: Vec<f32> = (0..g * hd)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        for isa in [Isa::Avx2, Isa::Avx512] {
            let Some(k) = op_kernels_for(isa) else {
                continue;
            };
            let mut out = vec![0f32; g * hd];
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                for (kc, vc) in &caches {
                    for kv_head in 0..n_head_kv {
                        let span = KvSpan {
                            k: KvBlocks {
                                data: kc,
                                table: &table,
                            },
                            v: KvBlocks {
                                data: vc,
                                table: &table,
                            },
                            kv_head,
                            first: 0,
                            n_pos,
                        };
                        (k.attend_decode)(&q, &span, &sh, &mut out);
                    }
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            let per = best * 1e9 / (n_cache * n_head_kv * n_pos) as f64;
            println!("hd {hd:>3}  {isa:<7} {per:>7.2} ns per position and group of {g}");
        }
    }
}
