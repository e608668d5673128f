//! Every tensor of a GGUF file as `name type fnv1a64-of-its-bytes`, one per line, in file order:
//! how `tests/data/quantize_*.txt` were made from llama.cpp's `llama-quantize` output (see
//! `tests/quantize.rs`), and a quick way to diff two quantizations.
//!
//! `cargo run --release -p dino-engine --example tensor_hashes -- FILE.gguf`
use dino_formats::gguf::GgufFile;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: tensor_hashes FILE.gguf");
        std::process::exit(2);
    };
    let f = GgufFile::open(&path).unwrap_or_else(|e| {
        eprintln!("{path}: {e}");
        std::process::exit(1);
    });
    for t in f.tensors() {
        println!(
            "{} {} {:016x}",
            t.name,
            t.ty.name(),
            fnv1a(f.tensor_data(t))
        );
    }
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
