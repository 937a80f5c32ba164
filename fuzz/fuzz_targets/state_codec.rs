//! The stored form of a key's state, as RocksDB or the changelog might hand it back after
//! a disk fault, a bug or a hostile producer: `decode` must answer with a state or a typed
//! error, never panic or allocate without bound (libFuzzer's `-malloc_limit_mb` catches
//! that), and a state it accepts encodes back to bytes that decode to the same state.
#![no_main]

use hookfold_state::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = codec::decode(data) {
        let again = codec::encode(&state);
        assert_eq!(
            codec::decode(&again).expect("re-encoded state decodes"),
            state
        );
        // Views over a decoded state must not panic either.
        let _ = state.open_incidents();
        let _ = state.remembered_ids();
    }
});
