//! Encoding of openraft messages inside the internal gRPC service.
//!
//! The Raft service's protobuf messages carry the shard id and opaque payloads; payloads are
//! openraft's own request/response types encoded with postcard (compact, and the same serde
//! derive openraft ships). Decoding never panics: a bad payload is an error for that call.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest payload decoded from a peer: a full AppendEntries of max-size entries fits well.
pub const PAYLOAD_BYTES_MAX: usize = 64 << 20;

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(value).map_err(|e| format!("encode: {e}"))
}

pub fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T, String> {
    if raw.len() > PAYLOAD_BYTES_MAX {
        return Err(format!("payload of {} bytes exceeds {PAYLOAD_BYTES_MAX}", raw.len()));
    }
    postcard::from_bytes(raw).map_err(|e| format!("decode: {e}"))
}
