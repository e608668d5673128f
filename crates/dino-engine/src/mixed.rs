//! Layer-wise mixed precision (`dino quantize --target-bpw` / `--target-size`): each weight
//! matrix gets the type that buys the most output quality per byte, from measured sensitivities.
//!
//! 1. **Reference and operating point.** The full-precision source's next-token distributions
//!    over a short calibration text are the reference. The file type's own mix (`--type`, e.g.
//!    Q4_K_M, with the importance matrix when given) is quantized once: the operating point.
//! 2. **Sensitivity.** For every matrix and every candidate type, the operating point with only
//!    that matrix changed to that type (quantized from the source) runs over the same tokens;
//!    the mean KL divergence from the reference is the matrix's cost at that type. Measuring
//!    around the operating point, rather than one matrix at a time from a lossless base, matters:
//!    on small models a single matrix at 5 bits already costs a tenth of a whole Q4_K_M file's
//!    KL divergence, so costs measured alone are far from additive, while changes around a
//!    realistic mix add up much better.
//! 3. **Allocation.** Changes are taken as additive: the predicted KL divergence of a choice is
//!    the operating point's plus each matrix's change. Under the byte budget, a greedy walk along
//!    each matrix's lower convex hull of (bytes, cost) — always the upgrade with the largest cost
//!    saved per byte — solves the convexified multiple-choice knapsack; upgrades that no longer
//!    fit are skipped.
//!
//! The sensitivities can be kept in a file (`--sensitivity FILE`) so that several budgets are
//! tried without measuring again.

use crate::perplexity::{kld_of_log_probs, log_probs};
use crate::quantize::{convert_tensor, is_quantized, quantizable};
use crate::stderr_progress;
use dino_core::{Error, GgmlType, Result};
use dino_formats::gguf::{GgufFile, PlacedTensor, Storage};
use dino_kernels::pool::ThreadPool;
use dino_models::{Batch, KvCache, LoadOptions, Logits};
use dino_tokenizer::Tokenizer;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The byte budget of the tensors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Bits per weight over all tensors (norms and the rest included).
    Bpw(f64),
    /// Bytes of the output file.
    Bytes(u64),
}

/// One matrix's measured costs.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorCosts {
    pub name: String,
    /// (type, bytes, mean KLD from the source of the operating point with this matrix at this
    /// type), by increasing bytes.
    pub options: Vec<(GgmlType, u64, f64)>,
}

/// Every quantizable matrix's costs, and what they were measured on.
#[derive(Clone, Debug, PartialEq)]
pub struct Sensitivity {
    pub n_tokens: usize,
    /// The operating point: the file type, `+imatrix` when one was used.
    pub point: String,
    /// KL divergence of the operating point itself.
    pub base_kld: f64,
    pub tensors: Vec<TensorCosts>,
}

/// How to measure.
#[derive(Clone, Debug)]
pub struct SensitivityOptions {
    /// Calibration tokens (one sequence from the start of the text; 64..=4096).
    pub n_tokens: usize,
    pub threads: usize,
    pub progress: bool,
    /// Measure only these matrices (the others keep the operating point's type); `None`: all.
    pub only: Option<Vec<String>>,
}

/// The candidate types of a matrix with rows of `ne0` elements: the K-quants Q3_K..Q6_K and Q8_0
/// when rows are whole 256-element super-blocks, else the 32-element types (the operating
/// point's own type is always a candidate too).
pub fn candidates(ne0: u64) -> Vec<GgmlType> {
    use GgmlType::*;
    if ne0.is_multiple_of(256) {
        vec![Q3_K, Q4_K, Q5_K, Q6_K, Q8_0]
    } else if ne0.is_multiple_of(32) {
        vec![Q4_0, Q4_1, Q5_0, Q5_1, Q8_0]
    } else {
        vec![]
    }
}

