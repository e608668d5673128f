//! Structured pruning (`dino prune`): whole layers and FFN channels removed from a GGUF, the
//! result a smaller GGUF that llama.cpp loads as it is.
//!
//! - **Layers** are chosen by how little they change the residual stream: over a calibration
//!   text, the mean angular distance `arccos(cos(h_l, h_{l+n})) / π` between the input of layer
//!   `l` and of layer `l + n` (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper
//!   Layers", 2024). The `n` consecutive layers with the smallest distance go.
//! - **FFN channels** are ranked per layer by the size of what they add to the output:
//!   `sqrt(Σ h_c²) · ‖W_down[:, c]‖` (the activation statistic of the down projection's input,
//!   as in Wanda), and every layer keeps the same number (llama.cpp's Llama/Qwen graphs take one
//!   `feed_forward_length`), rounded to a whole block of the down projection's type. Gate and
//!   up lose whole rows (their bytes are copied); the down projection's rows are re-encoded in
//!   their own type without the dropped inputs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use dino_core::{Error, Result};
use dino_formats::gguf::{GgufFile, GgufWriter, Value};

use crate::perplexity::{perplexity_observed, PerplexityOptions, PerplexityResult};
use crate::quantize::layer_of;
use crate::Engine;

/// What a calibration pass measured for pruning.
#[derive(Clone, Debug)]
pub struct PruneStats {
    pub n_layer: usize,
    /// `dist[n - 1][l]`: mean angular distance (in units of π) between the inputs of layers
    /// `l` and `l + n` (`l + n = n_layer`: the output norm's input), `n = 1 ..= max_block`.
    pub dist: Vec<Vec<f64>>,
    /// Per layer: `Σ h_c²` of each channel entering the FFN down projection.
    pub ffn_sq: Vec<Vec<f64>>,
    /// Tokens measured.
    pub n_tokens: usize,
    pub perplexity: PerplexityResult,
}

impl PruneStats {
    /// The `n` consecutive layers to remove: the first layer of the block with the smallest
    /// distance, and that distance.
    pub fn best_block(&self, n: usize) -> Result<(usize, f64)> {
        let row = self.dist.get(n.wrapping_sub(1)).ok_or_else(|| {
            Error::invalid(format!(
                "cannot remove {n} of {} layers (measured blocks of 1 to {})",
                self.n_layer,
                self.dist.len()
            ))
        })?;
        row.iter()
            .copied()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .ok_or_else(|| Error::invalid("no layer block to remove"))
    }
}

/// Runs `engine` over `text` (perplexity's chunking) and measures the layer distances for
/// blocks of up to `max_block` layers and the FFN channel statistics.
pub fn measure(
    engine: &Engine,
    text: &str,
    opts: &PerplexityOptions,
    max_block: usize,
    on_chunk: impl FnMut(usize, usize, f64),
) -> Result<PruneStats> {
    let n_layer = engine.model.info().hparams.n_layer;
    let max_block = max_block.clamp(1, n_layer.max(1));
    let mut inputs: Vec<Vec<f32>> = vec![Vec::new(); n_layer + 1];
    // dist_sum[n - 1][l]: the sum over tokens for layers l and l + n.
    let mut dist_sum: Vec<Vec<f64>> = (1..=max_block)
        .map(|n| vec![0.0; n_layer + 1 - n])
        .collect();
    let mut ffn_sq: Vec<Vec<f64>> = vec![Vec::new(); n_layer];
    let mut n_tokens = 0usize;
    let mut bad = None;
    let mut obs = |names: &[&str], rows: &[f32], n: usize| {
        if n == 0 || bad.is_some() {
            return;
        }
        let Some(name) = names.first() else { return };
        let Some(il) = layer_of(name) else { return };
        if dino_models::is_layer_input(name) {
            if il > n_layer {
                return;
            }
            inputs[il].clear();
            inputs[il].extend_from_slice(rows);
            if il < n_layer {
                return;
            }
            // The last input of this batch: every pair is here.
            let width = rows.len() / n;
            if inputs.iter().any(|v| v.len() != rows.len()) {
                bad = Some("a layer's input was not observed".to_string());
                return;
            }
            for (k, sums) in dist_sum.iter_mut().enumerate() {
                for (l, s) in sums.iter_mut().enumerate() {
                    let (a, b) = (&inputs[l], &inputs[l + k + 1]);
                    for (ra, rb) in a.chunks_exact(width).zip(b.chunks_exact(width)) {
                        *s += angular_distance(ra, rb);
                    }
                }
            }
            n_tokens += n;
        } else if names.iter().any(|m| m.ends_with(".ffn_down.weight")) && il < n_layer {
            let width = rows.len() / n;
            let acc = &mut ffn_sq[il];
            if acc.is_empty() {
                acc.resize(width, 0.0);
            }
            if acc.len() != width {
                return;
            }
            for row in rows.chunks_exact(width) {
                for (s, &x) in acc.iter_mut().zip(row) {
                    *s += (x as f64) * (x as f64);
                }
            }
        }
    };
    let perplexity = perplexity_observed(engine, text, opts, on_chunk, Some(&mut obs))?;
    if let Some(why) = bad {
        return Err(Error::invalid(format!("pruning statistics: {why}")));
    }
    if n_tokens == 0 {
        return Err(Error::Unsupported(format!(
            "{}: this architecture does not report its layer inputs (pruning)",
            engine.model.info().arch
        )));
    }
    let dist = dist_sum
        .into_iter()
        .map(|r| r.into_iter().map(|s| s / n_tokens as f64).collect())
        .collect();
    Ok(PruneStats {
        n_layer,
        dist,
        ffn_sq,
        n_tokens,
        perplexity,
    })
}

