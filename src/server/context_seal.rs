//! Contexts are sealed before they leave for a client: the encoded version
//! vector, then a 16-byte SipHash-2-4-128 tag under a key every node of the
//! cluster shares. A context is opaque to clients anyway; sealing means a
//! forged or corrupted one is refused with a clear error instead of
//! superseding writes its sender never saw or naming writers that do not
//! exist (which would grow every later version of the key).
//!
//! The key is derived from the cluster secret; a node without one (a
//! one-node cluster) keeps a random key in its data directory.
//!
//! SipHash is a pseudorandom function designed as a MAC for short inputs,
//! which a context is (11 to a few hundred bytes). Every read seals one and
//! every write with a context opens one; HMAC-SHA256 cost two SHA-256
//! blocks each time, 5% of a native read's server CPU.

use std::path::Path;

use dynkv::object::{context_len, decode_context, encode_context};
use dynkv::version::VersionVector;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;
use subtle::ConstantTimeEq;

const TAG_BYTES: usize = 16;
const KEY_FILE: &str = "CONTEXT_KEY";

#[derive(Clone)]
pub(crate) struct ContextSeal {
    key: [u8; 16],
}

/// The SipHash key: the first 16 bytes of a 32-byte key.
fn keyed(key: &[u8]) -> ContextSeal {
    ContextSeal {
        key: key[..16].try_into().expect("keys are 32 bytes"),
    }
}

impl ContextSeal {
    pub(crate) fn new(cluster_secret: &str, data_dir: &Path) -> Result<ContextSeal, String> {
        if !cluster_secret.is_empty() {
            let mut mac = Hmac::<Sha256>::new_from_slice(cluster_secret.as_bytes()).expect("any key length");
            mac.update(b"dynkv-context-key-v2");
            return Ok(keyed(&mac.finalize().into_bytes()));
        }
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(key) if key.len() == 32 => Ok(keyed(&key)),
            Ok(_) => Err(format!("{} is not a 32-byte key", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; 32];
                getrandom::fill(&mut key).map_err(|e| format!("no randomness for a context key: {e}"))?;
                std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
                std::fs::write(&path, &key)
                    .and_then(|()| std::fs::File::open(&path)?.sync_all())
                    .map_err(|e| format!("cannot store {}: {e}", path.display()))?;
                Ok(keyed(&key))
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = SipHasher24::new_with_key(&self.key);
        mac.write(body);
        mac.finish128().as_bytes()
    }

    /// The context bytes a client gets.
    pub(crate) fn seal(&self, context: &VersionVector) -> Vec<u8> {
        self.seal_with(context_len(context), |out| encode_context(context, out))
    }

    /// The context bytes a client gets for an encoded context of
    /// `body_len` bytes, which `encode` appends.
    pub(crate) fn seal_with(&self, body_len: usize, encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::with_capacity(body_len + TAG_BYTES);
        encode(&mut out);
        debug_assert_eq!(out.len(), body_len);
        let tag = self.tag(&out);
        out.extend_from_slice(&tag);
        out
    }

    /// Checks and decodes a context a client sent back; empty means none.
    pub(crate) fn open(&self, bytes: &[u8]) -> Result<Option<VersionVector>, String> {
        if bytes.is_empty() {
            return Ok(None);
        }
        if bytes.len() < TAG_BYTES {
            return Err("the context is truncated".into());
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_BYTES);
        if !bool::from(self.tag(body).ct_eq(tag)) {
            return Err("the context was not issued by this cluster (forged, corrupted, or from before a change of cluster secret); read the key again".to_string());
        }
        decode_context(body).map_err(|e| format!("bad context: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynkv_ring::NodeId;

    #[test]
    fn sealed_contexts_open_and_tampered_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let seal = ContextSeal::new("a-cluster-secret-of-some-length", dir.path()).unwrap();
        let vv = VersionVector::from_pairs([(NodeId(7), 3)]);
        let sealed = seal.seal(&vv);
        assert_eq!(seal.open(&sealed).unwrap(), Some(vv));
        assert_eq!(seal.open(&[]).unwrap(), None);
        let mut forged = sealed.clone();
        forged[5] ^= 1;
        assert!(seal.open(&forged).unwrap_err().contains("not issued by this cluster"));
        let other = ContextSeal::new("another-secret-entirely-here", dir.path()).unwrap();
        assert!(other.open(&sealed).is_err());
        // Without a secret, a node keeps its own key across restarts.
        let alone = ContextSeal::new("", dir.path()).unwrap();
        assert_eq!(
            ContextSeal::new("", dir.path())
                .unwrap()
                .open(&alone.seal(&VersionVector::default()))
                .unwrap(),
            Some(VersionVector::default())
        );
    }

    #[test]
    fn the_tag_is_siphash_2_4_128_under_the_derived_key() {
        // Nodes of different builds must agree on tags: pin the
        // construction, not just self-consistency.
        let dir = tempfile::tempdir().unwrap();
        let seal = ContextSeal::new("a-cluster-secret-of-some-length", dir.path()).unwrap();
        let vv = VersionVector::from_pairs([(NodeId(7), 3), (NodeId(9), 1)]);
        let sealed = seal.seal(&vv);
        let mut derive = Hmac::<Sha256>::new_from_slice(b"a-cluster-secret-of-some-length").unwrap();
        derive.update(b"dynkv-context-key-v2");
        let key = derive.finalize().into_bytes();
        let mut mac = SipHasher24::new_with_key(key[..16].try_into().unwrap());
        let body = dynkv::object::context_bytes(&vv);
        mac.write(&body);
        assert_eq!(sealed, [&body[..], &mac.finish128().as_bytes()[..]].concat());
    }
}
