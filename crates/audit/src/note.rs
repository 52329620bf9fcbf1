//! C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys, and
//! tlog checkpoints (https://c2sp.org/tlog-checkpoint).
//!
//! A note is UTF-8 text ending in a newline, a blank line, then signature
//! lines `— <name> <base64(key id ‖ signature)>`. The key id is the first
//! four bytes of `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)`. Keys are
//! written as `PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 ‖ seed)>` and
//! verifier keys as `<name>+<key id hex>+<base64(0x01 ‖ public key)>`, the
//! encodings of Go's `golang.org/x/mod/sumdb/note`.

use crate::tree::Hash;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::path::Path;

const ED25519: u8 = 0x01;

/// What went wrong with a key or a note.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key string is not in the expected encoding.
    #[error("malformed key: {0}")]
    MalformedKey(String),
    /// The note is not a signed note.
    #[error("malformed note: {0}")]
    MalformedNote(String),
    /// No signature by this verifier's key, or it does not verify.
    #[error("no valid signature by {0}")]
    BadSignature(String),
    /// The signed text is not a checkpoint.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(String),
    /// Reading or writing the key file failed.
    #[error("key file {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('+') && !name.chars().any(char::is_whitespace)
}

/// A signing key with its name.
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl NoteSigner {
    /// A fresh random key.
    pub fn generate(name: &str) -> Result<NoteSigner, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::MalformedKey(format!(
                "key name {name:?} must be non-empty, without spaces or '+'"
            )));
        }
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        Ok(NoteSigner {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<id>+<base64>`.
    pub fn parse(text: &str) -> Result<NoteSigner, NoteError> {
        let bad = |why: &str| NoteError::MalformedKey(why.to_owned());
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| bad("no PRIVATE+KEY+ prefix"))?;
        // The base64 key may itself contain '+': only the first two split.
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected PRIVATE+KEY+name+id+key"));
        };
        let raw = B64.decode(key).map_err(|_| bad("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ED25519 {
            return Err(bad("not an Ed25519 key"));
        }
        let seed: [u8; 32] = raw[1..].try_into().map_err(|_| bad("bad seed length"))?;
        let signer = NoteSigner {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        };
        if format!("{:08x}", signer.id()) != id {
            return Err(bad("key id does not match the key"));
        }
        Ok(signer)
    }

    /// `PRIVATE+KEY+<name>+<id>+<base64(0x01 ‖ seed)>`.
    pub fn encode(&self) -> String {
        let mut raw = vec![ED25519];
        raw.extend_from_slice(&self.key.to_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id(),
            B64.encode(raw)
        )
    }

    /// The key at `path`; an error when there is none (for tools that read
    /// and must not create).
    pub fn load(path: &Path) -> Result<NoteSigner, NoteError> {
        let text = std::fs::read_to_string(path).map_err(|e| NoteError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        NoteSigner::parse(&text)
    }

    /// Loads the key at `path`, or creates it (mode 0600) if missing.
    pub fn load_or_create(path: &Path, name: &str) -> Result<NoteSigner, NoteError> {
        let io = |e: std::io::Error| NoteError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => NoteSigner::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let signer = NoteSigner::generate(name)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(path).map_err(io)?;
                std::io::Write::write_all(&mut file, format!("{}\n", signer.encode()).as_bytes())
                    .map_err(io)?;
                file.sync_all().map_err(io)?;
                Ok(signer)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn id(&self) -> u32 {
        key_id(&self.name, &self.key.verifying_key().to_bytes())
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs `text` (which must end in a newline) into a signed note.
    pub fn sign(&self, text: &str) -> String {
        debug_assert!(text.ends_with('\n'));
        let sig = self.key.sign(text.as_bytes());
        let mut raw = self.id().to_be_bytes().to_vec();
        raw.extend_from_slice(&sig.to_bytes());
        format!("{text}\n\u{2014} {} {}\n", self.name, B64.encode(raw))
    }
}

/// A public key that verifies notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses `<name>+<id>+<base64(0x01 ‖ public key)>`.
    pub fn parse(text: &str) -> Result<NoteVerifier, NoteError> {
        let bad = |why: &str| NoteError::MalformedKey(why.to_owned());
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected name+id+key"));
        };
        let raw = B64.decode(key).map_err(|_| bad("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ED25519 {
            return Err(bad("not an Ed25519 key"));
        }
        let public: [u8; 32] = raw[1..].try_into().map_err(|_| bad("bad key length"))?;
        let key =
            VerifyingKey::from_bytes(&public).map_err(|_| bad("not a valid Ed25519 point"))?;
        let expected = key_id(name, &public);
        if format!("{expected:08x}") != id {
            return Err(bad("key id does not match the key"));
        }
        Ok(NoteVerifier {
            name: name.to_owned(),
            id: expected,
            key,
        })
    }

    /// `<name>+<id>+<base64(0x01 ‖ public key)>`.
    pub fn encode(&self) -> String {
        let mut raw = vec![ED25519];
        raw.extend_from_slice(&self.key.to_bytes());
        format!("{}+{:08x}+{}", self.name, self.id, B64.encode(raw))
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Verifies `note` and returns its text. Signatures by other keys are
    /// ignored; at least one must be by this key and valid.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let bad = |why: &str| NoteError::MalformedNote(why.to_owned());
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(bad("control characters other than newline"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| bad("no blank line before the signatures"))?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if sigs.is_empty() || !sigs.ends_with('\n') {
            return Err(bad("signature block must end in a newline"));
        }
        for line in sigs.lines() {
            let rest = line
                .strip_prefix("\u{2014} ")
                .ok_or_else(|| bad("signature line must start with an em dash"))?;
            let (name, sig) = rest
                .split_once(' ')
                .ok_or_else(|| bad("signature line has no signature"))?;
            let raw = B64
                .decode(sig)
                .map_err(|_| bad("signature is not base64"))?;
            if raw.len() < 4 {
                return Err(bad("signature too short"));
            }
            if name != self.name || raw[..4] != self.id.to_be_bytes() {
                continue; // another key's signature
            }
            // A signature claiming to be by this key that does not verify
            // rejects the note (as Go's note.Open does).
            let valid = raw.len() == 68
                && Signature::from_slice(&raw[4..])
                    .is_ok_and(|sig| self.key.verify(text.as_bytes(), &sig).is_ok());
            if !valid {
                return Err(NoteError::BadSignature(self.name.clone()));
            }
            return Ok(text);
        }
        Err(NoteError::BadSignature(self.name.clone()))
    }
}

/// A tlog checkpoint: the log's origin, size and root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line (unique per log).
    pub origin: String,
    /// Number of records.
    pub size: u64,
    /// RFC 6962 root hash of those records.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint's note text.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parses a checkpoint's text (extension lines are allowed and ignored).
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let bad = |why: &str| NoteError::MalformedCheckpoint(why.to_owned());
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin"))?;
        let size = lines
            .next()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()) && (*s == "0" || !s.starts_with('0')))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("no tree size (decimal, no leading zeros)"))?;
        let root = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
            .ok_or_else(|| bad("no root hash"))?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    /// Verifies a signed checkpoint note with `verifier`.
    pub fn open(note: &str, verifier: &NoteVerifier) -> Result<Checkpoint, NoteError> {
        Checkpoint::parse(verifier.open(note)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_open_and_reject_tampering() {
        let signer = NoteSigner::generate("gavel.example/audit").unwrap();
        let verifier = signer.verifier();
        let cp = Checkpoint {
            origin: "gavel.example/audit".into(),
            size: 7,
            root: [9u8; 32],
        };
        let note = signer.sign(&cp.body());
        assert_eq!(Checkpoint::open(&note, &verifier).unwrap(), cp);
        assert!(note.contains("\n\n\u{2014} gavel.example/audit "));
        let tampered = note.replacen("\n7\n", "\n8\n", 1);
        assert!(matches!(
            Checkpoint::open(&tampered, &verifier),
            Err(NoteError::BadSignature(_))
        ));
        // A bad signature that claims our key rejects the note, even when a
        // good one follows.
        let good_line = note.rsplit_once("\n\n").unwrap().1;
        let (prefix, sig) = good_line.trim_end().rsplit_once(' ').unwrap();
        let mut raw = B64.decode(sig).unwrap();
        raw[10] ^= 1;
        let bad = format!("{}\n{prefix} {}\n{good_line}", cp.body(), B64.encode(raw));
        assert!(
            matches!(verifier.open(&bad), Err(NoteError::BadSignature(_))),
            "{bad}"
        );
        // Sizes are decimal without leading zeros; control characters are refused.
        assert!(Checkpoint::parse("o\n007\nAAAA\n").is_err());
        assert!(Checkpoint::parse("o\n+7\nAAAA\n").is_err());
        assert!(
            verifier
                .open(&note.replace("audit\n7", "audit\r\n7"))
                .is_err()
        );
        let other = NoteSigner::generate("gavel.example/audit")
            .unwrap()
            .verifier();
        assert!(Checkpoint::open(&note, &other).is_err());
        // Keys round-trip through their text encodings.
        let again = NoteSigner::parse(&signer.encode()).unwrap();
        assert_eq!(again.verifier(), verifier);
        assert_eq!(NoteVerifier::parse(&verifier.encode()).unwrap(), verifier);
        assert!(NoteVerifier::parse(&verifier.encode().replacen('+', "x+", 1)).is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let a = NoteSigner::load_or_create(&path, "log").unwrap();
        let b = NoteSigner::load_or_create(&path, "log").unwrap();
        assert_eq!(a.verifier(), b.verifier());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
