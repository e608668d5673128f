//! Compact per-token storage: all token texts in one buffer, a lookup by text that keeps only
//! ids, and all rendered pieces in another buffer. A vocabulary of `n` tokens takes a handful
//! of allocations instead of several per token.

use std::hash::{BuildHasher, RandomState};
use std::ops::Range;

use hashbrown::HashTable;

/// Item `i` of a buffer split at `ends` (each item ends where the next starts).
fn span(ends: &[u32], i: usize) -> Option<Range<usize>> {
    let end = *ends.get(i)? as usize;
    let start = match i {
        0 => 0,
        _ => ends[i - 1] as usize,
    };
    Some(start..end)
}

/// The token texts of a vocabulary, indexed by id, stored end to end in one `String`.
pub(crate) struct TokenTexts {
    /// Every text, in id order.
    text: String,
    /// [n] end of each text in `text`.
    ends: Vec<u32>,
}

impl TokenTexts {
    /// Room for `n` texts of `bytes` bytes in all.
    pub fn with_capacity(n: usize, bytes: usize) -> TokenTexts {
        TokenTexts {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(n),
        }
    }

    /// Appends `text` as the next id; `None` (and nothing appended) past 4 GiB in all or
    /// `u32::MAX` texts.
    pub fn push(&mut self, text: &str) -> Option<u32> {
        let id = u32::try_from(self.ends.len()).ok()?;
        let end = u32::try_from(self.text.len() + text.len()).ok()?;
        self.text.push_str(text);
        self.ends.push(end);
        Some(id)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The text of `id`.
    pub fn get(&self, id: u32) -> Option<&str> {
        span(&self.ends, id as usize).map(|r| &self.text[r])
    }

    /// The text of `id`, empty for an id out of range.
    pub fn text(&self, id: u32) -> &str {
        self.get(id).unwrap_or_default()
    }

    /// The length of all texts together.
    pub fn total_len(&self) -> usize {
        self.text.len()
    }

    /// The texts in id order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len() as u32).map(|id| self.text(id))
    }
}

/// A lookup from token text to id that holds only the ids: it hashes and compares the texts
/// kept in a [`TokenTexts`], which every call must pass (always the same one).
pub(crate) struct TokenIndex {
    table: HashTable<u32>,
    hasher: RandomState,
}

impl TokenIndex {
    /// Room for `n` ids.
    pub fn with_capacity(n: usize) -> TokenIndex {
        TokenIndex {
            table: HashTable::with_capacity(n),
            hasher: RandomState::new(),
        }
    }

    /// Adds `id`, already in `texts`; `Err` with the earlier id when its text is taken.
    pub fn insert(&mut self, texts: &TokenTexts, id: u32) -> Result<(), u32> {
        let text = texts.text(id);
        let hash = self.hasher.hash_one(text);
        if let Some(&prev) = self.table.find(hash, |&i| texts.text(i) == text) {
            return Err(prev);
        }
        self.table
            .insert_unique(hash, id, |&i| self.hasher.hash_one(texts.text(i)));
        Ok(())
    }

    /// The id whose text in `texts` is exactly `text`.
    pub fn id(&self, texts: &TokenTexts, text: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(text);
        self.table.find(hash, |&i| texts.text(i) == text).copied()
    }
}

/// Byte strings indexed by id, stored end to end in one buffer (the rendered token pieces).
#[derive(Default)]
pub(crate) struct Pieces {
    bytes: Vec<u8>,
    /// [n] end of each piece in `bytes`.
    ends: Vec<u32>,
}

impl Pieces {
    /// Room for `n` pieces of `bytes` bytes in all.
    pub fn with_capacity(n: usize, bytes: usize) -> Pieces {
        Pieces {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(n),
        }
    }

    /// Appends the piece of the next id; `false` (and nothing appended) past 4 GiB in all.
    pub fn push(&mut self, piece: &[u8]) -> bool {
        let Ok(end) = u32::try_from(self.bytes.len() + piece.len()) else {
            return false;
        };
        self.bytes.extend_from_slice(piece);
        self.ends.push(end);
        true
    }

    /// Gives back capacity reserved but not used.
    pub fn shrink_to_fit(&mut self) {
        self.bytes.shrink_to_fit();
        self.ends.shrink_to_fit();
    }

    /// The piece of `id`.
    pub fn get(&self, id: u32) -> Option<&[u8]> {
        span(&self.ends, id as usize).map(|r| &self.bytes[r])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_texts_and_index() {
        let mut t = TokenTexts::with_capacity(4, 8);
        let mut index = TokenIndex::with_capacity(4);
        let mut add = |t: &mut TokenTexts, s: &str| {
            let id = t.push(s).unwrap();
            index.insert(t, id).map(|()| id)
        };
        assert_eq!(add(&mut t, "ab"), Ok(0));
        assert_eq!(add(&mut t, "a"), Ok(1));
        assert_eq!(add(&mut t, "b"), Ok(2));
        assert_eq!(add(&mut t, "a"), Err(1));
        for i in 4..104 {
            // Growing past the reserved size rehashes by the stored texts.
            assert_eq!(add(&mut t, &format!("x{i}")), Ok(i));
        }
        assert_eq!(t.len(), 104);
        assert_eq!(t.get(0), Some("ab"));
        assert_eq!(t.get(3), Some("a"));
        assert_eq!(t.get(103), Some("x103"));
        assert_eq!(t.get(104), None);
        assert_eq!(t.text(104), "");
        assert_eq!(t.total_len(), 5 + 6 * 2 + 90 * 3 + 4 * 4);
        assert_eq!(t.iter().len(), 104);
        assert_eq!(t.iter().nth(1), Some("a"));
        assert_eq!(index.id(&t, "a"), Some(1));
        assert_eq!(index.id(&t, "x50"), Some(50));
        assert_eq!(index.id(&t, "abc"), None);
        assert_eq!(index.id(&t, ""), None);
    }

    #[test]
    fn pieces_store_empty_and_nonempty() {
        let mut p = Pieces::with_capacity(3, 0);
        assert!(p.push(b" a"));
        assert!(p.push(b""));
        assert!(p.push(&[0xff]));
        p.shrink_to_fit();
        assert_eq!(p.get(0), Some(&b" a"[..]));
        assert_eq!(p.get(1), Some(&b""[..]));
        assert_eq!(p.get(2), Some(&[0xffu8][..]));
        assert_eq!(p.get(3), None);
    }
}
