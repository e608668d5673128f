//! Activation-sparsity thresholds (TEAL): the distribution of each layer matrix's input
//! magnitudes on a calibration text, kept as the magnitude below which 1 %, 2 %, …, 99 % of its
//! inputs fall. `dino calibrate --thresholds FILE` writes the table; `--sparsity P` with
//! `--thresholds FILE` zeroes each matrix's inputs below its `P` quantile
//! ([`dino_models::Sparsity`]).

use crate::perplexity::{kld_of_log_probs, log_probs};
use crate::Engine;
use dino_core::{Error, Result};
pub use dino_models::Sparsity;
use dino_models::{Batch, Logits};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The inputs a layer's matrices read, in the order of [`Thresholds::schedule`]'s levels:
/// Q/K/V's (the normed hidden state), Wo's (the attention output), gate/up's (the normed hidden
/// state) and down's (the gated intermediate).
pub const SITES: [&str; 4] = ["attn_in", "attn_out", "ffn_in", "ffn_mid"];

/// The site of a layer matrix by its GGUF name.
pub fn site_of(name: &str) -> Option<usize> {
    let role = name.strip_prefix("blk.")?.split_once('.')?.1;
    let role = role.strip_suffix(".weight").unwrap_or(role);
    match role {
        "attn_q" | "attn_k" | "attn_v" | "attn_qkv" => Some(0),
        "attn_output" => Some(1),
        "ffn_gate" | "ffn_up" => Some(2),
        "ffn_down" => Some(3),
        _ => None,
    }
}

/// Histogram bins: an `|x|`'s f32 bits without the sign, shifted right by this many bits
/// (64 bins per power of two, relative width under 1.1 %).
const SHIFT: u32 = 17;
const N_BINS: usize = 1 << (31 - SHIFT);
/// The levels the table keeps: `k / 100` for `k` in `1..=99`.
const N_LEVELS: usize = 99;

/// Histograms of input magnitudes per matrix group (the matrices that read one input share one
/// histogram).
#[derive(Default)]
pub struct MagnitudeStats {
    groups: Vec<(Vec<String>, Vec<u64>)>,
    index: HashMap<String, usize>,
}

impl MagnitudeStats {
    /// Adds the values of `rows`, the input of the matrices `names`.
    pub fn add(&mut self, names: &[&str], rows: &[f32]) {
        let Some(first) = names.first() else { return };
        let g = match self.index.get(*first) {
            Some(&g) => g,
            None => {
                let g = self.groups.len();
                self.groups.push((
                    names.iter().map(|s| s.to_string()).collect(),
                    vec![0; N_BINS],
                ));
                self.index.insert(first.to_string(), g);
                g
            }
        };
        let h = &mut self.groups[g].1;
        for &x in rows {
            h[((x.to_bits() & 0x7fff_ffff) >> SHIFT) as usize] += 1;
        }
    }

    /// The quantile table of every matrix seen.
    pub fn thresholds(&self, n_tokens: usize, dataset: &str) -> Thresholds {
        let mut table = BTreeMap::new();
        for (names, h) in &self.groups {
            let q = quantiles(h);
            for name in names {
                table.insert(name.clone(), q.clone());
            }
        }
        Thresholds {
            n_tokens,
            dataset: dataset.to_string(),
            table,
            schedule: Vec::new(),
        }
    }
}

/// The magnitudes below which `k %` of a histogram's values fall, `k = 1..=99`, interpolated
/// linearly inside a bin.
fn quantiles(h: &[u64]) -> Vec<f32> {
    let total: u64 = h.iter().sum();
    let edge = |b: usize| f32::from_bits(((b as u32) << SHIFT).min(0x7f7f_ffff));
    let mut out = Vec::with_capacity(N_LEVELS);
    let (mut b, mut below) = (0usize, 0u64);
    for k in 1..=N_LEVELS {
        let want = total as f64 * k as f64 / 100.0;
        while b < h.len() && (below + h[b]) as f64 <= want {
            below += h[b];
            b += 1;
        }
        if total == 0 || b >= h.len() {
            out.push(if total == 0 { 0.0 } else { edge(h.len()) });
            continue;
        }
        let frac = ((want - below as f64) / h[b] as f64) as f32;
        let (lo, hi) = (edge(b), edge(b + 1));
        out.push(lo + (hi - lo) * frac);
    }
    // Monotone by construction; make it so against rounding too.
    for i in 1..out.len() {
        if out[i] < out[i - 1] {
            out[i] = out[i - 1];
        }
    }
    out
}

