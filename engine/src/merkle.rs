//! Per-partition Merkle tree with XOR-combinable leaves (the Tictac scheme of
//! Riak's anti-entropy).
//!
//! Every live object (value or tombstone) contributes its body checksum to
//! one leaf chosen by its key. Leaves, branches and the root are XORs of the
//! contributions below them, so one write updates the tree in O(1), and two
//! trees holding the same objects are equal whatever order the writes came
//! in. The body checksum covers key, value and tombstone flag but not the
//! sequence number, which differs between replicas.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Leaves per partition tree.
pub const MERKLE_LEAVES: usize = 1024;
/// Branches (second level) per tree.
pub const MERKLE_BRANCHES: usize = 32;
/// Leaves under one branch.
pub const MERKLE_LEAVES_PER_BRANCH: usize = MERKLE_LEAVES / MERKLE_BRANCHES;

/// Seed for the key → leaf hash; distinct from the ring's key → partition
/// hash so that leaves split a partition evenly.
const LEAF_SEED: u64 = 0x6d65_726b_6c65_7631; // "merklev1"

/// A three-level XOR tree: root, [`MERKLE_BRANCHES`] branches,
/// [`MERKLE_LEAVES`] leaves.
#[derive(Clone, PartialEq, Eq)]
pub struct MerkleTree {
    root: u64,
    branches: [u64; MERKLE_BRANCHES],
    leaves: Box<[u64; MERKLE_LEAVES]>,
}

impl std::fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MerkleTree(root={:#018x})", self.root)
    }
}

impl Default for MerkleTree {
    fn default() -> Self {
        MerkleTree {
            root: 0,
            branches: [0; MERKLE_BRANCHES],
            leaves: Box::new([0; MERKLE_LEAVES]),
        }
    }
}

/// The leaf a key belongs to.
pub fn leaf_of(key: &[u8]) -> usize {
    (xxh3_64_with_seed(key, LEAF_SEED) % MERKLE_LEAVES as u64) as usize
}

impl MerkleTree {
    /// Adds or removes (XOR is its own inverse) one object's contribution.
    pub(crate) fn toggle(&mut self, key: &[u8], contribution: u64) {
        let leaf = leaf_of(key);
        self.leaves[leaf] ^= contribution;
        self.branches[leaf / MERKLE_LEAVES_PER_BRANCH] ^= contribution;
        self.root ^= contribution;
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    pub fn branches(&self) -> &[u64; MERKLE_BRANCHES] {
        &self.branches
    }

    /// The leaves under `branch`.
    pub fn leaves_of_branch(&self, branch: usize) -> &[u64] {
        let start = branch * MERKLE_LEAVES_PER_BRANCH;
        &self.leaves[start..start + MERKLE_LEAVES_PER_BRANCH]
    }

    /// Leaves whose hashes differ from `other`'s: what anti-entropy must
    /// exchange. Compares the root, then branches, then leaves.
    pub fn diff(&self, other: &MerkleTree) -> Vec<usize> {
        if self.root == other.root {
            return Vec::new();
        }
        let mut leaves = Vec::new();
        for branch in 0..MERKLE_BRANCHES {
            if self.branches[branch] == other.branches[branch] {
                continue;
            }
            let start = branch * MERKLE_LEAVES_PER_BRANCH;
            for leaf in start..start + MERKLE_LEAVES_PER_BRANCH {
                if self.leaves[leaf] != other.leaves[leaf] {
                    leaves.push(leaf);
                }
            }
        }
        leaves
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toggle_twice_restores_empty_tree() {
        let mut tree = MerkleTree::default();
        tree.toggle(b"k", 0xdead_beef);
        assert_ne!(tree, MerkleTree::default());
        tree.toggle(b"k", 0xdead_beef);
        assert_eq!(tree, MerkleTree::default());
    }

    #[test]
    fn diff_names_exactly_the_changed_leaf() {
        let mut a = MerkleTree::default();
        let mut b = MerkleTree::default();
        for i in 0..100u64 {
            let key = i.to_le_bytes();
            a.toggle(&key, i * 7 + 1);
            b.toggle(&key, i * 7 + 1);
        }
        assert!(a.diff(&b).is_empty());
        b.toggle(b"extra", 99);
        assert_eq!(a.diff(&b), vec![leaf_of(b"extra")]);
    }
}
