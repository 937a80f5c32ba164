//! A changelog partition of arbitrary records (states, batch markers, reset markers, with
//! arbitrary keys, values and `hookfold_next_offset` headers) replayed into store writes.
//! Reading a record never panics; the replay keeps its invariants whatever the sequence:
//! the store's position moves backwards only through a reset, no write carries more than
//! `MAX_PENDING` states, a position comes only with a batch marker, and after `finish`
//! every state read was counted once, as applied or skipped.
#![no_main]

use arbitrary::Arbitrary;
use hookfold_state::changelog::{
    BATCH_MARKER_KEY, ChangelogRecord, MAX_PENDING, RESET_MARKER_KEY, Replay, Write,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Key {
    Entity(Vec<u8>),
    Batch,
    Reset,
}

#[derive(Debug, Arbitrary)]
struct Record {
    key: Key,
    value: Option<Vec<u8>>,
    /// The header as bytes (mostly a number, sometimes not).
    header: Option<Header>,
}

#[derive(Debug, Arbitrary)]
enum Header {
    Offset(i64),
    Bytes(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    start: Option<i64>,
    records: Vec<Record>,
}

fuzz_target!(|input: Input| {
    let mut replay = Replay::new(input.start);
    let mut position = input.start;
    let mut states_read = 0u64;
    for (offset, record) in input.records.iter().enumerate() {
        let offset = offset as i64;
        let key: &[u8] = match &record.key {
            Key::Entity(key) => key,
            Key::Batch => BATCH_MARKER_KEY,
            Key::Reset => RESET_MARKER_KEY,
        };
        let header = record.header.as_ref().map(|h| match h {
            Header::Offset(n) => n.to_string().into_bytes(),
            Header::Bytes(b) => b.clone(),
        });
        let Ok(read) =
            ChangelogRecord::read(offset, key, record.value.as_deref(), header.as_deref())
        else {
            continue;
        };
        let is_batch = matches!(read, ChangelogRecord::Batch { .. });
        if matches!(read, ChangelogRecord::State { .. }) {
            states_read += 1;
        }
        match replay.push(offset, read) {
            Some(Write::States {
                states,
                position: moved,
            }) => {
                assert!(states.len() <= MAX_PENDING);
                if let Some((next, marker)) = moved {
                    assert!(is_batch, "a position without a batch marker");
                    assert_eq!(marker, offset);
                    assert!(
                        position.is_none_or(|at| next >= at),
                        "moved back from {position:?} to {next}"
                    );
                    position = Some(next);
                }
            }
            Some(Write::Clear) => position = None,
            None => {}
        }
        if let Some((next, _)) = replay.position() {
            assert_eq!(Some(next), position);
        }
    }
    replay.finish();
    assert_eq!(replay.applied + replay.skipped, states_read);
});
