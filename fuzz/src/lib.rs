//! What the fuzz targets share: how a fuzz input is cut into fields, and the rules' own
//! test support (webhook builders, the processor in miniature, the lifecycle check), so
//! that the `fold` target checks the same invariants as the property tests.

/// The rules' test support, compiled here as it is in `rules/tests` (it allows its own
/// unused builders).
#[path = "../../rules/tests/support/mod.rs"]
pub mod support;

/// Cuts `data` at its first `n - 1` newlines: `n` fields, the last one the rest (a body,
/// which may hold newlines). Missing fields are empty.
pub fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |b| *b == b'\n').collect();
    out.resize(n, &[]);
    out
}

/// A field as text, lossily: header values reach the gateway as bytes, but every parser
/// under test takes `&str` (the gateway refuses non-ASCII header values before them).
pub fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(field).into_owned()
}
