//! Detokenizing, whole and streaming, as llama.cpp's `llama_detokenize`.

use crate::vocab::Vocab;

/// Options of [`crate::Tokenizer::decode_with`], named as in llama.cpp's `llama_detokenize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Drop a leading BOS (when the vocab adds BOS) and a trailing EOS (when it adds EOS).
    pub remove_special: bool,
    /// Render control tokens as their text instead of nothing.
    pub unparse_special: bool,
}

/// The piece of one token with llama.cpp's `lstrip`: drop up to `lstrip` leading spaces.
fn piece_stripped(vocab: &Vocab, id: u32, special: bool, lstrip: usize) -> &[u8] {
    let mut p = vocab.piece(id, special).unwrap_or(&[]);
    for _ in 0..lstrip {
        match p.split_first() {
            Some((b' ', rest)) => p = rest,
            _ => break,
        }
    }
    p
}

pub(crate) fn decode(vocab: &Vocab, ids: &[u32], opts: DecodeOptions) -> String {
    let mut ids = ids;
    let mut remove_space = vocab.add_space_prefix;
    if opts.remove_special && vocab.add_bos {
        if let Some((&first, rest)) = ids.split_first() {
            if Some(first) == vocab.bos {
                // llama.cpp keeps the space after a removed BOS.
                remove_space = false;
                ids = rest;
            }
        }
    }
    if opts.remove_special && vocab.add_eos {
        if let Some((&last, rest)) = ids.split_last() {
            if Some(last) == vocab.eos {
                ids = rest;
            }
        }
    }
    let mut out = Vec::with_capacity(ids.len() * 4);
    for &id in ids {
        let lstrip = usize::from(remove_space);
        out.extend_from_slice(piece_stripped(vocab, id, opts.unparse_special, lstrip));
        remove_space = false;
    }
    if vocab.clean_spaces {
        out = clean_spaces(&out);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// llama.cpp's `clean_spaces` passes: `" ?" " !" " ." " ,"` lose the space; `" ' "` becomes
/// `"'"`; `" 's" " 'm" " 're" " 've"` lose the space. Each pass reads only its own input.
pub(crate) fn clean_spaces(text: &[u8]) -> Vec<u8> {
    if text.is_empty() {
        return Vec::new();
    }
    // Pass 1: space before ? ! . ,
    let mut p1 = Vec::with_capacity(text.len());
    p1.push(text[0]);
    for i in 1..text.len() {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            p1.pop();
        }
        p1.push(x);
    }
    // Pass 2: " ' " -> "'". llama.cpp overwrites the skipped space with NUL in place, so the
    // character after it does not see a space before it.
    let mut p2 = Vec::with_capacity(p1.len());
    p2.push(p1[0]);
    let mut nul_at = usize::MAX;
    let mut i = 1;
    while i < p1.len() {
        let x = p1[i];
        let prev = if nul_at == i - 1 { 0 } else { p1[i - 1] };
        if x == b'\'' && i + 1 < p1.len() && prev == b' ' && p1[i + 1] == b' ' {
            p2.pop();
            p2.push(x);
            nul_at = i + 1;
            i += 2;
            continue;
        }
        p2.push(x);
        i += 1;
    }
    // Pass 3: contractions
    let mut p3 = Vec::with_capacity(p2.len());
    p3.push(p2[0]);
    for i in 1..p2.len() {
        let x = p2[i];
        if p2[i - 1] == b' ' && x == b'\'' && i + 1 < p2.len() {
            let x1 = p2[i + 1];
            let remove = match x1 {
                b't' | b'd' => false,
                b's' | b'm' => true,
                _ => i + 2 < p2.len() && matches!((x1, p2[i + 2]), (b'r', b'e') | (b'v', b'e')),
            };
            if remove {
                p3.pop();
            }
        }
        p3.push(x);
    }
    p3
}

/// Options of [`crate::Tokenizer::stream_decoder_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Render control tokens as their text instead of nothing.
    pub unparse_special: bool,
    /// The ids pushed are a whole sequence from its start, and the text should be exactly
    /// [`crate::Tokenizer::decode_with`] of them (`remove_special = false`): the first token
    /// loses one leading space when the vocab adds a space prefix, and llama.cpp's
    /// `clean_spaces` pass runs. Off (the default), every token renders as llama.cpp's
    /// `token_to_piece`, which is what llama.cpp prints while generating after a prompt.
    pub sequence_start: bool,
}

