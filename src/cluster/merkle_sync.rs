//! Anti-entropy's pure half: what two replicas of a partition must
//! exchange, found by comparing their Merkle trees top-down (root, then
//! branches, then leaves, then the keys of differing leaves), and the
//! encodings of what they send each other (`docs/wire-format.md`,
//! "MerkleExchange").

/// Most keys one leaf listing may carry; a leaf with more is compared in
/// full anyway, over several exchanges, as the listing is cut at this many.
pub const LEAF_KEYS_MAX: usize = 65_536;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MerkleSyncError {
    #[error("expected {expected} hashes, got {got} bytes")]
    HashCount { expected: usize, got: usize },
    #[error("key listing is truncated")]
    Truncated,
    #[error("key listing holds {0} keys, more than {LEAF_KEYS_MAX}")]
    TooManyKeys(usize),
    #[error("key listing has {0} trailing bytes")]
    Trailing(usize),
}

/// Positions where two hash lists of equal length differ.
pub fn differing(local: &[u64], remote: &[u64]) -> Vec<usize> {
    assert_eq!(local.len(), remote.len(), "compared trees have the same shape");
    local
        .iter()
        .zip(remote)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect()
}

/// Keys of one leaf that the replicas hold differently: on one side only,
/// or with different object hashes. Sorted, each once.
pub fn keys_to_repair(local: &[(Vec<u8>, u64)], remote: &[(Vec<u8>, u64)]) -> Vec<Vec<u8>> {
    let theirs: std::collections::BTreeMap<&[u8], u64> = remote.iter().map(|(k, h)| (k.as_slice(), *h)).collect();
    let ours: std::collections::BTreeMap<&[u8], u64> = local.iter().map(|(k, h)| (k.as_slice(), *h)).collect();
    let mut keys: std::collections::BTreeSet<&[u8]> = std::collections::BTreeSet::new();
    for (key, hash) in &ours {
        if theirs.get(key) != Some(hash) {
            keys.insert(key);
        }
    }
    for key in theirs.keys() {
        if !ours.contains_key(key) {
            keys.insert(key);
        }
    }
    keys.into_iter().map(<[u8]>::to_vec).collect()
}

/// `hash u64 LE` repeated.
pub fn encode_hashes(hashes: &[u64]) -> Vec<u8> {
    hashes.iter().flat_map(|h| h.to_le_bytes()).collect()
}

pub fn decode_hashes(bytes: &[u8], expected: usize) -> Result<Vec<u64>, MerkleSyncError> {
    if bytes.len() != expected * 8 {
        return Err(MerkleSyncError::HashCount {
            expected,
            got: bytes.len(),
        });
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// `count u32 | (key_len u16 | key | object_hash u64)*`.
pub fn encode_key_hashes(keys: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let keys = &keys[..keys.len().min(LEAF_KEYS_MAX)];
    let mut out = Vec::with_capacity(4 + keys.iter().map(|(k, _)| 10 + k.len()).sum::<usize>());
    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for (key, hash) in keys {
        let len = u16::try_from(key.len()).expect("keys are at most 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&hash.to_le_bytes());
    }
    out
}

pub fn decode_key_hashes(mut bytes: &[u8]) -> Result<Vec<(Vec<u8>, u64)>, MerkleSyncError> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], MerkleSyncError> {
        if bytes.len() < n {
            return Err(MerkleSyncError::Truncated);
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    let count = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes")) as usize;
    if count > LEAF_KEYS_MAX {
        return Err(MerkleSyncError::TooManyKeys(count));
    }
    let mut keys = Vec::with_capacity(count.min(bytes.len() / 10));
    for _ in 0..count {
        let len = u16::from_le_bytes(take(&mut bytes, 2)?.try_into().expect("2 bytes")) as usize;
        let key = take(&mut bytes, len)?.to_vec();
        let hash = u64::from_le_bytes(take(&mut bytes, 8)?.try_into().expect("8 bytes"));
        keys.push((key, hash));
    }
    if !bytes.is_empty() {
        return Err(MerkleSyncError::Trailing(bytes.len()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_keys_held_differently_are_exchanged() {
        let local = vec![(b"a".to_vec(), 1), (b"b".to_vec(), 2), (b"c".to_vec(), 3)];
        let remote = vec![(b"b".to_vec(), 2), (b"c".to_vec(), 9), (b"d".to_vec(), 4)];
        assert_eq!(
            keys_to_repair(&local, &remote),
            vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
        assert!(keys_to_repair(&local, &local).is_empty());
        assert_eq!(differing(&[1, 2, 3], &[1, 5, 3]), vec![1]);
    }

    #[test]
    fn encodings_round_trip_and_reject_bad_input() {
        let keys = vec![(b"key".to_vec(), 7), (Vec::new(), u64::MAX)];
        let bytes = encode_key_hashes(&keys);
        assert_eq!(decode_key_hashes(&bytes).unwrap(), keys);
        for cut in 0..bytes.len() {
            assert!(decode_key_hashes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(decode_hashes(&encode_hashes(&[1, 2]), 2).unwrap(), vec![1, 2]);
        assert!(decode_hashes(&[0; 9], 1).is_err());
        assert_eq!(
            decode_key_hashes(&u32::MAX.to_le_bytes()),
            Err(MerkleSyncError::TooManyKeys(u32::MAX as usize))
        );
    }
}
