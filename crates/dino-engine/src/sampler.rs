//! The sampler chain: penalties → top-k → top-p → min-p → temperature → selection.
//! Seeded with our own PRNG so a seed reproduces the same text on every platform and build.

use dino_core::{Error, Result};
use std::collections::HashMap;

/// Sampling settings. `temperature <= 0` means greedy (argmax after penalties).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables.
    pub repeat_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0x5eed,
        }
    }
}

impl SamplerConfig {
    /// Pure argmax.
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |f: &str, v: String| Err(Error::invalid(format!("sampler: {f} {v}")));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad("temperature must be ≥ 0, got", self.temperature.to_string());
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("top_p must be in [0, 1], got", self.top_p.to_string());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p must be in [0, 1], got", self.min_p.to_string());
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad(
                "repeat_penalty must be > 0, got",
                self.repeat_penalty.to_string(),
            );
        }
        if !self.frequency_penalty.is_finite() || !self.presence_penalty.is_finite() {
            return bad("penalties must be finite", String::new());
        }
        Ok(())
    }
}

/// A candidate token and its logit (later its probability).
#[derive(Clone, Copy, Debug)]
struct Cand {
    id: u32,
    logit: f32,
}

/// xoshiro256** seeded through splitmix64: small, fast and identical everywhere.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A configured chain with its own RNG and candidate buffer.
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Rng,
    cands: Vec<Cand>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Result<Sampler> {
        cfg.validate()?;
        Ok(Sampler {
            rng: Rng::new(cfg.seed),
            cfg,
            cands: Vec::new(),
        })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Pick the next token from `logits` given the tokens so far (`history`, prompt included).
    /// Whether [`Sampler::sample`] is the plain argmax of the logits (greedy, no penalties),
    /// which [`argmax_rows`] computes for a whole batch at once.
    pub fn is_plain_greedy(&self) -> bool {
        let cfg = &self.cfg;
        cfg.temperature <= 0.0
            && cfg.repeat_penalty == 1.0
            && cfg.frequency_penalty == 0.0
            && cfg.presence_penalty == 0.0
    }

    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        if self.is_plain_greedy() {
            // Plain greedy: the argmax of the logits as they are (the same choice as below,
            // without copying the vocabulary into candidates).
            return argmax(logits);
        }
        let cfg = &self.cfg;
        self.cands.clear();
        self.cands
            .extend(logits.iter().enumerate().map(|(i, &l)| Cand {
                id: i as u32,
                logit: l,
            }));
        apply_penalties(&mut self.cands, history, cfg);
        if cfg.temperature <= 0.0 {
            // Argmax; ties go to the lowest id, as llama.cpp's greedy sampler does.
            let mut best = self.cands[0];
            for c in &self.cands[1..] {
                if c.logit > best.logit {
                    best = *c;
                }
            }
            return best.id;
        }
        // Sort descending by logit (stable on id for reproducibility).
        let k = if cfg.top_k > 0 {
            cfg.top_k.min(self.cands.len())
        } else {
            self.cands.len()
        };
        let cmp = |a: &Cand, b: &Cand| b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id));
        if k < self.cands.len() {
            self.cands.select_nth_unstable_by(k - 1, cmp);
            self.cands.truncate(k);
        }
        self.cands.sort_unstable_by(cmp);
        // Softmax over the survivors for top-p / min-p.
        let max = self.cands[0].logit;
        let mut probs: Vec<f64> = self
            .cands
            .iter()
            .map(|c| ((c.logit - max) as f64).exp())
            .collect();
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
        let mut keep = self.cands.len();
        if cfg.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= cfg.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if cfg.min_p > 0.0 {
            let floor = probs[0] * cfg.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        self.cands.truncate(keep);
        // Temperature, then sample.
        let t = cfg.temperature as f64;
        let weights: Vec<f64> = self
            .cands
            .iter()
            .map(|c| (((c.logit - max) as f64) / t).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (c, w) in self.cands.iter().zip(&weights) {
            if r < *w {
                return c.id;
            }
            r -= w;
        }
        self.cands[self.cands.len() - 1].id
    }
}

/// The index of the largest logit; ties go to the lowest index (llama.cpp's greedy sampler),
/// and a NaN is never chosen over a number: the choice of a scan keeping the first strictly
/// larger value, in two passes that vectorize (the maximum, then its first position).
fn argmax(logits: &[f32]) -> u32 {
    if logits.first().is_none_or(|l| l.is_nan()) {
        // The scan starts from entry 0 and nothing compares greater than a NaN.
        return 0;
    }
    part_max(logits).map_or(0, |(_, i)| i as u32)
}