/// Measures the sensitivity of every quantizable matrix of `src` (F32/F16/BF16 for meaningful
/// results) on the first `opts.n_tokens` tokens of `text`, around the operating point `point`
/// (each tensor's type, as [`crate::quantize::plan`] gives them). `scratch` is a directory for
/// the operating point's file (removed afterwards).
pub fn measure(
    src: &GgufFile,
    point: &crate::quantize::QuantizeOptions,
    text: &str,
    scratch: &Path,
    opts: &SensitivityOptions,
) -> Result<Sensitivity> {
    let n_tokens = opts.n_tokens;
    if !(64..=4096).contains(&n_tokens) {
        return Err(Error::invalid(format!(
            "--calib-tokens {n_tokens}: use 64 to 4096 tokens"
        )));
    }
    if !src.path().is_file() {
        return Err(Error::invalid(
            "--target-bpw/--target-size need a GGUF source: convert the checkpoint first \
             (dino convert)",
        ));
    }
    let tokenizer = Tokenizer::from_gguf(src.metadata())?;
    let mut tokens = tokenizer.encode(text, true, false)?;
    if tokens.len() < n_tokens {
        return Err(Error::invalid(format!(
            "the calibration text has {} tokens; {n_tokens} are needed",
            tokens.len()
        )));
    }
    tokens.truncate(n_tokens);
    let pool = Arc::new(ThreadPool::new(if opts.threads == 0 {
        dino_kernels::pool::default_threads()
    } else {
        opts.threads
    }));
    pool.set_active(pool.n_threads());
    let ctx = n_tokens.div_ceil(dino_models::KV_BLOCK) * dino_models::KV_BLOCK;
    let run = |file: GgufFile| -> Result<(usize, Vec<f32>)> {
        let model = dino_models::load(
            Arc::new(file),
            &LoadOptions {
                no_repack: true,
                ..LoadOptions::new(pool.clone())
            },
        )?;
        let mut kv = KvCache::new(model.kv_shape(), ctx, 1)?;
        let mut logits = Logits::default();
        model.forward(
            &Batch::from_tokens(&tokens, 0, 0, true),
            &mut kv,
            &mut logits,
        )?;
        Ok((model.info().hparams.n_vocab, logits.data))
    };

    // The reference: the source itself.
    let (n_vocab, ref_logits) = run(GgufFile::open(src.path())?)?;
    let reference: Vec<Vec<f64>> = ref_logits
        .chunks_exact(n_vocab)
        .map(|r| {
            let mut lp = Vec::new();
            log_probs(r, &mut lp);
            lp
        })
        .collect();
    drop(ref_logits);
    let kld = |logits: &[f32]| -> f64 {
        let mut lq = Vec::new();
        let mut sum = 0.0;
        for (row, lp) in logits.chunks_exact(n_vocab).zip(&reference) {
            log_probs(row, &mut lq);
            sum += kld_of_log_probs(lp, &lq);
        }
        sum / reference.len() as f64
    };

    // The operating point, written once.
    let base_path = scratch.join(format!(
        "dino-sensitivity-point-{}.gguf",
        std::process::id()
    ));
    let _cleanup = RemoveOnDrop(base_path.clone());
    let point_opts = crate::quantize::QuantizeOptions {
        mix: None,
        progress: false,
        ..point.clone()
    };
    crate::quantize::quantize_file(src, &base_path, &point_opts)?;
    let base = GgufFile::open(&base_path)?;
    let base_kld = kld(&run(GgufFile::open(&base_path)?)?.1);

    // The matrices and their candidates.
    let work: Vec<(usize, Vec<GgmlType>)> = src
        .tensors()
        .iter()
        .enumerate()
        .filter(|(_, t)| quantizable(&t.name, t.dims.len()))
        .map(|(i, t)| (i, candidates(t.ne0())))
        .filter(|(_, c)| !c.is_empty())
        .map(|(i, c)| {
            let measured = opts
                .only
                .as_ref()
                .is_none_or(|o| o.contains(&src.tensors()[i].name));
            (i, if measured { c } else { vec![] })
        })
        .collect();
    let base_type = |name: &str| base.tensor_info(name).map(|t| t.ty);
    let total: u64 = work
        .iter()
        .map(|(i, c)| {
            let b = base_type(&src.tensors()[*i].name);
            c.iter().filter(|&&t| Some(t) != b).count() as u64
        })
        .sum();
    let mut progress = stderr_progress("sensitivity");
    let mut done = 0u64;
    let mut out = Vec::with_capacity(work.len());
    for (i, cands) in work {
        let t = &src.tensors()[i];
        let ne0 = t.ne0() as usize;
        let base_ty = base_type(&t.name).unwrap_or(t.ty);
        let qw = match &point.imatrix {
            Some(im) => im.weights(&t.name, ne0)?,
            None => None,
        };
        let mut options = Vec::with_capacity(cands.len() + 1);
        let mut all = cands.clone();
        if !all.contains(&base_ty) {
            all.push(base_ty);
        }
        for &ty in &all {
            let bytes = ty
                .row_size(t.n_elements())
                .ok_or_else(|| Error::invalid(format!("tensor '{}': size overflows", t.name)))?;
            if ty == base_ty {
                options.push((ty, bytes, base_kld));
                continue;
            }
            let mut q = vec![0u8; bytes as usize];
            convert_tensor(
                &pool,
                t.ty,
                src.tensor_data(t),
                ty,
                ne0,
                qw.as_deref(),
                &mut q,
            )
            .map_err(|e| Error::invalid(format!("tensor '{}': {e}", t.name)))?;
            let file = swap_tensor(&base_path, &base, &t.name, ty, q)?;
            options.push((ty, bytes, kld(&run(file)?.1)));
            done += 1;
            if opts.progress {
                progress(done, total);
            }
        }
        options.sort_by_key(|o| o.1);
        out.push(TensorCosts {
            name: t.name.clone(),
            options,
        });
    }
    Ok(Sensitivity {
        n_tokens,
        point: point_name(point),
        base_kld,
        tensors: out,
    })
}

