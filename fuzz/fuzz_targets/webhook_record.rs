//! A record of the webhook topic, as any producer could write it: `ce_type`, `ce_source`,
//! `ce_time` and `ce_id` header values and a body, cut from the input at its first four
//! newlines. Parsing must answer with an event or a typed error, never panic; a parsed
//! event must have a routing key (unless its body was never read), fold into an empty state
//! without panicking, and leave a state that survives the codec.
#![no_main]

use hookfold_events::{EventBody, parse};
use hookfold_fuzz::{fields, text};
use hookfold_proto::cloudevents::CloudEventHeaders;
use hookfold_rules::{Cause, KeyState, Rules, apply};
use hookfold_state::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = fields(data, 5);
    let headers = CloudEventHeaders {
        ty: text(parts[0]),
        source: text(parts[1]),
        time: text(parts[2]),
        id: text(parts[3]),
        content_type: "application/json".into(),
    };
    let Ok(event) = parse(&headers, parts[4]) else {
        return;
    };
    let key = event.routing_key();
    assert_eq!(key.is_none(), matches!(event.body, EventBody::Unknown));
    if let Some(key) = &key {
        assert!(key.starts_with(&format!("{}/", event.source_id)), "{key}");
    }
    let cause = Cause {
        ce_id: event.id.clone(),
        ..Cause::default()
    };
    let rules = Rules::default();
    let (state, _) = apply(KeyState::default(), &event, &cause, &rules);
    let decoded = codec::decode(&codec::encode(&state)).expect("an encoded state decodes");
    assert_eq!(decoded, state);
    // The same record again is a repeat: nothing more.
    let (again, repeated) = apply(state.clone(), &event, &cause, &rules);
    assert!(repeated.is_empty(), "a repeat made {repeated:?}");
    assert_eq!(again, state);
});
