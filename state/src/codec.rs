//! How a [`KeyState`] and a partition's [`StoredClock`] (its watermark) are stored: a 4-byte
//! big-endian format version, then postcard. postcard has no field names, so a state written by
//! another layout version is refused (the partition must be rebuilt from the webhook topic)
//! instead of being misread.

use hookfold_rules::{KeyState, STATE_FORMAT_VERSION, StoredClock};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(
        "state was written with layout version {found}, this processor reads {STATE_FORMAT_VERSION}: rebuild the partition"
    )]
    Version { found: u32 },
    #[error("state is truncated")]
    Truncated,
    #[error("state does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

pub fn encode(state: &KeyState) -> Vec<u8> {
    encode_value(state)
}

pub fn decode(bytes: &[u8]) -> Result<KeyState, CodecError> {
    decode_value(bytes)
}

/// The clock's value under [`hookfold_rules::CLOCK_KEY`] (its timers have keys of their
/// own: [`hookfold_rules::TIMER_PREFIX`]).
pub fn encode_clock(clock: &StoredClock) -> Vec<u8> {
    encode_value(clock)
}

pub fn decode_clock(bytes: &[u8]) -> Result<StoredClock, CodecError> {
    decode_value(bytes)
}

/// Any other stored value the same way (the group stage, a group's state, a record of
/// the groups topic).
pub fn encode_value<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = STATE_FORMAT_VERSION.to_be_bytes().to_vec();
    // Serializing plain data into a Vec cannot fail.
    out.extend(postcard::to_stdvec(value).expect("plain data serializes"));
    out
}

pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (version, body) = bytes.split_at_checked(4).ok_or(CodecError::Truncated)?;
    let found = u32::from_be_bytes(version.try_into().map_err(|_| CodecError::Truncated)?);
    if found != STATE_FORMAT_VERSION {
        return Err(CodecError::Version { found });
    }
    Ok(postcard::from_bytes(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let state = KeyState::default();
        let bytes = encode(&state);
        assert_eq!(decode(&bytes).unwrap(), state);
        let mut other = bytes.clone();
        other[3] = other[3].wrapping_add(1);
        assert!(matches!(decode(&other), Err(CodecError::Version { .. })));
        assert!(matches!(decode(&bytes[..2]), Err(CodecError::Truncated)));
        let clock = StoredClock::default();
        assert_eq!(decode_clock(&encode_clock(&clock)).unwrap(), clock);
    }
}
