//! Merkle trees as in RFC 9162 section 2.1 (identical to RFC 6962 section 2.1).
//!
//! Leaf hash `SHA-256(0x00 || d)`, node hash `SHA-256(0x01 || l || r)`, the left subtree holds the
//! largest power of two strictly smaller than the number of leaves, the empty tree hashes to
//! `SHA-256("")`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cose::hash_list;

pub fn leaf_hash(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

pub fn node_hash(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

/// Largest power of two strictly smaller than `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// MTH over already-hashed leaves; `hashes` is never empty here.
fn mth(hashes: &[[u8; 32]]) -> [u8; 32] {
    match hashes {
        [] => Sha256::digest([]).into(),
        [one] => *one,
        _ => {
            let k = split(hashes.len());
            node_hash(&mth(&hashes[..k]), &mth(&hashes[k..]))
        }
    }
}

/// The tree head over leaf data of any length (the RFC's general form).
pub fn root_of<T: AsRef<[u8]>>(leaves: &[T]) -> [u8; 32] {
    let hashes: Vec<[u8; 32]> = leaves.iter().map(|d| leaf_hash(d.as_ref())).collect();
    mth(&hashes)
}

/// The tree head over leaf data = credential commitments. Empty tree = SHA-256("").
pub fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    root_of(leaves)
}

/// An inclusion proof (audit path), leaf-to-root order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    #[serde(with = "hash_list")]
    pub path: Vec<[u8; 32]>,
}

fn path(m: usize, hashes: &[[u8; 32]], out: &mut Vec<[u8; 32]>) {
    let n = hashes.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &hashes[..k], out);
        out.push(mth(&hashes[k..]));
    } else {
        path(m - k, &hashes[k..], out);
        out.push(mth(&hashes[..k]));
    }
}

/// The inclusion proof of `leaves[index]` over leaf data of any length.
pub fn prove_of<T: AsRef<[u8]>>(leaves: &[T], index: usize) -> Option<InclusionProof> {
    if index >= leaves.len() {
        return None;
    }
    let hashes: Vec<[u8; 32]> = leaves.iter().map(|d| leaf_hash(d.as_ref())).collect();
    let mut p = Vec::new();
    path(index, &hashes, &mut p);
    Some(InclusionProof {
        leaf_index: u64::try_from(index).ok()?,
        tree_size: u64::try_from(leaves.len()).ok()?,
        path: p,
    })
}

/// The inclusion proof of `leaves[index]`; `None` if out of range.
pub fn prove(leaves: &[[u8; 32]], index: usize) -> Option<InclusionProof> {
    prove_of(leaves, index)
}

impl InclusionProof {
    /// The root this proof leads to from `leaf_data` (RFC 9162 section 2.1.3.2), or `None` if
    /// the proof is malformed (index out of range, path too long or too short).
    pub fn root_from(&self, leaf_data: &[u8]) -> Option<[u8; 32]> {
        if self.leaf_index >= self.tree_size {
            return None;
        }
        let mut fn_ = self.leaf_index;
        let mut sn = self.tree_size - 1;
        let mut r = leaf_hash(leaf_data);
        for p in &self.path {
            if sn == 0 {
                return None;
            }
            if fn_ & 1 == 1 || fn_ == sn {
                r = node_hash(p, &r);
                if fn_ & 1 == 0 {
                    while fn_ & 1 == 0 && fn_ != 0 {
                        fn_ >>= 1;
                        sn >>= 1;
                    }
                }
            } else {
                r = node_hash(&r, p);
            }
            fn_ >>= 1;
            sn >>= 1;
        }
        (sn == 0).then_some(r)
    }

    /// Whether this proof shows `leaf_data` at `leaf_index` in the tree of `tree_size` with `root`.
    pub fn verify(&self, leaf_data: &[u8], root: &[u8; 32]) -> bool {
        self.root_from(leaf_data).as_ref() == Some(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }
    fn h32(s: &str) -> [u8; 32] {
        h(s).try_into().unwrap()
    }

    // RFC 6962 reference vectors, from certificate-transparency-go merkletree/merkle_verifier_test.go
    // (also transparency-dev/merkle testonly): the 8 standard leaves and the tree heads of their
    // prefixes of size 1..=8.
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    // (leaf index (0-based), tree size, path)
    const INCLUSION: [(u64, u64, &[&str]); 5] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];