/// Incremental detokenizer: [`StreamDecoder::push`] one id at a time and get back the text that
/// is now complete; [`StreamDecoder::flush`] returns the rest.
///
/// Text is held back while it ends inside a UTF-8 character (byte-fallback and byte-level
/// tokens split characters across tokens) and, with [`StreamOptions::sequence_start`] on a
/// vocabulary with llama.cpp's `clean_spaces`, while it ends in a space or apostrophe whose fate
/// depends on what follows. Bytes that can never become valid UTF-8 are emitted as U+FFFD.
pub struct StreamDecoder<'a> {
    vocab: &'a Vocab,
    opts: StreamOptions,
    first: bool,
    /// Decoded bytes not yet returned.
    pending: Vec<u8>,
}

impl std::fmt::Debug for StreamDecoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("opts", &self.opts)
            .field("first", &self.first)
            .field("pending", &self.pending)
            .finish()
    }
}

impl<'a> StreamDecoder<'a> {
    pub(crate) fn new(vocab: &'a Vocab, opts: StreamOptions) -> Self {
        StreamDecoder {
            vocab,
            opts,
            first: true,
            pending: Vec::new(),
        }
    }

    fn clean(&self) -> bool {
        self.opts.sequence_start && self.vocab.clean_spaces
    }

    /// Adds one token; returns the newly completed text (often empty).
    pub fn push(&mut self, id: u32) -> String {
        let strip = self.first && self.opts.sequence_start && self.vocab.add_space_prefix;
        self.first = false;
        let piece = piece_stripped(
            self.vocab,
            id,
            self.opts.unparse_special,
            usize::from(strip),
        );
        self.pending.extend_from_slice(piece);
        let cut = self.safe_cut();
        self.take(cut)
    }

    /// Returns everything still held back (an unfinished character becomes U+FFFD) and resets
    /// the decoder for a new sequence.
    pub fn flush(&mut self) -> String {
        let s = self.take(self.pending.len());
        self.first = true;
        s
    }

    /// Bytes held back so far.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn take(&mut self, cut: usize) -> String {
        if cut == 0 {
            return String::new();
        }
        let seg: Vec<u8> = self.pending.drain(..cut).collect();
        let seg = if self.clean() {
            clean_spaces(&seg)
        } else {
            seg
        };
        match String::from_utf8(seg) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// The longest prefix of `pending` that can be emitted now.
    fn safe_cut(&self) -> usize {
        let buf = &self.pending;
        // End of the last complete (or definitely invalid) UTF-8 sequence.
        let mut pos = 0;
        let mut cut = loop {
            match std::str::from_utf8(&buf[pos..]) {
                Ok(_) => break buf.len(),
                Err(e) => match e.error_len() {
                    Some(n) => pos += e.valid_up_to() + n,
                    None => break pos + e.valid_up_to(),
                },
            }
        };
        if self.clean() {
            // The clean-up rules look at most at: a space or apostrophe before the cut, or
            // `'r` / `'v` (for " 're" / " 've"). Cut before those; the next segment then
            // starts after a character no rule looks back at.
            while cut > 0 {
                let last = buf[cut - 1];
                let unsafe_end = last == b' '
                    || last == b'\''
                    || (cut >= 2 && buf[cut - 2] == b'\'' && matches!(last, b'r' | b'v'));
                if !unsafe_end {
                    break;
                }
                cut -= 1;
            }
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::clean_spaces;

    fn c(s: &str) -> String {
        String::from_utf8(clean_spaces(s.as_bytes())).unwrap()
    }

    #[test]
    fn clean_spaces_matches_llama_cpp_rules() {
        assert_eq!(c("Hello , world !"), "Hello, world!");
        assert_eq!(c("a ' b"), "a'b");
        assert_eq!(c("a ' ' b"), "a'' b");
        assert_eq!(c("it 's I 'm we 're you 've"), "it's I'm we're you've");
        assert_eq!(c("don 't I 'd we 'll"), "don 't I 'd we 'll");
        assert_eq!(c(" ?"), "?");
        assert_eq!(c("end '"), "end '");
        assert_eq!(c(""), "");
    }
}
