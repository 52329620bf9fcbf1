//! gavel's audit primitives against material it did not produce:
//! Go's golang.org/x/mod/sumdb/note example vectors, and RFC 6962's own
//! definitions of the tree, proofs and verification, written here from the
//! RFC and sharing no code with the crate.

use gavel_audit::tree::{verify_consistency, verify_inclusion};
use gavel_audit::{
    NoteSigner, NoteVerifier, consistency_proof, inclusion_proof, leaf_hash, root_of,
};
use sha2::{Digest, Sha256};

const GO_SIGNER: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const GO_VERIFIER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const GO_SIG: &str =
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";

#[test]
fn go_sumdb_note_vectors() {
    let signer = NoteSigner::parse(GO_SIGNER).unwrap();
    assert_eq!(signer.encode(), GO_SIGNER);
    assert_eq!(signer.verifier().encode(), GO_VERIFIER);
    // Ed25519 is deterministic: the note is byte-identical to Go's.
    let note = signer.sign(GO_TEXT);
    assert_eq!(note, format!("{GO_TEXT}\n\u{2014} PeterNeumann {GO_SIG}\n"));
    let verifier = NoteVerifier::parse(GO_VERIFIER).unwrap();
    assert_eq!(verifier.open(&note).unwrap(), GO_TEXT);
    // A key whose base64 contains '+' (transparency-dev/formats test key).
    NoteVerifier::parse("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6").unwrap();
}

#[test]
fn key_id_follows_the_c2sp_rule() {
    // key id = first 4 bytes of SHA-256(name || "\n" || 0x01 || public key)
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
        .unwrap();
    assert_eq!(raw[0], 0x01);
    let mut h = Sha256::new();
    h.update(b"PeterNeumann\n");
    h.update(&raw);
    let id = hex::encode(&h.finalize()[..4]);
    assert_eq!(id, "c74f20a3");
    // gavel's own keys obey the same rule.
    let signer = NoteSigner::generate("gavel.example/audit").unwrap();
    let encoded = signer.verifier().encode();
    let mut parts = encoded.splitn(3, '+');
    let (name, id, key) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update(&raw);
    assert_eq!(hex::encode(&h.finalize()[..4]), id);
    // And the signature line carries that id before the signature.
    let note = signer.sign("x\n");
    let sig = note.rsplit(' ').next().unwrap().trim();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sig)
        .unwrap();
    assert_eq!(hex::encode(&raw[..4]), id);
    assert_eq!(raw.len(), 4 + 64);
}

// ---- RFC 6962 §2.1, transcribed -------------------------------------------

fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// MTH(D[n]).
fn mth(d: &[Vec<u8>]) -> [u8; 32] {
    match d.len() {
        0 => sha(&[]),
        1 => sha(&[&[0], &d[0]]),
        n => {
            let k = largest_power_of_two_below(n);
            sha(&[&[1], &mth(&d[..k]), &mth(&d[k..])])
        }
    }
}

