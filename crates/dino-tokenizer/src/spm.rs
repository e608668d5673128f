//! SentencePiece-BPE by scores, as llama.cpp's `llm_tokenizer_spm_session` does it.
//!
//! The text (spaces already escaped to `▁`) is split into UTF-8 characters; every adjacent pair
//! whose concatenation is a token is queued by that token's score; the best pair (highest
//! score, leftmost on ties) is merged and its new neighbours queued, until nothing merges. Each
//! final symbol is its token, or, when it is not in the vocabulary, one `<0xXX>` token per byte.
//!
//! (llama.cpp also keeps a "reverse merge" map to re-split such symbols, but a symbol only grows
//! by merging into a vocabulary token, so a symbol outside the vocabulary is always a single
//! character and goes straight to byte fallback.)

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use dino_core::Result;

use crate::arena::TokenIndex;
use crate::vocab::Vocab;

#[derive(Clone, Copy)]
struct Symbol {
    prev: i32,
    next: i32,
    /// Byte offset in the text.
    start: usize,
    /// Byte length; 0 once merged into its left neighbour.
    n: usize,
}

struct Bigram {
    left: i32,
    right: i32,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

struct Session<'a> {
    vocab: &'a Vocab,
    index: &'a TokenIndex,
    text: &'a str,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
}

impl Session<'_> {
    fn try_add_bigram(&mut self, left: i32, right: i32) {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (self.symbols[left as usize], self.symbols[right as usize]);
        let piece = &self.text[l.start..l.start + l.n + r.n];
        if let Some(id) = self.index.id(&self.vocab.texts, piece) {
            self.queue.push(Bigram {
                left,
                right,
                score: self.vocab.score(id),
                size: piece.len(),
            });
        }
    }
}

/// Appends the ids of `text` (already `▁`-escaped) to `out`; `index` looks up `vocab`'s texts.
pub(crate) fn tokenize(
    vocab: &Vocab,
    index: &TokenIndex,
    text: &str,
    out: &mut Vec<u32>,
) -> Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let mut s = Session {
        vocab,
        index,
        text,
        symbols: Vec::with_capacity(text.len()),
        queue: BinaryHeap::with_capacity(text.len()),
    };
    let n_chars = text.chars().count();
    for (i, (start, c)) in text.char_indices().enumerate() {
        let i = i as i32;
        s.symbols.push(Symbol {
            prev: i - 1,
            next: if i as usize + 1 == n_chars { -1 } else { i + 1 },
            start,
            n: c.len_utf8(),
        });
    }
    for i in 1..s.symbols.len() as i32 {
        s.try_add_bigram(i - 1, i);
    }
    while let Some(b) = s.queue.pop() {
        let (l, r) = (s.symbols[b.left as usize], s.symbols[b.right as usize]);
        // Stale: one side already merged elsewhere.
        if l.n == 0 || r.n == 0 || l.n + r.n != b.size {
            continue;
        }
        s.symbols[b.left as usize].n += r.n;
        s.symbols[b.right as usize].n = 0;
        s.symbols[b.left as usize].next = r.next;
        if r.next >= 0 {
            s.symbols[r.next as usize].prev = b.left;
        }
        s.try_add_bigram(l.prev, b.left);
        s.try_add_bigram(b.left, r.next);
    }
    let mut i = 0i32;
    while i != -1 {
        let sym = s.symbols[i as usize];
        let piece = &text[sym.start..sym.start + sym.n];
        match index.id(&vocab.texts, piece) {
            Some(id) => out.push(id),
            None => {
                // Byte fallback; a byte with no token at all (no <0xXX>, no UNK) is dropped
                // (llama.cpp would abort).
                out.extend(piece.bytes().filter_map(|b| vocab.byte_to_token(index, b)));
            }
        }
        i = sym.next;
    }
    Ok(())
}