/// How an operating point is named in a sensitivity file.
pub fn point_name(o: &crate::quantize::QuantizeOptions) -> String {
    format!(
        "{}{}{}",
        o.ftype.name(),
        if o.pure { "-pure" } else { "" },
        if o.imatrix.is_some() { "+imatrix" } else { "" }
    )
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The base file with tensor `name` replaced by `bytes` of type `ty` (an in-memory file over a
/// fresh map of the base: no copy of the other tensors).
fn swap_tensor(
    base_path: &Path,
    base: &GgufFile,
    name: &str,
    ty: GgmlType,
    bytes: Vec<u8>,
) -> Result<GgufFile> {
    let f = std::fs::File::open(base_path).map_err(|e| Error::io(base_path.display(), e))?;
    // SAFETY: a read-only private map of a file this process wrote and keeps unchanged until it
    // is removed after the last use (RemoveOnDrop in `measure`).
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(base_path.display(), e))?;
    let start = base.data_offset() as usize;
    let placed = base
        .tensors()
        .iter()
        .map(|t| {
            if t.name == name {
                PlacedTensor {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty,
                    storage: 1,
                    offset: 0,
                }
            } else {
                PlacedTensor {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty: t.ty,
                    storage: 0,
                    offset: t.offset,
                }
            }
        })
        .collect();
    GgufFile::assemble(
        base_path,
        base.metadata().clone(),
        vec![
            Storage::mapped(base_path.display().to_string(), map, start),
            Storage::owned(name, bytes),
        ],
        placed,
    )
}

impl Sensitivity {
    /// Tab-separated: a `# dino sensitivity n_tokens=N` line, then `name type bytes kld` rows.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut s = format!(
            "# dino sensitivity n_tokens={} point={} base_kld={:e}\n",
            self.n_tokens, self.point, self.base_kld
        );
        for t in &self.tensors {
            for (ty, bytes, k) in &t.options {
                s.push_str(&format!("{}\t{}\t{bytes}\t{k:e}\n", t.name, ty.name()));
            }
        }
        std::fs::write(path, s).map_err(|e| Error::io(path.display(), e))
    }

    pub fn load(path: &Path) -> Result<Sensitivity> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
        let bad = |m: String| Error::format(path.display(), m);
        let mut lines = text.lines();
        let (n_tokens, point, base_kld) = lines
            .next()
            .and_then(|l| l.strip_prefix("# dino sensitivity n_tokens="))
            .and_then(|rest| {
                let (n, rest) = rest.split_once(" point=")?;
                let (p, k) = rest.split_once(" base_kld=")?;
                Some((
                    n.trim().parse().ok()?,
                    p.to_string(),
                    k.trim().parse().ok()?,
                ))
            })
            .ok_or_else(|| bad("not a dino sensitivity file (no header line)".into()))?;
        let mut by_name: BTreeMap<String, Vec<(GgmlType, u64, f64)>> = BTreeMap::new();
        let mut order = Vec::new();
        for (i, l) in lines.enumerate() {
            let f: Vec<&str> = l.split('\t').collect();
            let parsed = (f.len() == 4)
                .then(|| {
                    Some((
                        GgmlType::from_name(f[1])?,
                        f[2].parse::<u64>().ok()?,
                        f[3].parse::<f64>().ok()?,
                    ))
                })
                .flatten();
            let Some((ty, bytes, k)) = parsed else {
                return Err(bad(format!(
                    "line {}: expected name, type, bytes, kld",
                    i + 2
                )));
            };
            if !by_name.contains_key(f[0]) {
                order.push(f[0].to_string());
            }
            by_name
                .entry(f[0].to_string())
                .or_default()
                .push((ty, bytes, k));
        }
        Ok(Sensitivity {
            n_tokens,
            point,
            base_kld,
            tensors: order
                .into_iter()
                .map(|name| {
                    let mut options = by_name.remove(&name).unwrap_or_default();
                    options.sort_by_key(|o| o.1);
                    TensorCosts { name, options }
                })
                .collect(),
        })
    }

    /// Whether these costs cover exactly the quantizable matrices of `file` with its sizes.
    pub fn matches(&self, file: &GgufFile) -> bool {
        let want: Vec<(&str, u64)> = file
            .tensors()
            .iter()
            .filter(|t| quantizable(&t.name, t.dims.len()) && !candidates(t.ne0()).is_empty())
            .map(|t| (t.name.as_str(), t.n_elements()))
            .collect();
        want.len() == self.tensors.len()
            && want.iter().zip(&self.tensors).all(|((n, ne), c)| {
                *n == c.name
                    && c.options
                        .iter()
                        .all(|(ty, b, _)| ty.row_size(*ne) == Some(*b))
            })
    }
}

