//! Every tensor of a GGUF file as `name type fnv1a64-of-its-bytes`, one per line, in file order:
//! how `tests/data/quantize_*.txt` were made from llama.cpp's `llama-quantize` output (see
//! `tests/quantize.rs`), and a quick way to diff two quantizations.
//!
//! `cargo run --release -p dino-engine --example tensor_hashes -- FILE.gguf`
fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: tensor_hashes FILE.gguf");
        std::process::exit(2);
    };
    match dino_testutil::tensor_hashes(std::path::Path::new(&path)) {
        Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    }
}
