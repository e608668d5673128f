//! Parity tool: greedy token ids from prompt ids, without a tokenizer; prints the first
//! step's top-5 logits on stderr (compare with the reference JSON's `first_step_top20`).
//! `cargo run --example greedy_ids -- MODEL.gguf N ID ID ...`
use dino_formats::gguf::GgufFile;
use dino_kernels::pool::ThreadPool;
use dino_models::{load, Batch, KvCache, LoadOptions, Logits};
use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let f = Arc::new(GgufFile::open(&args[1]).unwrap());
    let n: usize = args[2].parse().unwrap();
    let ids: Vec<u32> = args[3..].iter().map(|s| s.parse().unwrap()).collect();
    let m = load(f, &LoadOptions::new(Arc::new(ThreadPool::new(2)))).unwrap();
    let mut kv = KvCache::new(m.kv_shape(), 1024, 1).unwrap();
    let mut out = Logits::default();
    m.forward(&Batch::from_tokens(&ids, 0, 0, false), &mut kv, &mut out)
        .unwrap();
    {
        let l = out.last();
        let mut idx: Vec<usize> = (0..l.len()).collect();
        idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        let top: Vec<(usize, f32)> = idx[..5].iter().map(|&i| (i, l[i])).collect();
        eprintln!("top5 {top:?}");
    }
    let mut gen = Vec::new();
    for pos in ids.len()..ids.len() + n {
        let l = out.last();
        let t = (0..l.len())
            .max_by(|&a, &b| l[a].total_cmp(&l[b]).then(b.cmp(&a)))
            .unwrap() as u32;
        gen.push(t);
        m.forward(&Batch::from_tokens(&[t], pos, 0, false), &mut kv, &mut out)
            .unwrap();
    }
    println!("{gen:?}");
}
