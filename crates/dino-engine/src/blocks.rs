//! The block allocator of the paged KV cache, and its prefix index.
//!
//! Every block has a count of holders: the block tables of sequences that read it, and the
//! prefix index. A block no one holds is free. The prefix index maps a full block's content,
//! (a hash of every token before it, its own [`KV_BLOCK`] tokens), to the block that holds its
//! keys and values, so a new sequence whose prompt starts the same way points its table at
//! those blocks instead of computing them again: a shared system prompt, or a chat's history.
//! Indexed blocks are never written again (a sequence that must write into one copies it
//! first). When no block is free, the least recently released block that only the index
//! holds is taken back from the index.
//!
//! Plain data, no model: the batch loop ([`crate::batch`]) drives it and mirrors each
//! sequence's blocks into the `KvCache` tables.

use dino_models::KV_BLOCK;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

/// What identifies a full block's content: the hash of all tokens before it, and its tokens.
pub type BlockKey = (u64, [u32; KV_BLOCK]);

/// The prefix hash after a block: `hash(prev, tokens)`.
pub fn chain_hash(prev: u64, tokens: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    prev.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// The index key of the block holding `tokens[..KV_BLOCK]` after a prefix hashing to `prev`.
pub fn block_key(prev: u64, tokens: &[u32]) -> BlockKey {
    let mut t = [0u32; KV_BLOCK];
    t.copy_from_slice(&tokens[..KV_BLOCK]);
    (prev, t)
}

#[derive(Debug)]
pub struct BlockPool {
    /// Holders per block.
    refs: Vec<u32>,
    /// Free blocks, most recently freed last (their pages are the likeliest to be resident).
    free: Vec<u32>,
    index: HashMap<BlockKey, u32>,
    /// Per indexed block: its key and when it was last released to the index alone.
    indexed: HashMap<u32, (BlockKey, u64)>,
    /// Indexed blocks only the index holds, oldest first: the ones that may be taken back.
    idle: BTreeSet<(u64, u32)>,
    clock: u64,
}

impl BlockPool {
    pub fn new(n_blocks: usize) -> BlockPool {
        BlockPool {
            refs: vec![0; n_blocks],
            free: (0..n_blocks as u32).rev().collect(),
            index: HashMap::new(),
            indexed: HashMap::new(),
            idle: BTreeSet::new(),
            clock: 0,
        }
    }

    pub fn n_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks an allocation could get: free ones and idle indexed ones.
    pub fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Blocks held by sequences.
    pub fn used(&self) -> usize {
        self.n_blocks() - self.available()
    }

    /// Indexed blocks no sequence holds (kept for reuse, taken back when needed).
    pub fn cached(&self) -> usize {
        self.idle.len()
    }

    /// Holders of block `b`.
    pub fn holders(&self, b: u32) -> u32 {
        self.refs[b as usize]
    }

    /// A block for one holder: a free one, or else the idle indexed block released longest
    /// ago (dropped from the index). `None` when every block is held by a sequence.
    pub fn alloc(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.idle.pop_first()?;
                let (key, _) = self.indexed.remove(&b).expect("idle blocks are indexed");
                self.index.remove(&key);
                self.refs[b as usize] = 0;
                b
            }
        };
        debug_assert_eq!(self.refs[b as usize], 0);
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// One more holder of `b`.
    pub fn retain(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        debug_assert!(*r > 0, "retain of a free block");
        if *r == 1 {
            if let Some(&(_, t)) = self.indexed.get(&b) {
                self.idle.remove(&(t, b));
            }
        }
        *r += 1;
    }

    /// One holder fewer of `b`: free at zero, idle when only the index is left.
    pub fn release(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        debug_assert!(*r > 0, "release of a free block");
        *r -= 1;
        match *r {
            0 => self.free.push(b),
            1 => {
                self.clock += 1;
                let clock = self.clock;
                if let Some((_, t)) = self.indexed.get_mut(&b) {
                    *t = clock;
                    self.idle.insert((clock, b));
                }
            }
            _ => {}
        }
    }

    /// The block indexed under `key`, if any (not retained).
    pub fn lookup(&self, key: &BlockKey) -> Option<u32> {
        self.index.get(key).copied()
    }

    /// Index `b` (a full block a sequence holds) under `key`; the index becomes a holder. A
    /// key already indexed (the same prefix computed twice at once) keeps its block.
    pub fn insert(&mut self, key: BlockKey, b: u32) {
        if self.index.contains_key(&key) || self.indexed.contains_key(&b) {
            return;
        }
        debug_assert!(self.refs[b as usize] > 0, "indexing a free block");
        self.index.insert(key, b);
        self.indexed.insert(b, (key, 0));
        self.refs[b as usize] += 1;
    }

    /// Whether `b` is in the index (and so must not be written).
    pub fn is_indexed(&self, b: u32) -> bool {
        self.indexed.contains_key(&b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> BlockKey {
        block_key(i as u64, &[i; KV_BLOCK])
    }

    #[test]
    fn blocks_are_counted_freed_and_reused_most_recent_first() {
        let mut p = BlockPool::new(4);
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        assert_eq!((a, b), (0, 1));
        assert_eq!((p.used(), p.available()), (2, 2));
        p.retain(a);
        p.release(a);
        assert_eq!(p.holders(a), 1);
        p.release(a);
        assert_eq!(p.holders(a), 0);
        // The block freed last comes back first.
        assert_eq!(p.alloc(), Some(a));
        assert_eq!(p.alloc(), Some(2));
        assert_eq!(p.alloc(), Some(3));
        assert_eq!(p.alloc(), None);
    }

    /// Indexed blocks outlive their sequences, are found by content, and are taken back
    /// oldest first only when nothing is free and no sequence holds them.
    #[test]
    fn the_index_keeps_idle_blocks_until_they_are_needed() {
        let mut p = BlockPool::new(3);
        let (a, b, c) = (p.alloc().unwrap(), p.alloc().unwrap(), p.alloc().unwrap());
        p.insert(key(1), a);
        p.insert(key(2), b);
        // The same content indexed again keeps the first block.
        p.insert(key(1), c);
        assert!(!p.is_indexed(c));
        assert_eq!(p.lookup(&key(1)), Some(a));
        // The sequence ends: b first, then a; c is freed outright.
        p.release(b);
        p.release(a);
        p.release(c);
        assert_eq!((p.used(), p.cached(), p.available()), (0, 2, 3));
        // A new sequence reuses a: it is no longer idle.
        p.retain(a);
        assert_eq!((p.used(), p.cached()), (1, 1));
        // Allocation takes the free block, then the idle one (b), never the held one.
        assert_eq!(p.alloc(), Some(c));
        assert_eq!(p.alloc(), Some(b));
        assert_eq!(p.lookup(&key(2)), None);
        assert!(!p.is_indexed(b));
        assert_eq!(p.alloc(), None);
        // Releasing a makes it idle again, and it is found by content.
        p.release(a);
        assert_eq!(p.lookup(&key(1)), Some(a));
        assert_eq!(p.alloc(), Some(a));
        assert_eq!(p.lookup(&key(1)), None);
    }

    #[test]
    fn chain_hashes_depend_on_every_earlier_token() {
        let t: Vec<u32> = (0..64).collect();
        let h1 = chain_hash(0, &t[..16]);
        let h2 = chain_hash(h1, &t[16..32]);
        let mut u = t.clone();
        u[3] = 99;
        let g1 = chain_hash(0, &u[..16]);
        assert_ne!(h1, g1);
        assert_ne!(h2, chain_hash(g1, &u[16..32]));
        assert_eq!(h2, chain_hash(chain_hash(0, &t[..16]), &t[16..32]));
    }
}
