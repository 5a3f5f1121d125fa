//! Framed records: every Raft log entry, Raft state record and snapshot chunk is stored as
//!
//! ```text
//!   [format: u8 = 1] [crc32 of payload: u32 LE] [payload: postcard]
//! ```
//!
//! The CRC is checked on every read, so a flipped bit on disk (or a torn page the filesystem
//! did not catch) becomes a [`CodecError::Checksum`] for that shard instead of a wrong answer.
//! The format byte lets a later version change the payload encoding without guessing.
//! postcard is compact and not self-describing; the format byte is what makes that safe.

use serde::{Serialize, de::DeserializeOwned};

const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 5;

/// Why a stored record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("record is {len} bytes, shorter than its 5-byte header")]
    Truncated { len: usize },
    #[error("record has unknown format {0}")]
    Format(u8),
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("record payload does not decode: {0}")]
    Decode(#[source] postcard::Error),
    #[error("log entry stored under index {key_index} says it is index {entry_index}")]
    Misplaced { key_index: u64, entry_index: u64 },
    #[error("record does not encode: {0}")]
    Encode(#[source] postcard::Error),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_V1, 0, 0, 0, 0];
    let mut out =
        postcard::to_extend(value, std::mem::take(&mut out)).map_err(CodecError::Encode)?;
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T, CodecError> {
    let payload = verify(raw)?;
    postcard::from_bytes(payload).map_err(CodecError::Decode)
}

/// Checks the header and CRC of a record and returns its payload.
pub fn verify(raw: &[u8]) -> Result<&[u8], CodecError> {
    if raw.len() < HEADER_LEN {
        return Err(CodecError::Truncated { len: raw.len() });
    }
    if raw[0] != FORMAT_V1 {
        return Err(CodecError::Format(raw[0]));
    }
    let stored = u32::from_le_bytes([raw[1], raw[2], raw[3], raw[4]]);
    let payload = &raw[HEADER_LEN..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(v in proptest::collection::vec(any::<u8>(), 0..512), n in any::<u64>()) {
            let raw = encode(&(n, v.clone())).unwrap();
            let back: (u64, Vec<u8>) = decode(&raw).unwrap();
            prop_assert_eq!(back, (n, v));
        }

        /// Any single flipped bit is caught (CRC32 detects all 1-bit errors).
        #[test]
        fn any_bit_flip_is_detected(v in proptest::collection::vec(any::<u8>(), 1..256), bit in any::<usize>()) {
            let mut raw = encode(&v).unwrap();
            let bit = bit % (raw.len() * 8);
            raw[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode::<Vec<u8>>(&raw).is_err());
        }
    }

    #[test]
    fn short_and_unknown_records_are_errors_not_panics() {
        assert!(matches!(decode::<u64>(&[1, 2]), Err(CodecError::Truncated { len: 2 })));
        assert!(matches!(decode::<u64>(&[9, 0, 0, 0, 0]), Err(CodecError::Format(9))));
    }
}