/// The largest non-NaN value of `x` and the first index holding it (`None`: all NaN). The
/// maximum runs over 16 independent lanes (the compiler turns them into vector max
/// instructions; one running maximum is a serial chain). NaNs are skipped as `f32::max` skips
/// them; +0 and -0 compare equal, so whichever of them the lanes keep, the first index found is
/// the same.
fn part_max(x: &[f32]) -> Option<(f32, usize)> {
    const L: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; L];
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let max = chunks.remainder().iter().copied().fold(
        lanes.into_iter().fold(f32::NEG_INFINITY, f32::max),
        f32::max,
    );
    let block = x
        .chunks(L)
        .position(|c| c.iter().fold(false, |hit, &l| hit | (l == max)))?;
    let at = x[block * L..].iter().position(|&l| l == max)?;
    Some((max, block * L + at))
}

/// [`Sampler::sample`]'s choice for a plain-greedy sampler ([`Sampler::is_plain_greedy`]) for
/// every row of `data` (`[rows, n_vocab]`) at once, into `out`. Each thread of the pool scans
/// its own part of the vocabulary in every row, the part its share of the output product wrote
/// (so still in its cache); the parts' maxima are then combined in vocabulary order, which
/// gives the single scan's choice, ties and NaNs included.
pub fn argmax_rows(
    pool: &dino_kernels::pool::ThreadPool,
    data: &[f32],
    n_vocab: usize,
    out: &mut Vec<u32>,
) {
    out.clear();
    if n_vocab == 0 {
        return;
    }
    let rows = data.len() / n_vocab;
    let n = pool.n_threads().min(n_vocab.div_ceil(4096)).max(1);
    // The output product's split: one contiguous range of 16-row groups per thread.
    let part = n_vocab.div_ceil(n).div_ceil(16) * 16;
    let parts = n_vocab.div_ceil(part);
    let found = std::sync::Mutex::new(vec![None; rows * parts]);
    pool.run_on(parts, &|tid, _| {
        let r = tid * part..((tid + 1) * part).min(n_vocab);
        let mine: Vec<Option<(f32, usize)>> = (0..rows)
            .map(|row| {
                part_max(&data[row * n_vocab + r.start..row * n_vocab + r.end])
                    .map(|(m, i)| (m, r.start + i))
            })
            .collect();
        let mut f = found.lock().unwrap_or_else(|e| e.into_inner());
        for (row, m) in mine.into_iter().enumerate() {
            f[row * parts + tid] = m;
        }
    });
    let found = found.into_inner().unwrap_or_else(|e| e.into_inner());
    out.extend((0..rows).map(|row| {
        if data[row * n_vocab].is_nan() {
            return 0;
        }
        let ps = &found[row * parts..(row + 1) * parts];
        let max = ps
            .iter()
            .flatten()
            .fold(f32::NEG_INFINITY, |a, &(m, _)| a.max(m));
        ps.iter()
            .flatten()
            .find(|&&(m, _)| m == max)
            .map_or(0, |&(_, i)| i as u32)
    }));
}