/// What [`allocate`] chose.
#[derive(Clone, Debug)]
pub struct Allocation {
    pub types: BTreeMap<String, GgmlType>,
    /// Bytes of the matrices chosen and of everything else.
    pub bytes: u64,
    pub fixed_bytes: u64,
    /// The operating point's measured KL divergence from the source, and the predicted change
    /// of the choice (the sum of each matrix's measured change: a ranking more than a forecast,
    /// as the changes do not add up exactly).
    pub point_kld: f64,
    pub predicted_kld: f64,
}

/// Chooses a type per matrix minimising the summed cost with the tensors' total bytes (the
/// matrices plus `fixed_bytes` for the rest) within `budget_bytes`.
pub fn allocate(sens: &Sensitivity, fixed_bytes: u64, budget_bytes: u64) -> Result<Allocation> {
    // Per matrix: the lower convex hull of its (bytes, cost) options, cheapest first.
    let hulls: Vec<Vec<(GgmlType, u64, f64)>> = sens
        .tensors
        .iter()
        .map(|t| {
            let mut h: Vec<(GgmlType, u64, f64)> = Vec::new();
            for &o in &t.options {
                // Options that cost more bytes and more loss are never worth taking.
                if h.last().is_some_and(|l| o.2 >= l.2) {
                    continue;
                }
                while h.len() >= 2 {
                    let (a, b) = (h[h.len() - 2], h[h.len() - 1]);
                    // b is above the segment a→o: drop it.
                    let lhs = (b.2 - a.2) * (o.1 - a.1) as f64;
                    let rhs = (o.2 - a.2) * (b.1 - a.1) as f64;
                    if lhs >= rhs {
                        h.pop();
                    } else {
                        break;
                    }
                }
                h.push(o);
            }
            h
        })
        .collect();
    let min_bytes: u64 = fixed_bytes + hulls.iter().map(|h| h[0].1).sum::<u64>();
    if min_bytes > budget_bytes {
        return Err(Error::invalid(format!(
            "the budget ({budget_bytes} bytes) is below the smallest mix of the candidate types \
             ({min_bytes} bytes): raise --target-bpw / --target-size"
        )));
    }
    let mut at = vec![0usize; hulls.len()];
    let mut used = min_bytes;
    loop {
        // The best next step by cost saved per byte that still fits.
        let mut best: Option<(usize, f64)> = None;
        for (i, h) in hulls.iter().enumerate() {
            let j = at[i];
            if j + 1 >= h.len() {
                continue;
            }
            let db = h[j + 1].1 - h[j].1;
            if used + db > budget_bytes {
                continue;
            }
            let gain = (h[j].2 - h[j + 1].2) / db as f64;
            if best.is_none_or(|(_, g)| gain > g) {
                best = Some((i, gain));
            }
        }
        let Some((i, _)) = best else { break };
        used += hulls[i][at[i] + 1].1 - hulls[i][at[i]].1;
        at[i] += 1;
    }
    // The greedy walk stops at an upgrade too big for what is left (the token embedding, say)
    // and may leave bytes unspent. Exchanges: take such an upgrade when the bytes it lacks are
    // freed by downgrades that cost less than it saves (the cheapest losses per byte first).
    loop {
        let mut best: Option<(f64, usize, Vec<usize>)> = None;
        for (u, h) in hulls.iter().enumerate() {
            let j = at[u];
            if j + 1 >= h.len() {
                continue;
            }
            let db = h[j + 1].1 - h[j].1;
            let gain = h[j].2 - h[j + 1].2;
            let need = (used + db).saturating_sub(budget_bytes);
            if need == 0 {
                continue;
            }
            let mut downs: Vec<(f64, usize, u64, f64)> = hulls
                .iter()
                .enumerate()
                .filter(|&(d, _)| d != u && at[d] > 0)
                .map(|(d, hd)| {
                    let (lo, hi) = (hd[at[d] - 1], hd[at[d]]);
                    let (freed, loss) = (hi.1 - lo.1, lo.2 - hi.2);
                    (loss / freed as f64, d, freed, loss)
                })
                .collect();
            downs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (mut freed, mut loss, mut picked) = (0u64, 0f64, Vec::new());
            for (_, d, f, l) in downs {
                if freed >= need {
                    break;
                }
                freed += f;
                loss += l;
                picked.push(d);
            }
            let net = gain - loss;
            if freed >= need && net > 0.0 && best.as_ref().is_none_or(|b| net > b.0) {
                best = Some((net, u, picked));
            }
        }
        let Some((_, u, picked)) = best else { break };
        used += hulls[u][at[u] + 1].1 - hulls[u][at[u]].1;
        at[u] += 1;
        for d in picked {
            used -= hulls[d][at[d]].1 - hulls[d][at[d] - 1].1;
            at[d] -= 1;
        }
    }
    let mut types = BTreeMap::new();
    let mut predicted = 0.0;
    for ((t, h), &j) in sens.tensors.iter().zip(&hulls).zip(&at) {
        types.insert(t.name.clone(), h[j].0);
        predicted += h[j].2 - sens.base_kld;
    }
    Ok(Allocation {
        types,
        bytes: used,
        fixed_bytes,
        point_kld: sens.base_kld,
        predicted_kld: predicted,
    })
}