/// Per-matrix input-magnitude quantiles: `table[name][k - 1]` is the magnitude below which
/// `k %` of the matrix's inputs fell on the calibration text.
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    pub n_tokens: usize,
    pub dataset: String,
    pub table: BTreeMap<String, Vec<f32>>,
    /// Per-site levels for rising overall sparsity (the share of the layer matrices' weights
    /// skipped), found by [`schedule`]: `(overall, [level of each of SITES])`, increasing.
    /// Empty: every matrix at the requested level.
    pub schedule: Vec<(f32, [f32; 4])>,
}

impl Thresholds {
    /// Tab-separated: a `# dino activation thresholds n_tokens=N dataset=D` line, then one row
    /// per matrix: its name and the 99 quantiles.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut s = format!(
            "# dino activation thresholds n_tokens={} dataset={}\n",
            self.n_tokens,
            self.dataset.replace(['\n', '\t'], " ")
        );
        for (overall, lv) in &self.schedule {
            s.push_str(&format!(
                "#schedule\t{overall}\t{}\t{}\t{}\t{}\n",
                lv[0], lv[1], lv[2], lv[3]
            ));
        }
        for (name, q) in &self.table {
            s.push_str(name);
            for v in q {
                s.push_str(&format!("\t{v:e}"));
            }
            s.push('\n');
        }
        std::fs::write(path, s).map_err(|e| Error::io(path.display(), e))
    }

    pub fn load(path: &Path) -> Result<Thresholds> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
        let bad = |m: String| Error::format(path.display(), m);
        let mut lines = text.lines();
        let head = lines
            .next()
            .and_then(|l| l.strip_prefix("# dino activation thresholds n_tokens="))
            .ok_or_else(|| {
                bad("not a thresholds file (`dino calibrate --thresholds` writes them)".into())
            })?;
        let (n, dataset) = head.split_once(" dataset=").unwrap_or((head, ""));
        let n_tokens = n
            .trim()
            .parse()
            .map_err(|_| bad(format!("bad token count '{n}'")))?;
        let mut table = BTreeMap::new();
        let mut schedule: Vec<(f32, [f32; 4])> = Vec::new();
        for (i, line) in lines.enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("#schedule\t") {
                let v: Vec<f32> = rest
                    .split('\t')
                    .map(|v| v.trim().parse::<f32>())
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| bad(format!("line {}: {e}", i + 2)))?;
                let ok = v.len() == 5
                    && v.iter().all(|x| (0.0..1.0).contains(x))
                    && schedule.last().is_none_or(|p| p.0 <= v[0]);
                if !ok {
                    return Err(bad(format!(
                        "line {}: a schedule row is an overall level and 4 site levels in \
                         [0, 1), rising",
                        i + 2
                    )));
                }
                schedule.push((v[0], [v[1], v[2], v[3], v[4]]));
                continue;
            }
            let mut f = line.split('\t');
            let name = f.next().unwrap_or_default().to_string();
            let q: Vec<f32> = f
                .map(|v| v.trim().parse::<f32>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(format!("line {}: {e}", i + 2)))?;
            if q.len() != N_LEVELS {
                return Err(bad(format!(
                    "line {}: {name} has {} quantiles, expected {N_LEVELS}",
                    i + 2,
                    q.len()
                )));
            }
            if q.iter().any(|v| !v.is_finite() || *v < 0.0) || q.windows(2).any(|w| w[1] < w[0]) {
                return Err(bad(format!(
                    "line {}: {name}'s quantiles must be finite, >= 0 and non-decreasing",
                    i + 2
                )));
            }
            table.insert(name, q);
        }
        if table.is_empty() {
            return Err(bad("no matrices".into()));
        }
        Ok(Thresholds {
            n_tokens,
            dataset: dataset.to_string(),
            table,
            schedule,
        })
    }

    /// The magnitude below which a share `level` of matrix `q`'s inputs fell, interpolated
    /// between the table's percent points.
    fn at(q: &[f32], level: f32) -> f32 {
        let k = level * 100.0;
        if k < 1.0 {
            return q[0] * k;
        }
        let i = (k.floor() as usize).min(N_LEVELS) - 1;
        let f = k - k.floor();
        let hi = q[(i + 1).min(N_LEVELS - 1)];
        q[i] + (hi - q[i]) * f
    }

    /// Thresholds with each site at its own level (`levels` in [`SITES`] order); matrices of no
    /// known site stay dense. `overall` is recorded as the target.
    pub fn sparsity_by_site(&self, overall: f32, levels: [f32; 4]) -> Result<Sparsity> {
        if levels.iter().any(|l| !(0.0..=0.99).contains(l)) {
            return Err(Error::invalid(format!(
                "site levels {levels:?}: each between 0 and 0.99"
            )));
        }
        let mut thresholds = HashMap::new();
        let mut shares = HashMap::new();
        for (name, q) in &self.table {
            let level = site_of(name).map_or(0.0, |s| levels[s]);
            thresholds.insert(name.clone(), Self::at(q, level));
            shares.insert(name.clone(), level);
        }
        Sparsity::new(overall.clamp(0.0, 0.99), thresholds)?.with_shares(shares)
    }

    /// The site levels of the schedule at overall sparsity `level` (linear between its rows),
    /// or `None` without a schedule or beyond its end.
    pub fn site_levels(&self, level: f32) -> Option<[f32; 4]> {
        let s = &self.schedule;
        let j = s.iter().position(|p| p.0 >= level)?;
        if j == 0 || s[j].0 == level {
            return Some(s[j].1);
        }
        let (a, b) = (&s[j - 1], &s[j]);
        let f = (level - a.0) / (b.0 - a.0);
        Some(std::array::from_fn(|k| a.1[k] + (b.1[k] - a.1[k]) * f))
    }

    /// The thresholds that zero a share `level` of each matrix's inputs (as measured on the
    /// calibration text), interpolated between the table's percent points.
    /// With a schedule, the site levels it gives for an overall share `level` of skipped
    /// weights; without one (or beyond its end: an error), every matrix at `level`.
    pub fn sparsity(&self, level: f32) -> Result<Sparsity> {
        if !(0.0..=0.99).contains(&level) {
            return Err(Error::invalid(format!(
                "--sparsity {level}: use a share of inputs between 0 and 0.99"
            )));
        }
        if self.schedule.is_empty() {
            let map = self
                .table
                .iter()
                .map(|(name, q)| (name.clone(), Self::at(q, level)))
                .collect::<HashMap<_, _>>();
            return Sparsity::new(level, map);
        }
        let levels = self.site_levels(level).ok_or_else(|| {
            Error::invalid(format!(
                "--sparsity {level}: the thresholds' schedule ends at {:.2}",
                self.schedule.last().map_or(0.0, |p| p.0)
            ))
        })?;
        self.sparsity_by_site(level, levels)
    }
}

