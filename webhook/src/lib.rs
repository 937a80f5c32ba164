//! What a webhook request proves and what it becomes on the webhook topic, with no I/O:
//! [`auth`] checks Buildkite tokens and signatures and Bitbucket signatures over the raw
//! body; [`routing`] gives the record its key, its CloudEvents id and headers; [`redact`]
//! takes configured members (secrets) out of the body before it is stored. The gateway
//! is the HTTP and Kafka adapter around these; the fuzz targets (`fuzz/`) feed them
//! arbitrary header values and bodies, so nothing here may panic on input.

pub mod auth;
pub mod redact;
pub mod routing;