/// `arccos(cos(a, b)) / π`; 0 for a zero vector.
pub fn angular_distance(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    (ab / (aa * bb).sqrt()).clamp(-1.0, 1.0).acos() / std::f64::consts::PI
}

/// What to remove.
#[derive(Clone, Debug, Default)]
pub struct PrunePlan {
    /// Layers removed (sorted).
    pub layers: Vec<usize>,
    /// FFN channels kept, per original layer (sorted), when the FFN is narrowed.
    pub ffn_keep: Option<BTreeMap<usize, Vec<usize>>>,
}

/// What [`prune`] wrote.
#[derive(Clone, Debug)]
pub struct PruneReport {
    pub n_layer_in: usize,
    pub n_layer_out: usize,
    pub n_ff_in: usize,
    pub n_ff_out: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub n_tensors: usize,
}

/// The FFN channels to keep in every layer: `round(keep · n_ff)` of them, a multiple of the
/// down projections' block size (at least one block), chosen per layer by
/// `Σ h_c² · ‖W_down[:, c]‖²`.
pub fn ffn_channels(
    file: &GgufFile,
    stats: &PruneStats,
    keep: f64,
) -> Result<BTreeMap<usize, Vec<usize>>> {
    if !(keep > 0.0 && keep <= 1.0) {
        return Err(Error::invalid(format!(
            "--ffn-keep {keep}: the share of FFN channels kept must be in (0, 1]"
        )));
    }
    // One width for all layers: a whole number of blocks of every down projection's type.
    let mut blk = 32;
    for il in 0..stats.ffn_sq.len() {
        let (t, _) = file.tensor(&format!("blk.{il}.ffn_down.weight"))?;
        blk = blk.max(t.ty.block_size());
    }
    let mut out = BTreeMap::new();
    let mut row = Vec::new();
    for (il, sq) in stats.ffn_sq.iter().enumerate() {
        let name = format!("blk.{il}.ffn_down.weight");
        let (t, data) = file.tensor(&name)?;
        let (n_ff, n_embd) = (t.ne0() as usize, t.n_rows() as usize);
        if sq.len() != n_ff {
            return Err(Error::invalid(format!(
                "{name}: {} channels measured for {n_ff} inputs (a dense SwiGLU/GELU FFN is needed)",
                sq.len()
            )));
        }
        let n_keep =
            (((keep * n_ff as f64) / blk as f64).round() as usize).clamp(1, n_ff / blk) * blk;
        // ‖W_down[:, c]‖² over the output rows.
        let mut col_sq = vec![0f64; n_ff];
        let rb = t.ty.row_size(n_ff as u64).unwrap_or(0) as usize;
        row.resize(n_ff, 0f32);
        for r in 0..n_embd {
            dino_kernels::quant::dequantize_row(t.ty, &data[r * rb..(r + 1) * rb], &mut row)?;
            for (s, &w) in col_sq.iter_mut().zip(&row) {
                *s += (w as f64) * (w as f64);
            }
        }
        let mut order: Vec<usize> = (0..n_ff).collect();
        let score = |c: usize| sq[c] * col_sq[c];
        order.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
        let mut kept = order[..n_keep].to_vec();
        kept.sort_unstable();
        out.insert(il, kept);
    }
    Ok(out)
}