fn apply_penalties(cands: &mut [Cand], history: &[u32], cfg: &SamplerConfig) {
    if cfg.repeat_penalty == 1.0 && cfg.frequency_penalty == 0.0 && cfg.presence_penalty == 0.0 {
        return;
    }
    let recent = &history[history.len().saturating_sub(cfg.penalty_last_n)..];
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &t in recent {
        *counts.entry(t).or_default() += 1;
    }
    for (&id, &count) in &counts {
        let Some(c) = cands.get_mut(id as usize) else {
            continue;
        };
        // As llama.cpp: divide positive logits, multiply negative ones.
        if c.logit <= 0.0 {
            c.logit *= cfg.repeat_penalty;
        } else {
            c.logit /= cfg.repeat_penalty;
        }
        c.logit -= count as f32 * cfg.frequency_penalty + cfg.presence_penalty;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The greedy fast path picks what the candidate scan picks: ties to the lowest id, NaNs
    /// and infinities included.
    #[test]
    fn argmax_equals_the_candidate_scan() {
        let scan = |l: &[f32]| {
            let mut best = 0;
            for i in 1..l.len() {
                if l[i] > l[best] {
                    best = i;
                }
            }
            best as u32
        };
        let mut seed = 7u64;
        for case in 0..600 {
            let n = 1 + case % 97;
            let mut l: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((seed >> 40) % 7) as f32 - 3.0
                })
                .collect();
            match case % 6 {
                1 => l[case % n] = f32::NAN,
                // The maximum is a zero, -0 before +0: the first of them wins.
                5 => l.iter_mut().enumerate().for_each(|(i, x)| {
                    *x = [-1.0, -0.0, 0.0, -2.0][(i + case / 6) % 4];
                }),
                2 => l[0] = f32::NAN,
                3 => l.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
                4 => l[n / 2] = f32::INFINITY,
                _ => {}
            }
            assert_eq!(argmax(&l), scan(&l), "{l:?}");
        }
    }

    /// The batched argmax picks, row by row, what the single scan picks, whatever the parts:
    /// maxima in either part, ties across the boundary, NaNs, signed zeros.
    #[test]
    fn argmax_rows_equals_argmax() {
        let mut seed = 11u64;
        for threads in [1usize, 2, 3] {
            let pool = dino_kernels::pool::ThreadPool::new(threads);
            for case in 0..60 {
                let n_vocab = [1usize, 17, 4096, 5000, 9000, 12_345][case % 6];
                let rows = 1 + case % 5;
                let mut data: Vec<f32> = (0..rows * n_vocab)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        ((seed >> 40) % 9) as f32 - 4.0
                    })
                    .collect();
                match case % 5 {
                    1 => data.iter_mut().step_by(7).for_each(|x| *x = f32::NAN),
                    2 => data[0] = f32::NAN,
                    3 => data
                        .iter_mut()
                        .for_each(|x| *x = if *x > 0.0 { -0.0 } else { *x }),
                    // A row's only maximum late in the row (in the last part when split).
                    4 => {
                        for row in data.chunks_mut(n_vocab) {
                            let at = n_vocab - 1 - (case * 31) % n_vocab.div_ceil(4);
                            row[at] = 9.0;
                        }
                    }
                    _ => {}
                }
                let mut got = Vec::new();
                argmax_rows(&pool, &data, n_vocab, &mut got);
                let want: Vec<u32> = data.chunks(n_vocab).map(argmax).collect();
                assert_eq!(got, want, "threads {threads} case {case}");
            }
        }
    }

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37 % 100) as f32) * 0.1).collect()
    }

    #[test]
    fn greedy_picks_argmax() {
        let l = logits();
        let best = l
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        assert_eq!(s.sample(&l, &[]), best);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let l = logits();
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                temperature: 1.5,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed,
                ..Default::default()
            })
            .unwrap();
            (0..50).map(|_| s.sample(&l, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_k_one_is_greedy_and_top_k_limits_choices() {
        let l = logits();
        let mut g = Sampler::new(SamplerConfig::greedy()).unwrap();
        let best = g.sample(&l, &[]);
        let mut s = Sampler::new(SamplerConfig {
            top_k: 1,
            temperature: 5.0,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&l, &[]), best);
        }
        let mut sorted: Vec<(usize, f32)> = l.iter().copied().enumerate().collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top3: Vec<u32> = sorted[..3].iter().map(|x| x.0 as u32).collect();
        let mut s = Sampler::new(SamplerConfig {
            top_k: 3,
            temperature: 100.0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        })
        .unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let t = s.sample(&l, &[]);
            assert!(top3.contains(&t));
            seen.insert(t);
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // One dominant token: top_p 0.5 and min_p 0.5 both leave only it.
        let mut l = vec![0.0f32; 10];
        l[7] = 10.0;
        for cfg in [
            SamplerConfig {
                top_p: 0.5,
                min_p: 0.0,
                top_k: 0,
                temperature: 1.0,
                ..Default::default()
            },
            SamplerConfig {
                top_p: 1.0,
                min_p: 0.5,
                top_k: 0,
                temperature: 1.0,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(cfg).unwrap();
            for _ in 0..50 {
                assert_eq!(s.sample(&l, &[]), 7);
            }
        }
    }

    #[test]
    fn penalties_push_repeated_tokens_down() {
        let mut l = vec![0.0f32; 4];
        l[0] = 2.0;
        l[1] = 1.9;
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 1.5,
            ..SamplerConfig::greedy()
        })
        .unwrap();
        assert_eq!(s.sample(&l, &[0]), 1);
        let mut s = Sampler::new(SamplerConfig {
            presence_penalty: 0.5,
            ..SamplerConfig::greedy()
        })
        .unwrap();
        assert_eq!(s.sample(&l, &[0]), 1);
        let mut s = Sampler::new(SamplerConfig {
            frequency_penalty: 0.06,
            ..SamplerConfig::greedy()
        })
        .unwrap();
        assert_eq!(s.sample(&l, &[0]), 0, "one occurrence: 2.0-0.06 > 1.9");
        assert_eq!(s.sample(&l, &[0, 0]), 1, "two occurrences: 2.0-0.12 < 1.9");
    }

    #[test]
    fn invalid_configs_are_errors() {
        for cfg in [
            SamplerConfig {
                temperature: -1.0,
                ..Default::default()
            },
            SamplerConfig {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplerConfig {
                top_p: 1.5,
                ..Default::default()
            },
            SamplerConfig {
                min_p: -0.1,
                ..Default::default()
            },
            SamplerConfig {
                repeat_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(Sampler::new(cfg).is_err());
        }
    }
}
