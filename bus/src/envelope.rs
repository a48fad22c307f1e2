//! Node-to-node payloads: one version byte, then an rkyv archive that is validated
//! (bytecheck) before it is read, so a truncated or hostile payload is an error,
//! never undefined behaviour or a panic.

use bytes::Bytes;
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::{BusError, Result};

/// The envelope format written by this build.
pub const ENVELOPE_VERSION: u8 = 1;

/// What [`encode`] takes: any value rkyv can archive with its default
/// serializer (a name for the bound, so callers need not spell it out).
pub trait Encodable:
    for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

impl<T> Encodable for T where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
{
}

/// Encodes `value` as a versioned envelope.
pub fn encode<T: Encodable>(value: &T) -> Result<Bytes> {
    let body = rkyv::to_bytes::<rancor::Error>(value)
        .map_err(|e| BusError::Envelope(format!("encode: {e}")))?;
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&body);
    Ok(out.into())
}

/// Decodes and validates an envelope produced by [`encode`].
pub fn decode<T>(bytes: &[u8]) -> Result<T>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| BusError::Envelope("empty payload".into()))?;
    if version != ENVELOPE_VERSION {
        return Err(BusError::Envelope(format!(
            "unsupported envelope version {version} (this build reads {ENVELOPE_VERSION})"
        )));
    }
    // Archives are read in place and need their alignment; wire buffers have none.
    let mut aligned = AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    rkyv::from_bytes::<T, rancor::Error>(&aligned)
        .map_err(|e| BusError::Envelope(format!("invalid payload: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Append {
        term: u64,
        entries: Vec<Vec<u8>>,
        leader: String,
        commit: Option<u64>,
    }

    fn sample() -> Append {
        Append {
            term: 7,
            entries: vec![b"a".to_vec(), vec![0; 100]],
            leader: "node-1".into(),
            commit: Some(42),
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(bytes[0], ENVELOPE_VERSION);
        assert_eq!(decode::<Append>(&bytes).unwrap(), sample());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&sample()).unwrap();
        for len in 0..bytes.len() {
            assert!(decode::<Append>(&bytes[..len]).is_err(), "prefix {len}");
        }
    }

    #[test]
    fn wrong_version_is_named() {
        let mut bytes = encode(&sample()).unwrap().to_vec();
        bytes[0] = 9;
        let err = decode::<Append>(&bytes).unwrap_err().to_string();
        assert!(err.contains("version 9"), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Append>(&bytes);
        }

        #[test]
        fn flipped_bytes_never_panic(flip in 1usize..200, bit in 0u8..8) {
            let mut bytes = encode(&sample()).unwrap().to_vec();
            let i = flip % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = decode::<Append>(&bytes);
        }
    }
}