/// Writes `src` without the plan's layers and FFN channels to `dst` (layers renumbered, the
/// architecture's `block_count` and `feed_forward_length` updated).
pub fn prune(src: &GgufFile, dst: &Path, plan: &PrunePlan, progress: bool) -> Result<PruneReport> {
    let md = src.metadata();
    let arch = md.get_str("general.architecture")?.to_string();
    let n_layer = md.get_u32(&format!("{arch}.block_count"))? as usize;
    let ff_key = format!("{arch}.feed_forward_length");
    let n_ff = md.get_u32(&ff_key)? as usize;
    if let Some(&l) = plan.layers.iter().find(|&&l| l >= n_layer) {
        return Err(Error::invalid(format!(
            "layer {l} does not exist (the model has {n_layer})"
        )));
    }
    if plan.layers.len() >= n_layer {
        return Err(Error::invalid(format!(
            "removing {} of {n_layer} layers leaves none",
            plan.layers.len()
        )));
    }
    for (k, v) in md.iter() {
        if k.starts_with(&format!("{arch}."))
            && v.as_array().is_some_and(|a| a.len() == n_layer)
            && !plan.layers.is_empty()
        {
            return Err(Error::Unsupported(format!(
                "{k}: a per-layer list; removing layers from such a model is not supported"
            )));
        }
    }
    let renumber: Vec<Option<usize>> = {
        let mut next = 0;
        (0..n_layer)
            .map(|l| {
                (!plan.layers.contains(&l)).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect()
    };
    let n_layer_out = n_layer - plan.layers.len();
    let n_ff_out = match &plan.ffn_keep {
        Some(k) => k.values().next().map_or(n_ff, |v| v.len()),
        None => n_ff,
    };
    let mut w = GgufWriter::new();
    w.set_all(md)?;
    w.set(
        format!("{arch}.block_count"),
        Value::U32(n_layer_out as u32),
    )?;
    if n_ff_out != n_ff {
        w.set(ff_key, Value::U32(n_ff_out as u32))?;
    }
    if let Some(name) = md.opt_str("general.name")? {
        let tag = match (plan.layers.len(), n_ff_out != n_ff) {
            (0, _) => format!("ffn {n_ff_out}"),
            (r, false) => format!("{r} layers pruned"),
            (r, true) => format!("{r} layers pruned, ffn {n_ff_out}"),
        };
        w.set("general.name", Value::String(format!("{name} ({tag})")))?;
    }
    // (source index, new name, narrowing: None / rows kept / inputs kept)
    enum Cut {
        Copy,
        Rows(usize),
        Inputs(usize),
    }
    let mut jobs: Vec<(usize, Cut)> = Vec::new();
    let mut bytes_in = 0;
    for (i, t) in src.tensors().iter().enumerate() {
        bytes_in += t.size;
        let (name, layer) = match layer_of(&t.name) {
            Some(l) if l < n_layer => match renumber[l] {
                None => continue,
                Some(nl) => (
                    format!("blk.{nl}.{}", &t.name[format!("blk.{l}.").len()..]),
                    Some(l),
                ),
            },
            _ => (t.name.clone(), None),
        };
        let mut dims = t.dims.clone();
        let mut cut = Cut::Copy;
        if let (Some(l), Some(keep)) = (layer, &plan.ffn_keep) {
            let kept = keep.get(&l).map_or(n_ff, |v| v.len());
            let base = t.name.rsplit('.').nth(1).unwrap_or("");
            let is_ffn = t.name.contains(".ffn_");
            match base {
                "ffn_gate" | "ffn_up" if dims.len() == 2 && dims[1] as usize == n_ff => {
                    dims[1] = kept as u64;
                    cut = Cut::Rows(l);
                }
                "ffn_down" if dims.len() == 2 && dims[0] as usize == n_ff => {
                    dims[0] = kept as u64;
                    cut = Cut::Inputs(l);
                }
                _ if is_ffn && dims.contains(&(n_ff as u64)) => {
                    return Err(Error::Unsupported(format!(
                        "{}: an FFN tensor of width {n_ff} that narrowing does not know",
                        t.name
                    )))
                }
                _ => {}
            }
        }
        w.add_tensor(name, &dims, t.ty)?;
        jobs.push((i, cut));
    }
    let total: u64 = w.tensors().iter().map(|s| s.size()).sum::<Result<u64>>()?;
    let mut bar = crate::stderr_progress("pruning");
    let mut done = 0u64;
    let mut buf = Vec::new();
    let mut row = Vec::new();
    let mut kept_row = Vec::new();
    w.write_to_path(dst, |k, spec, out: &mut dyn Write| {
        let (i, cut) = &jobs[k];
        let t = &src.tensors()[*i];
        let data = src.tensor_data(t);
        let io = |e| Error::io(dst.display(), e);
        let keep = |l: &usize| {
            plan.ffn_keep
                .as_ref()
                .and_then(|m| m.get(l))
                .ok_or_else(|| Error::invalid(format!("no FFN channels chosen for layer {l}")))
        };
        match cut {
            Cut::Copy => out.write_all(data).map_err(io)?,
            Cut::Rows(l) => {
                let rb = t.ty.row_size(t.ne0()).unwrap_or(0) as usize;
                for &r in keep(l)? {
                    out.write_all(&data[r * rb..(r + 1) * rb]).map_err(io)?;
                }
            }
            Cut::Inputs(l) => {
                let kept = keep(l)?;
                let n_in = t.ne0() as usize;
                let rb = t.ty.row_size(n_in as u64).unwrap_or(0) as usize;
                let ob = t.ty.row_size(kept.len() as u64).unwrap_or(0) as usize;
                row.resize(n_in, 0f32);
                kept_row.resize(kept.len(), 0f32);
                buf.resize(ob, 0u8);
                for r in 0..t.n_rows() as usize {
                    dino_kernels::quant::dequantize_row(
                        t.ty,
                        &data[r * rb..(r + 1) * rb],
                        &mut row,
                    )?;
                    for (d, &c) in kept_row.iter_mut().zip(kept) {
                        *d = row[c];
                    }
                    dino_kernels::quant::quantize_row(spec.ty, &kept_row, &mut buf)?;
                    out.write_all(&buf).map_err(io)?;
                }
            }
        }
        done += spec.size()?;
        if progress {
            bar(done, total);
        }
        Ok(())
    })?;
    Ok(PruneReport {
        n_layer_in: n_layer,
        n_layer_out,
        n_ff_in: n_ff,
        n_ff_out,
        bytes_in,
        bytes_out: total,
        n_tensors: jobs.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn angular_distance_of_known_pairs() {
        assert_eq!(angular_distance(&[1.0, 0.0], &[2.0, 0.0]), 0.0);
        assert!((angular_distance(&[1.0, 0.0], &[0.0, 3.0]) - 0.5).abs() < 1e-12);
        assert!((angular_distance(&[1.0, 1.0], &[-1.0, -2.0]) - 0.8975836176504333).abs() < 1e-9);
        assert!((angular_distance(&[1.0, 1.0], &[-1.0, -1.0]) - 1.0).abs() < 1e-7);
        assert_eq!(angular_distance(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn layer_numbers_of_names() {
        assert_eq!(layer_of("blk.12.ffn_down.weight"), Some(12));
        assert_eq!(layer_of("blk.3.layer_input"), Some(3));
        assert_eq!(layer_of("output.weight"), None);
        assert_eq!(layer_of("blk.x.attn_q.weight"), None);
    }

    #[test]
    fn the_block_with_the_smallest_distance_goes() {
        let s = PruneStats {
            n_layer: 4,
            dist: vec![vec![0.3, 0.1, 0.2, 0.5], vec![0.4, 0.25, 0.6]],
            ffn_sq: vec![],
            n_tokens: 1,
            perplexity: PerplexityResult {
                n_tokens: 0,
                n_chunks: 0,
                n_scored: 0,
                ppl: 1.0,
                ppl_err: 0.0,
                per_chunk: vec![],
                elapsed: Default::default(),
            },
        };
        assert_eq!(s.best_block(1).unwrap(), (1, 0.1));
        assert_eq!(s.best_block(2).unwrap(), (1, 0.25));
        assert!(s.best_block(3).is_err());
        assert!(s.best_block(0).is_err());
    }
}