/// The budget in bytes for `file`'s tensor data: `Bytes` is the whole output file's size, so
/// the header (as large as the source's: the same metadata and tensor table) and each tensor's
/// alignment padding come off it.
pub fn budget_bytes(file: &GgufFile, b: Budget) -> u64 {
    match b {
        Budget::Bytes(n) => {
            n.saturating_sub(file.data_offset() + file.alignment() * file.tensors().len() as u64)
        }
        Budget::Bpw(bpw) => {
            let n: u64 = file.tensors().iter().map(|t| t.n_elements()).sum();
            (bpw * n as f64 / 8.0) as u64
        }
    }
}

/// Bytes of the tensors [`allocate`] does not choose for: those not quantizable (at the type
/// `plan` gives them) and matrices without candidates.
pub fn fixed_bytes(file: &GgufFile, planned: &[GgmlType]) -> u64 {
    file.tensors()
        .iter()
        .zip(planned)
        .filter(|(t, _)| !quantizable(&t.name, t.dims.len()) || candidates(t.ne0()).is_empty())
        .map(|(t, &ty)| {
            if is_quantized(ty) || ty != t.ty {
                ty.row_size(t.n_elements()).unwrap_or(t.size)
            } else {
                t.size
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType::*;

    fn sens(rows: &[&[(GgmlType, u64, f64)]]) -> Sensitivity {
        Sensitivity {
            n_tokens: 64,
            point: "Q4_K_M".into(),
            base_kld: 0.0,
            tensors: rows
                .iter()
                .enumerate()
                .map(|(i, o)| TensorCosts {
                    name: format!("t{i}"),
                    options: o.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn allocation_buys_the_most_loss_per_byte() {
        // t0 is sensitive, t1 is not: the budget goes to t0 first.
        let s = sens(&[
            &[(Q3_K, 100, 1.0), (Q4_K, 130, 0.3), (Q8_0, 200, 0.0)],
            &[(Q3_K, 100, 0.01), (Q4_K, 130, 0.005), (Q8_0, 200, 0.0)],
        ]);
        let a = allocate(&s, 10, 240).unwrap();
        assert_eq!(a.types["t0"], Q4_K);
        assert_eq!(a.types["t1"], Q3_K);
        assert_eq!(a.bytes, 240);
        let a = allocate(&s, 10, 310).unwrap();
        assert_eq!((a.types["t0"], a.types["t1"]), (Q8_0, Q3_K));
        let a = allocate(&s, 10, 1000).unwrap();
        assert_eq!((a.types["t0"], a.types["t1"]), (Q8_0, Q8_0));
        assert_eq!(a.predicted_kld, 0.0);
        assert!(allocate(&s, 10, 150).is_err());
    }

    #[test]
    fn a_big_upgrade_is_bought_with_cheap_downgrades() {
        // t1's step has the better ratio and is taken first; t0's (worth more in all) then no
        // longer fits. Giving t1's step back pays for t0's.
        let s = sens(&[
            &[(Q4_0, 100, 1.0), (Q8_0, 200, 0.5)],
            &[(Q4_0, 50, 1.0), (Q8_0, 90, 0.6)],
        ]);
        let a = allocate(&s, 0, 260).unwrap();
        assert_eq!((a.types["t0"], a.types["t1"]), (Q8_0, Q4_0));
        assert_eq!(a.bytes, 250);
    }

    #[test]
    fn dominated_and_concave_options_are_skipped() {
        // Q5_K is no better than Q4_K (dominated); Q6_K lies above the Q4_K→Q8_0 line.
        let s = sens(&[&[
            (Q3_K, 100, 1.0),
            (Q4_K, 130, 0.5),
            (Q5_K, 160, 0.6),
            (Q6_K, 190, 0.45),
            (Q8_0, 200, 0.0),
        ]]);
        let a = allocate(&s, 0, 195).unwrap();
        assert_eq!(a.types["t0"], Q4_K);
        let a = allocate(&s, 0, 200).unwrap();
        assert_eq!(a.types["t0"], Q8_0);
    }

    #[test]
    fn sensitivity_file_round_trips() {
        let s = sens(&[
            &[(Q3_K, 100, 1.5e-3), (Q8_0, 200, 0.0)],
            &[(Q4_0, 90, 2.25e-4), (Q8_0, 170, 0.0)],
        ]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.tsv");
        s.save(&p).unwrap();
        assert_eq!(Sensitivity::load(&p).unwrap(), s);
        std::fs::write(&p, "nonsense\n").unwrap();
        assert!(Sensitivity::load(&p).is_err());
        std::fs::write(&p, "# dino sensitivity n_tokens=64\nx\tQ9_K\t1\t0\n").unwrap();
        assert!(Sensitivity::load(&p).is_err());
    }
}