    #[test]
    fn empty_tree() {
        assert_eq!(
            root(&[]),
            h32("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert!(prove(&[], 0).is_none());
    }

    #[test]
    fn rfc6962_roots() {
        let leaves: Vec<Vec<u8>> = LEAVES.iter().map(|s| h(s)).collect();
        for size in 1..=8 {
            assert_eq!(
                root_of(&leaves[..size]),
                h32(ROOTS[size - 1]),
                "size {size}"
            );
        }
    }

    #[test]
    fn rfc6962_inclusion() {
        let leaves: Vec<Vec<u8>> = LEAVES.iter().map(|s| h(s)).collect();
        for (idx, size, want) in INCLUSION {
            let want: Vec<[u8; 32]> = want.iter().map(|s| h32(s)).collect();
            let n = usize::try_from(size).unwrap();
            let i = usize::try_from(idx).unwrap();
            let p = prove_of(&leaves[..n], i).unwrap();
            assert_eq!(p.path, want, "path of {idx} in {size}");
            let r = h32(ROOTS[n - 1]);
            assert!(p.verify(&leaves[i], &r));
            // the CT verifier's negative checks
            for bad in [
                InclusionProof {
                    leaf_index: idx.wrapping_sub(1),
                    ..p.clone()
                },
                InclusionProof {
                    leaf_index: idx + 1,
                    ..p.clone()
                },
                InclusionProof {
                    leaf_index: idx ^ 2,
                    ..p.clone()
                },
                InclusionProof {
                    tree_size: size * 2,
                    ..p.clone()
                },
                InclusionProof {
                    tree_size: size / 2,
                    ..p.clone()
                },
            ] {
                assert!(!bad.verify(&leaves[i], &r), "{bad:?}");
            }
            assert!(!p.verify(b"WrongLeaf", &r));
            assert!(!p.verify(&leaves[i], &root(&[])));
            let mut longer = p.clone();
            longer.path.push(r);
            assert!(!longer.verify(&leaves[i], &r));
            let mut front = p.clone();
            front.path.insert(0, r);
            assert!(!front.verify(&leaves[i], &r));
            if !p.path.is_empty() {
                let mut shorter = p.clone();
                shorter.path.pop();
                assert!(!shorter.verify(&leaves[i], &r));
            }
        }
    }

    #[test]
    fn invalid_shapes() {
        let p = |leaf_index, tree_size| InclusionProof {
            leaf_index,
            tree_size,
            path: vec![],
        };
        assert!(p(0, 0).root_from(b"").is_none());
        assert!(p(1, 0).root_from(b"").is_none());
        assert!(p(2, 1).root_from(b"").is_none());
        assert!(p(u64::MAX, u64::MAX).root_from(b"").is_none());
        assert_eq!(p(0, 1).root_from(b"x"), Some(leaf_hash(b"x")));
    }

    fn commitments(n: usize) -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| Sha256::digest(i.to_be_bytes()).into())
            .collect()
    }

    #[test]
    fn every_index_of_every_small_tree() {
        for n in 1..=40usize {
            let leaves = commitments(n);
            let r = root(&leaves);
            for i in 0..n {
                let p = prove(&leaves, i).unwrap();
                assert!(p.verify(&leaves[i], &r), "n={n} i={i}");
                // another leaf's data at this index
                if n > 1 {
                    assert!(!p.verify(&leaves[(i + 1) % n], &r));
                }
                // every other index in range
                for j in 0..n as u64 {
                    if j != i as u64 {
                        let q = InclusionProof {
                            leaf_index: j,
                            ..p.clone()
                        };
                        assert!(!q.verify(&leaves[i], &r), "n={n} i={i} j={j}");
                    }
                }
                // every byte of the path and of the leaf
                for k in 0..p.path.len() {
                    for b in [0usize, 17, 31] {
                        let mut q = p.clone();
                        q.path[k][b] ^= 0x80;
                        assert!(!q.verify(&leaves[i], &r));
                    }
                }
                let mut leaf = leaves[i];
                leaf[i % 32] ^= 1;
                assert!(!p.verify(&leaf, &r));
                // wrong tree size
                for s in [n as u64 - 1, n as u64 + 1] {
                    if s > i as u64 && (s as usize).next_power_of_two() != n.next_power_of_two() {
                        let q = InclusionProof {
                            tree_size: s,
                            ..p.clone()
                        };
                        assert!(!q.verify(&leaves[i], &r));
                    }
                }
            }
            assert!(prove(&leaves, n).is_none());
        }
    }

    #[test]
    fn proof_cbor_shape() {
        let leaves = commitments(5);
        let p = prove(&leaves, 3).unwrap();
        let bytes = crate::cose::to_cbor(&p).unwrap();
        let v: ciborium::Value = ciborium::from_reader(bytes.as_slice()).unwrap();
        let map = v.as_map().unwrap();
        let path = map
            .iter()
            .find(|(k, _)| k.as_text() == Some("path"))
            .unwrap()
            .1
            .as_array()
            .unwrap();
        assert!(path
            .iter()
            .all(|e| e.as_bytes().map(|b| b.len()) == Some(32)));
        let back: InclusionProof = crate::cose::from_cbor(&bytes, "proof").unwrap();
        assert_eq!(back, p);
    }
}