/// Each site's share of the layer matrices' weights in `engine`'s file.
pub fn site_weights(engine: &Engine) -> [f64; 4] {
    let mut w = [0f64; 4];
    for t in engine.file.tensors() {
        if let Some(s) = site_of(&t.name) {
            w[s] += t.dims.iter().product::<u64>() as f64;
        }
    }
    let total: f64 = w.iter().sum::<f64>().max(1.0);
    w.map(|v| v / total)
}

/// TEAL's greedy allocation over the four sites: from dense, repeatedly raise by `step` the
/// site whose rise costs the least KL divergence (from the dense model, on `tokens`) per weight
/// skipped, until `max_overall` of the weights are skipped. Returns the path as
/// [`Thresholds::schedule`] rows. `on_step(overall, levels, kld)` reports progress.
pub fn schedule(
    engine: &Engine,
    th: &Thresholds,
    tokens: &[u32],
    step: f32,
    max_overall: f32,
    mut on_step: impl FnMut(f32, [f32; 4], f64),
) -> Result<Vec<(f32, [f32; 4])>> {
    if tokens.len() < 2 || !(0.01..=0.5).contains(&step) {
        return Err(Error::invalid(
            "sparsity schedule: at least 2 tokens and a step in [0.01, 0.5]",
        ));
    }
    let weights = site_weights(engine);
    let mut logits = Logits::default();
    let mut run = |s: Option<&Sparsity>| -> Result<Vec<f32>> {
        engine.model.set_sparsity(s)?;
        let mut kv = engine.new_kv(tokens.len())?;
        engine.forward(
            &Batch::from_tokens(tokens, 0, 0, true),
            &mut kv,
            &mut logits,
        )?;
        Ok(std::mem::take(&mut logits.data))
    };
    let n_vocab = engine.model.info().hparams.n_vocab;
    let dense: Vec<Vec<f64>> = run(None)?
        .chunks_exact(n_vocab)
        .map(|r| {
            let mut lp = Vec::new();
            log_probs(r, &mut lp);
            lp
        })
        .collect();
    let mut kld = |levels: [f32; 4]| -> Result<f64> {
        let out = run(Some(&th.sparsity_by_site(0.0, levels)?))?;
        let mut lq = Vec::new();
        let mut sum = 0.0;
        for (row, lp) in out.chunks_exact(n_vocab).zip(&dense) {
            log_probs(row, &mut lq);
            sum += kld_of_log_probs(lp, &lq);
        }
        Ok(sum / dense.len() as f64)
    };
    let mut levels = [0f32; 4];
    let (mut overall, mut cur) = (0f32, 0f64);
    let mut path = vec![(0.0, levels)];
    let result = (|| -> Result<()> {
        while overall < max_overall {
            let mut best: Option<(f64, usize, f64)> = None;
            for s in 0..4 {
                if weights[s] == 0.0 || levels[s] + step > 0.95 {
                    continue;
                }
                let mut c = levels;
                c[s] += step;
                let k = kld(c)?;
                let score = (k - cur).max(0.0) / (weights[s] * step as f64);
                if best.is_none_or(|b| score < b.0) {
                    best = Some((score, s, k));
                }
            }
            let Some((_, s, k)) = best else { break };
            levels[s] += step;
            cur = k;
            overall = (0..4).map(|i| weights[i] as f32 * levels[i]).sum();
            path.push((overall, levels));
            on_step(overall, levels, cur);
        }
        Ok(())
    })();
    engine.model.set_sparsity(None)?;
    result?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_distribution() {
        // 100,000 magnitudes spread evenly over (0, 1]: the k % quantile is k / 100.
        let mut s = MagnitudeStats::default();
        let n = 100_000;
        let rows: Vec<f32> = (1..=n)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 } * i as f32 / n as f32)
            .collect();
        s.add(&["a", "b"], &rows[..n / 2]);
        s.add(&["a", "b"], &rows[n / 2..]);
        let t = s.thresholds(7, "x");
        assert_eq!(t.table.len(), 2);
        assert_eq!(t.table["a"], t.table["b"]);
        for (k, &v) in t.table["a"].iter().enumerate() {
            let want = (k + 1) as f32 / 100.0;
            assert!((v - want).abs() < 2e-3, "{k}: {v} vs {want}");
        }
        let sp = t.sparsity(0.4).unwrap();
        assert!((sp.threshold("a").unwrap() - 0.4).abs() < 2e-3);
        let sp = t.sparsity(0.455).unwrap();
        assert!((sp.threshold("b").unwrap() - 0.455).abs() < 2e-3);
        assert_eq!(t.sparsity(0.0).unwrap().threshold("a").unwrap(), 0.0);
        assert!(t.sparsity(0.995).is_err());
        assert!(t.sparsity(-0.1).is_err());
        // Zeroing by the 40 % threshold zeroes 40 % of the values.
        let mut x = rows.clone();
        let z = dino_models::sparsity::sparsify(
            &mut x,
            t.sparsity(0.4).unwrap().threshold("a").unwrap(),
        );
        assert!((z as f64 / n as f64 - 0.4).abs() < 3e-3, "{z}");
    }

    #[test]
    fn table_round_trips_and_bad_files_are_refused() {
        let mut s = MagnitudeStats::default();
        let rows: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0)
            .collect();
        s.add(&["blk.0.attn_q.weight", "blk.0.attn_k.weight"], &rows);
        s.add(&["blk.0.ffn_down.weight"], &rows[..100]);
        let mut t = s.thresholds(5000, "hamlet.txt");
        t.schedule = vec![
            (0.0, [0.0; 4]),
            (0.1, [0.0, 0.0, 0.0, 0.3]),
            (0.3, [0.1, 0.2, 0.3, 0.5]),
        ];
        let dir = std::env::temp_dir().join(format!("dino-thr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.tsv");
        t.save(&p).unwrap();
        assert_eq!(Thresholds::load(&p).unwrap(), t);
        // Halfway between two schedule rows: each site halfway between its levels, recorded as
        // the matrix's calibrated share (which decides its column layout).
        let sp = t.sparsity(0.2).unwrap();
        assert!((sp.share("blk.0.attn_k.weight") - 0.05).abs() < 1e-6);
        assert!((sp.share("blk.0.ffn_down.weight") - 0.4).abs() < 1e-6);
        assert_eq!(sp.level, 0.2);
        let text = std::fs::read_to_string(&p).unwrap();
        for (bad, what) in [
            ("hello\n".to_string(), "not a thresholds file"),
            (text.replace("\t", "\tx"), "line 2"),
            (
                text.lines().take(1).collect::<String>() + "\n",
                "no matrices",
            ),
            (
                text.rsplit_once('\t').unwrap().0.to_string() + "\tnan\n",
                "quantiles must be finite",
            ),
            (
                text.replace("#schedule\t0.3\t", "#schedule\t0.05\t"),
                "rising",
            ),
        ] {
            std::fs::write(&p, &bad).unwrap();
            let e = Thresholds::load(&p).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
