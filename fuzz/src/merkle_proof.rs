//! The `merkle_proof` target: RFC 9162 inclusion proofs built by `civic_registry::merkle`, then
//! edited by the fuzzer.
//!
//! Input: `n(2) i(2) mode(1)` then edits, each `op(1)` and its arguments (fields cut short by the
//! end of the input are zero-padded). `n = 1 + n % 300` leaves, the proof of leaf `i % n`. Leaves:
//! `mode & 0x80` clear: 32-byte commitments `SHA-256(j)` (all distinct); set: the short data
//! `[j % ((mode & 0x7f) + 1)]`, so leaves repeat and are not 32 bytes long.
//!
//! | op % 13 | edit |
//! |---|---|
//! | 0 | `leaf_index = u64(8)` |
//! | 1 | `tree_size = u64(8)` |
//! | 2 | push 32 bytes onto the path |
//! | 3 | pop the path |
//! | 4 | insert at `pos(1)` the hash of the subtree of leaves `a(2)..b(2)` (a real node) |
//! | 5 | replace `path[pos(1)]` by the hash of subtree `a(2)..b(2)` |
//! | 6 | flip bit `bit(1)` of `path[pos(1)]` |
//! | 7 | swap `path[a(1)]` and `path[b(1)]` |
//! | 8 | the data to prove becomes `leaves[j(2)]` |
//! | 9 | the data becomes `MTH(a..b) || MTH(b..c)` (a node's children: second-preimage attempt) |
//! | 10 | the data becomes `len(1)` bytes of the input |
//! | 11 | `leaf_index += delta(1) as i8` |
//! | 12 | `tree_size += delta(1) as i8` |
//!
//! Invariants:
//! - the untouched proof of every start verifies against `root_of(leaves)` and has
//!   `root_from(leaf) == root`; `prove_of` refuses an index past the end;
//! - `root_from` / `verify` never panic, whatever the fields (u64 extremes, any path length);
//! - a proof that verifies against the root proves data that is one of the leaves (leaf hashes
//!   and node hashes are domain-separated, so a node cannot pass as a leaf);
//! - with the real tree size (the verdict checks `tree_size == batch.size`, see
//!   `registry/src/verdict.rs`), a proof that verifies proves exactly `leaves[leaf_index]`.

use civic_registry::merkle::{leaf_hash, node_hash, prove_of, root_of, InclusionProof};
use sha2::{Digest, Sha256};

use super::take;

/// The subtree hash of `hashes` (MTH over already-hashed leaves), written out from RFC 9162
/// section 2.1.1 independently of the crate's own.
fn mth(hashes: &[[u8; 32]]) -> [u8; 32] {
    match hashes.len() {
        0 => Sha256::digest([]).into(),
        1 => hashes[0],
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            node_hash(&mth(&hashes[..k]), &mth(&hashes[k..]))
        }
    }
}

/// A non-empty range of leaves `lo..hi` from two u16s.
fn range(rest: &mut &[u8], n: usize) -> (usize, usize) {
    let a = usize::from(u16::from_be_bytes(take(rest))) % n;
    let b = usize::from(u16::from_be_bytes(take(rest))) % n;
    (a.min(b), a.max(b) + 1)
}

/// The leaves of a start, as described in the module docs.
pub fn leaves(n: usize, mode: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|j| {
            if mode & 0x80 == 0 {
                Sha256::digest((j as u64).to_be_bytes()).to_vec()
            } else {
                vec![(j % (usize::from(mode & 0x7f) + 1)) as u8]
            }
        })
        .collect()
}

pub fn check(data: &[u8]) {
    let mut rest = data;
    let n = 1 + usize::from(u16::from_be_bytes(take(&mut rest))) % 300;
    let i = usize::from(u16::from_be_bytes(take(&mut rest))) % n;
    let [mode] = take::<1>(&mut rest);
    let leaves = leaves(n, mode);
    let hashes: Vec<[u8; 32]> = leaves.iter().map(|d| leaf_hash(d)).collect();
    let root = root_of(&leaves);
    assert_eq!(root, mth(&hashes), "root_of disagrees with RFC 9162 MTH");
    assert!(prove_of(&leaves, n).is_none(), "a proof past the end");

    let honest = prove_of(&leaves, i).expect("index in range");
    assert_eq!(honest.leaf_index, i as u64);
    assert_eq!(honest.tree_size, n as u64);
    assert_eq!(
        honest.root_from(&leaves[i]),
        Some(root),
        "honest proof of {i}/{n}"
    );
    assert!(honest.verify(&leaves[i], &root));

    let mut proof: InclusionProof = honest;
    let mut claimed: Vec<u8> = leaves[i].clone();
    while !rest.is_empty() {
        let [op] = take::<1>(&mut rest);
        match op % 13 {
            0 => proof.leaf_index = u64::from_be_bytes(take(&mut rest)),
            1 => proof.tree_size = u64::from_be_bytes(take(&mut rest)),
            2 => proof.path.push(take(&mut rest)),
            3 => {
                proof.path.pop();
            }
            4 => {
                let [pos] = take::<1>(&mut rest);
                let (a, b) = range(&mut rest, n);
                let pos = usize::from(pos).min(proof.path.len());
                proof.path.insert(pos, mth(&hashes[a..b]));
            }
            5 => {
                let [pos] = take::<1>(&mut rest);
                let (a, b) = range(&mut rest, n);
                let len = proof.path.len();
                if len > 0 {
                    proof.path[usize::from(pos) % len] = mth(&hashes[a..b]);
                }
            }
            6 => {
                let [pos, bit] = take::<2>(&mut rest);
                let len = proof.path.len();
                if len > 0 {
                    proof.path[usize::from(pos) % len][usize::from(bit / 8) % 32] ^= 1 << (bit % 8);
                }
            }
            7 => {
                let [a, b] = take::<2>(&mut rest);
                let len = proof.path.len();
                if len > 0 {
                    proof.path.swap(usize::from(a) % len, usize::from(b) % len);
                }
            }
            8 => {
                let j = usize::from(u16::from_be_bytes(take(&mut rest))) % n;
                claimed = leaves[j].clone();
            }
            9 => {
                let (a, b) = range(&mut rest, n);
                let (c, d) = range(&mut rest, n);
                claimed = [mth(&hashes[a..b]), mth(&hashes[c..d])].concat();
            }
            10 => {
                let [len] = take::<1>(&mut rest);
                let len = usize::from(len).min(rest.len());
                claimed = rest[..len].to_vec();
                rest = &rest[len..];
            }
            11 => {
                let [d] = take::<1>(&mut rest);
                proof.leaf_index = proof.leaf_index.wrapping_add_signed(i64::from(d as i8));
            }
            _ => {
                let [d] = take::<1>(&mut rest);
                proof.tree_size = proof.tree_size.wrapping_add_signed(i64::from(d as i8));
            }
        }
    }

    let got = proof.root_from(&claimed);
    assert_eq!(proof.verify(&claimed, &root), got == Some(root));
    if got == Some(root) {
        assert!(
            leaves.contains(&claimed),
            "a proof verifies data that is no leaf: {proof:?}, data {claimed:02x?}"
        );
        if proof.tree_size == n as u64 {
            let at = usize::try_from(proof.leaf_index).expect("verified index fits");
            assert!(at < n, "verified index {at} past the end of {n}");
            assert_eq!(
                leaves[at], claimed,
                "a proof for index {at} of {n} verifies another leaf's data: {proof:?}"
            );
        }
    }
}