/// The largest power of two smaller than n (n > 1).
fn largest_power_of_two_below(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// PATH(m, D[n]).
fn path(m: usize, d: &[Vec<u8>]) -> Vec<[u8; 32]> {
    let n = d.len();
    if n == 1 {
        return Vec::new();
    }
    let k = largest_power_of_two_below(n);
    if m < k {
        let mut p = path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

/// PROOF(m, D[n]) = SUBPROOF(m, D[n], true).
fn proof(m: usize, d: &[Vec<u8>]) -> Vec<[u8; 32]> {
    subproof(m, d, true)
}

fn subproof(m: usize, d: &[Vec<u8>], b: bool) -> Vec<[u8; 32]> {
    let n = d.len();
    if m == n {
        return if b { Vec::new() } else { vec![mth(d)] };
    }
    let k = largest_power_of_two_below(n);
    if m <= k {
        let mut p = subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

#[test]
fn proofs_equal_the_rfc_6962_definitions() {
    let data: Vec<Vec<u8>> = (0..33).map(|i| format!("leaf {i}").into_bytes()).collect();
    let leaves: Vec<[u8; 32]> = data.iter().map(|d| leaf_hash(d)).collect();
    for n in 1..=data.len() {
        let d = &data[..n];
        let root = mth(d);
        assert_eq!(root_of(&leaves[..n]), root, "MTH of {n}");
        for m in 0..n {
            let ours = inclusion_proof(&leaves, m as u64, n as u64).unwrap();
            assert_eq!(ours, path(m, d), "PATH({m}, D[{n}])");
            assert!(verify_inclusion(&root, n as u64, &data[m], m as u64, &ours));
            // A proof for one leaf does not prove another.
            let other = &data[(m + 1) % n];
            assert!(n == 1 || !verify_inclusion(&root, n as u64, other, m as u64, &ours));
        }
        for m in 1..=n {
            let ours = consistency_proof(&leaves, m as u64, n as u64).unwrap();
            assert_eq!(ours, proof(m, d), "PROOF({m}, D[{n}])");
            assert!(verify_consistency(
                &mth(&d[..m]),
                m as u64,
                &root,
                n as u64,
                &ours
            ));
            if m < n {
                let wrong = mth(&data[1..=m]);
                assert!(
                    !verify_consistency(&wrong, m as u64, &root, n as u64, &ours),
                    "{m}->{n}"
                );
            }
        }
    }
}

// ---- RFC 9162 §2.1.3.2 and §2.1.4.2: proof verification, transcribed -----

fn hash_children(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    sha(&[&[1], l, r])
}

/// Verifying an inclusion proof (RFC 9162 §2.1.3.2).
fn rfc_verify_inclusion(
    leaf_index: u64,
    tree_size: u64,
    leaf_hash: [u8; 32],
    path: &[[u8; 32]],
    root: [u8; 32],
) -> bool {
    if leaf_index >= tree_size {
        return false;
    }
    let (mut fn_, mut sn) = (leaf_index, tree_size - 1);
    let mut r = leaf_hash;
    for p in path {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = hash_children(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = hash_children(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == root
}

/// Verifying a consistency proof (RFC 9162 §2.1.4.2).
fn rfc_verify_consistency(
    first: u64,
    second: u64,
    first_hash: [u8; 32],
    second_hash: [u8; 32],
    proof: &[[u8; 32]],
) -> bool {
    if first == second {
        return proof.is_empty() && first_hash == second_hash;
    }
    if first == 0 || first > second || proof.is_empty() {
        return false;
    }
    let mut path: Vec<[u8; 32]> = proof.to_vec();
    if first.is_power_of_two() {
        path.insert(0, first_hash);
    }
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = hash_children(c, &fr);
            sr = hash_children(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = hash_children(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && fr == first_hash && sr == second_hash
}

#[test]
fn proofs_verify_with_the_rfc_9162_algorithms() {
    let data: Vec<Vec<u8>> = (0..40)
        .map(|i| format!("record {i}").into_bytes())
        .collect();
    let leaves: Vec<[u8; 32]> = data.iter().map(|d| leaf_hash(d)).collect();
    for n in 1..=leaves.len() as u64 {
        let root = root_of(&leaves[..n as usize]);
        for m in 0..n {
            let proof = inclusion_proof(&leaves, m, n).unwrap();
            assert!(
                rfc_verify_inclusion(m, n, leaves[m as usize], &proof, root),
                "inclusion {m} in {n}"
            );
            let wrong = leaves[((m + 1) % n) as usize];
            assert!(n == 1 || !rfc_verify_inclusion(m, n, wrong, &proof, root));
        }
        for m in 1..=n {
            let proof = consistency_proof(&leaves, m, n).unwrap();
            let old = root_of(&leaves[..m as usize]);
            assert!(
                rfc_verify_consistency(m, n, old, root, &proof),
                "consistency {m} -> {n}"
            );
            if m < n {
                let forged = root_of(&leaves[1..=m as usize]);
                assert!(
                    !rfc_verify_consistency(m, n, forged, root, &proof),
                    "forged {m} -> {n}"
                );
            }
        }
    }
}
