//! The RFC 6962 Merkle tree: leaf `SHA-256(0x00‖d)`, node
//! `SHA-256(0x01‖l‖r)`, the empty tree `SHA-256("")`.
//!
//! The store keeps every leaf hash. A root or a proof is computed from
//! them; [`Frontier`] keeps the right edge of the tree so the live root is
//! updated in O(log n) per append. Which nodes a proof needs comes from
//! `ct-merkle` (`indices_for_*_proof`, array-based node indices of RFC 9420,
//! whose layout is RFC 6962's left-balanced tree).

use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use sha2::{Digest, Sha256};

/// A SHA-256 output.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the tree whose leaf hashes are `leaves` (RFC 6962 MTH).
pub fn root_of(leaves: &[Hash]) -> Hash {
    let mut f = Frontier::default();
    for l in leaves {
        f.push(*l);
    }
    f.root()
}

/// The right edge of the tree: the roots of its perfect subtrees, largest
/// first. Enough to append and to compute the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(height, hash)`, heights strictly decreasing.
    peaks: Vec<(u32, Hash)>,
}

impl Frontier {
    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(height, left)) = self.peaks.last() {
            if height != node.0 {
                break;
            }
            self.peaks.pop();
            node = (height + 1, node_hash(&left, &node.1));
        }
        self.peaks.push(node);
        self.size += 1;
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The tree's root hash.
    pub fn root(&self) -> Hash {
        let mut iter = self.peaks.iter().rev();
        let Some(&(_, mut acc)) = iter.next() else {
            return Sha256::digest([]).into();
        };
        for (_, left) in iter {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// The hash of array-based node `index` in the tree of the first `size`
/// leaves: the MTH of the leaves it spans, cut at `size`.
fn node_value(leaves: &[Hash], index: u64, size: u64) -> Hash {
    let level = index.trailing_ones();
    let start = (index >> (level + 1)) << level;
    let end = (start + (1u64 << level)).min(size);
    root_of(&leaves[start as usize..end as usize])
}

/// Why a proof cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The index or sizes are outside the tree.
    #[error("{0}")]
    OutOfRange(String),
}

/// The inclusion proof (audit path) of leaf `index` in the tree of the
/// first `size` leaves, as RFC 6962 §2.1.1 defines it.
pub fn inclusion_proof(leaves: &[Hash], index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
    if size == 0 || index >= size || size > leaves.len() as u64 {
        return Err(ProofError::OutOfRange(format!(
            "no leaf {index} in a tree of size {size} (the log has {})",
            leaves.len()
        )));
    }
    Ok(ct_merkle::indices_for_inclusion_proof(size, index)
        .into_iter()
        .map(|i| node_value(leaves, i, size))
        .collect())
}

/// The consistency proof between the trees of the first `old` and `new`
/// leaves, as RFC 6962 §2.1.2 defines it.
pub fn consistency_proof(leaves: &[Hash], old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
    if old == 0 || old > new || new > leaves.len() as u64 {
        return Err(ProofError::OutOfRange(format!(
            "no consistency proof from size {old} to {new} (the log has {})",
            leaves.len()
        )));
    }
    Ok(ct_merkle::indices_for_consistency_proof(old, new - old)
        .into_iter()
        .map(|i| node_value(leaves, i, new))
        .collect())
}

/// Checks that `leaf_data` is leaf `index` of the tree with `root` and `size`.
pub fn verify_inclusion(
    root: &Hash,
    size: u64,
    leaf_data: &[u8],
    index: u64,
    proof: &[Hash],
) -> bool {
    let root = RootHash::<Sha256>::new((*root).into(), size);
    let digests: Vec<_> = proof.iter().map(|h| (*h).into()).collect();
    let proof = InclusionProof::<Sha256>::from_digests(digests.iter());
    root.verify_inclusion(&leaf_data, index, &proof).is_ok()
}

/// Checks that the tree (`old_root`, `old`) is a prefix of (`new_root`, `new`).
pub fn verify_consistency(
    old_root: &Hash,
    old: u64,
    new_root: &Hash,
    new: u64,
    proof: &[Hash],
) -> bool {
    if old == new {
        return old_root == new_root && proof.is_empty();
    }
    let old_root = RootHash::<Sha256>::new((*old_root).into(), old);
    let new_root = RootHash::<Sha256>::new((*new_root).into(), new);
    let digests: Vec<_> = proof.iter().map(|h| (*h).into()).collect();
    let proof = ConsistencyProof::<Sha256>::from_digests(digests.iter());
    new_root.verify_consistency(&old_root, &proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontier_matches_ct_merkle_and_empty_root() {
        let mut tree = ct_merkle::mem_backed_tree::MemoryBackedTree::<Sha256, Vec<u8>>::new();
        let mut leaves = Vec::new();
        assert_eq!(
            hex(&root_of(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for i in 0..40u32 {
            let data = format!("record {i}").into_bytes();
            leaves.push(leaf_hash(&data));
            tree.push(data);
            let root: Hash = (*tree.root().as_bytes()).into();
            assert_eq!(root_of(&leaves), root, "size {}", i + 1);
            for idx in 0..=i as u64 {
                let ours = inclusion_proof(&leaves, idx, leaves.len() as u64).unwrap();
                let theirs = tree.prove_inclusion(idx as usize);
                let ours_bytes: Vec<u8> = ours.iter().flatten().copied().collect();
                assert_eq!(
                    ours_bytes,
                    theirs.as_bytes(),
                    "inclusion {idx} of {}",
                    i + 1
                );
            }
            for old in 1..=i as u64 + 1 {
                let ours = consistency_proof(&leaves, old, leaves.len() as u64).unwrap();
                let theirs = tree.prove_consistency((leaves.len() as u64 - old) as usize);
                let ours_bytes: Vec<u8> = ours.iter().flatten().copied().collect();
                assert_eq!(
                    ours_bytes,
                    theirs.as_bytes(),
                    "consistency {old} -> {}",
                    i + 1
                );
                let old_root = root_of(&leaves[..old as usize]);
                assert!(
                    verify_consistency(
                        &old_root,
                        old,
                        &root_of(&leaves),
                        leaves.len() as u64,
                        &ours
                    ),
                    "{old} -> {}",
                    i + 1
                );
            }
        }
    }

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }
}
