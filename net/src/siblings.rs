//! The value section of a get response: zero or more sibling values.
//!
//! `count: u32 | (flags: u8 | len: u32 | bytes)*`, little-endian. Flag bit 0
//! marks a tombstone sibling (a delete concurrent with a write). Parsing
//! borrows from the frame and checks every length against what remains.

/// Sibling flag: this sibling is a tombstone.
pub const SIBLING_TOMBSTONE: u8 = 0b0000_0001;
/// Most siblings one response may carry.
pub const SIBLINGS_MAX: u32 = 4096;

/// One sibling, borrowed from a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sibling<'a> {
    pub tombstone: bool,
    pub value: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SiblingsError {
    #[error("sibling list is truncated")]
    Truncated,
    #[error("{0} siblings exceed the limit of {SIBLINGS_MAX}")]
    TooMany(u32),
    #[error("{0} trailing bytes after the sibling list")]
    Trailing(usize),
    #[error("unknown sibling flags {0:#04x}")]
    BadFlags(u8),
}

/// Appends the encoding of `siblings` to `out`. The count is written
/// once they are, so any iterator will do (a server streams them from its
/// stored version without collecting them first).
pub fn encode_siblings<'a>(out: &mut Vec<u8>, siblings: impl IntoIterator<Item = Sibling<'a>>) {
    let count_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut count = 0u32;
    for s in siblings {
        count += 1;
        out.push(if s.tombstone { SIBLING_TOMBSTONE } else { 0 });
        let len = u32::try_from(s.value.len()).expect("values are bounded far below 4 GiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(s.value);
    }
    assert!(count <= SIBLINGS_MAX, "{count} siblings exceed {SIBLINGS_MAX}");
    out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
}

/// Splits `n` bytes off the front of `bytes`.
fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], SiblingsError> {
    if bytes.len() < n {
        return Err(SiblingsError::Truncated);
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

/// Parses a sibling list, borrowing each value.
pub fn decode_siblings(bytes: &[u8]) -> Result<Vec<Sibling<'_>>, SiblingsError> {
    // Sized from the count up front (each sibling takes at least 5 bytes,
    // so a lying count cannot make it large); growing from empty cost a
    // quarter of a one-sibling decode.
    let count = bytes
        .get(..4)
        .map_or(0, |c| u32::from_le_bytes(c.try_into().expect("4 bytes")));
    let mut siblings = Vec::with_capacity((count.min(SIBLINGS_MAX) as usize).min(bytes.len() / 5));
    for_each_sibling(bytes, |s| siblings.push(s))?;
    Ok(siblings)
}

/// Parses a sibling list and hands each sibling to `f` as it goes, without
/// collecting them; returns how many there were. On an error `f` may have
/// seen the siblings before the fault.
pub fn for_each_sibling<'a>(mut bytes: &'a [u8], mut f: impl FnMut(Sibling<'a>)) -> Result<u32, SiblingsError> {
    let count = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes"));
    if count > SIBLINGS_MAX {
        return Err(SiblingsError::TooMany(count));
    }
    for _ in 0..count {
        let flags = take(&mut bytes, 1)?[0];
        if flags & !SIBLING_TOMBSTONE != 0 {
            return Err(SiblingsError::BadFlags(flags));
        }
        let len = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().expect("4 bytes"));
        let value = take(&mut bytes, len as usize)?;
        f(Sibling {
            tombstone: flags & SIBLING_TOMBSTONE != 0,
            value,
        });
    }
    if !bytes.is_empty() {
        return Err(SiblingsError::Trailing(bytes.len()));
    }
    Ok(count)
}
