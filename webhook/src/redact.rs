//! Taking members out of a webhook body before it is stored (`redact` in a source's
//! config), by dotted path, without re-encoding the rest.
//!
//! Invariants:
//! - every byte outside the removed members (and the separators that went with them) is
//!   the sender's, in the sender's order: the record differs from the body only where a
//!   member was taken out, and it is still one valid JSON value;
//! - a member is matched by its decoded key, so `"p\u0069peline"` is `pipeline`, as it is
//!   to the rules; every occurrence of a repeated key is removed;
//! - only objects are descended; a path through an array, a string or a missing key
//!   removes nothing;
//! - on bytes that are not one JSON object nothing is removed and nothing panics (the
//!   gateway parses the body first; the fuzz targets feed this anything).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// A dotted path of object keys, e.g. `pipeline.env`. Keys containing a dot cannot be
/// named; no Buildkite field that carries secrets has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    segments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("a redact path is empty")]
    Empty,
    #[error("redact path `{0}` has an empty segment (write keys separated by single dots)")]
    EmptySegment(String),
}

impl FromStr for JsonPath {
    type Err = PathError;

    fn from_str(text: &str) -> Result<Self, PathError> {
        if text.is_empty() {
            return Err(PathError::Empty);
        }
        let segments: Vec<String> = text.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(PathError::EmptySegment(text.to_owned()));
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonPath {
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// What [`redact`] took out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    /// The body without the removed members.
    pub body: Vec<u8>,
    /// The configured paths that matched at least one member, in configured order.
    pub removed: Vec<String>,
}

impl Redacted {
    /// The value of the record's `hookfold-redacted` header: the removed paths,
    /// comma-separated.
    pub fn header(&self) -> String {
        self.removed.join(",")
    }
}

/// The body with every member at one of `paths` removed, or `None` when none is present
/// (the body is then stored as received).
pub fn redact(body: &[u8], paths: &[JsonPath]) -> Option<Redacted> {
    if paths.is_empty() {
        return None;
    }
    let mut scanner = Scanner { bytes: body, at: 0 };
    scanner.skip_ws();
    let start = scanner.at;
    if scanner.peek() != Some(b'{') {
        return None;
    }
    let selected: Vec<&[String]> = paths.iter().map(|p| p.segments.as_slice()).collect();
    let mut matched = vec![false; paths.len()];
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(&body[..start]);
    // One pass: the rewrite finds where the object ends as it goes.
    let end = rewrite_object(body, start, &selected, &mut matched, &mut out)?;
    scanner.at = end;
    scanner.skip_ws();
    if scanner.at != body.len() || !matched.contains(&true) {
        return None;
    }
    out.extend_from_slice(&body[end..]);
    Some(Redacted {
        body: out,
        removed: paths
            .iter()
            .zip(matched)
            .filter(|(_, hit)| *hit)
            .map(|(path, _)| path.text.clone())
            .collect(),
    })
}

/// One member of an object: where its key starts, its decoded key, and its value's span.
struct Member<'a> {
    key_start: usize,
    key: Cow<'a, str>,
    value_start: usize,
    value_end: usize,
}

/// Writes the object starting at `start` to `out`, without the members that one of
/// `paths` (relative to this object) ends at and with the members that a longer path
/// goes through rewritten. `matched[i]` is set when `paths[i]` removed something.
fn rewrite_object(
    bytes: &[u8],
    start: usize,
    paths: &[&[String]],
    matched: &mut [bool],
    out: &mut Vec<u8>,
) -> Option<usize> {
    let (members, close) = members(bytes, start)?;
    let Some(first) = members.first() else {
        out.extend_from_slice(&bytes[start..=close]);
        return Some(close + 1);
    };
    // `{` and the whitespace before the first member.
    out.extend_from_slice(&bytes[start..first.key_start]);
    let mut previous_end: Option<usize> = None;
    let mut wrote_any = false;
    for member in &members {
        let mut removed = false;
        let mut deeper: Vec<(usize, &[String])> = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            if path
                .first()
                .is_some_and(|segment| segment.as_str() == member.key)
            {
                if path.len() == 1 {
                    removed = true;
                    matched[i] = true;
                } else {
                    deeper.push((i, &path[1..]));
                }
            }
        }
        let separator_start = previous_end.unwrap_or(member.key_start);
        previous_end = Some(member.value_end);
        if removed {
            continue;
        }
        if wrote_any {
            // The original separator (`,` and its whitespace) before this member.
            out.extend_from_slice(&bytes[separator_start..member.key_start]);
        }
        wrote_any = true;
        if !deeper.is_empty() && bytes.get(member.value_start) == Some(&b'{') {
            out.extend_from_slice(&bytes[member.key_start..member.value_start]);
            let inner: Vec<&[String]> = deeper.iter().map(|(_, p)| *p).collect();
            let mut inner_matched = vec![false; inner.len()];
            rewrite_object(bytes, member.value_start, &inner, &mut inner_matched, out)?;
            for ((i, _), hit) in deeper.iter().zip(inner_matched) {
                matched[*i] |= hit;
            }
        } else {
            out.extend_from_slice(&bytes[member.key_start..member.value_end]);
        }
    }
    // The whitespace after the last member and `}`.
    let last_end = previous_end?;
    out.extend_from_slice(&bytes[last_end..=close]);
    Some(close + 1)
}

/// The members of the object starting at `start`, and the position of its `}`.
fn members(bytes: &[u8], start: usize) -> Option<(Vec<Member<'_>>, usize)> {
    let mut scanner = Scanner {
        bytes,
        at: start + 1,
    };
    let mut members = Vec::new();
    scanner.skip_ws();
    if scanner.peek()? == b'}' {
        return Some((members, scanner.at));
    }
    loop {
        scanner.skip_ws();
        let key_start = scanner.at;
        if scanner.peek()? != b'"' {
            return None;
        }
        let key_end = scanner.skip_value()?;
        let raw = &bytes[key_start + 1..key_end - 1];
        let key = if raw.contains(&b'\\') {
            Cow::Owned(serde_json::from_slice::<String>(&bytes[key_start..key_end]).ok()?)
        } else {
            Cow::Borrowed(std::str::from_utf8(raw).ok()?)
        };
        scanner.skip_ws();
        if scanner.peek()? != b':' {
            return None;
        }
        scanner.at += 1;
        scanner.skip_ws();
        let value_start = scanner.at;
        let value_end = scanner.skip_value()?;
        members.push(Member {
            key_start,
            key,
            value_start,
            value_end,
        });
        scanner.skip_ws();
        match scanner.peek()? {
            b',' => scanner.at += 1,
            b'}' => return Some((members, scanner.at)),
            _ => return None,
        }
    }
}

/// A forward reader over JSON text that finds where values end.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Moves past the value at the current position; returns where it ends.
    fn skip_value(&mut self) -> Option<usize> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' | b'[' => {
                // Nesting is counted, not recursed, so depth costs no stack.
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                return Some(self.at);
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                // A number, `true`, `false` or `null`: up to the next delimiter.
                let start = self.at;
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r' | b':') {
                        break;
                    }
                    self.at += 1;
                }
                (self.at > start).then_some(self.at)
            }
        }
    }

    fn skip_string(&mut self) -> Option<usize> {
        self.at += 1;
        loop {
            match self.peek()? {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    return Some(self.at);
                }
                _ => self.at += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn paths(list: &[&str]) -> Vec<JsonPath> {
        list.iter().map(|p| p.parse().unwrap()).collect()
    }

    fn text(body: &[u8], list: &[&str]) -> Option<(String, Vec<String>)> {
        redact(body, &paths(list)).map(|r| (String::from_utf8(r.body).unwrap(), r.removed))
    }

    #[test]
    fn removes_the_member_and_keeps_every_other_byte() {
        let body = br#"{ "build" : {"id":1, "env" :{"TOKEN":"s3cret"},"n":2.50},
  "pipeline":{"env":{"A":"b"}, "slug":"web"} }"#;
        let (out, removed) = text(body, &["pipeline.env", "build.env"]).unwrap();
        assert_eq!(
            out,
            r#"{ "build" : {"id":1,"n":2.50},
  "pipeline":{"slug":"web"} }"#
        );
        assert_eq!(removed, ["pipeline.env", "build.env"]);
    }

    #[test]
    fn first_middle_last_and_only_members() {
        for (body, path, expected) in [
            (r#"{"a":1,"b":2,"c":3}"#, "a", r#"{"b":2,"c":3}"#),
            (r#"{"a":1,"b":2,"c":3}"#, "b", r#"{"a":1,"c":3}"#),
            (r#"{"a":1,"b":2,"c":3}"#, "c", r#"{"a":1,"b":2}"#),
            // The whitespace on both sides of the only member is kept.
            (r#"{ "a" : [1,{"x":"}"}] }"#, "a", r#"{  }"#),
            (r#"{"o":{"a":1}}"#, "o.a", r#"{"o":{}}"#),
        ] {
            assert_eq!(
                text(body.as_bytes(), &[path]).unwrap().0,
                expected,
                "{body} - {path}"
            );
        }
        // Two neighbours, and the last two, at once.
        assert_eq!(
            text(br#"{"a":1,"b":2,"c":3}"#, &["b", "c"]).unwrap().0,
            r#"{"a":1}"#
        );
        assert_eq!(
            text(br#"{"a":1,"b":2,"c":3}"#, &["a", "b"]).unwrap().0,
            r#"{"c":3}"#
        );
    }

    #[test]
    fn escaped_and_repeated_keys_are_matched_as_json_reads_them() {
        let body = br#"{"p\u0069peline":{"env":1},"pipeline":{"env":2,"k":3}}"#;
        let (out, _) = text(body, &["pipeline.env"]).unwrap();
        assert_eq!(out, r#"{"p\u0069peline":{},"pipeline":{"k":3}}"#);
    }

    #[test]
    fn nothing_to_remove_is_none() {
        for body in [
            &br#"{"pipeline":{"slug":"web"}}"#[..],
            br#"{"pipeline":[{"env":1}]}"#,
            br#"{"pipeline":"env"}"#,
            br#"[{"pipeline":{"env":1}}]"#,
            b"not json",
            br#"{"pipeline":{"env":1}"#,
            b"",
        ] {
            assert_eq!(text(body, &["pipeline.env"]), None, "{body:?}");
        }
        assert_eq!(text(br#"{"a":1}"#, &[]), None);
    }

    #[test]
    fn the_result_is_the_parsed_body_without_the_members() {
        let body = br#"{"event":"build.finished","build":{"env":{"T":"x"},"pipeline":{"env":{},"slug":"s"},"number":7},"pipeline":{"env":{"K":"v"}},"sender":{"name":"a"}}"#;
        let out = redact(
            body,
            &paths(&["pipeline.env", "build.env", "build.pipeline.env"]),
        )
        .unwrap();
        let mut expected: Value = serde_json::from_slice(body).unwrap();
        expected["build"].as_object_mut().unwrap().remove("env");
        expected["build"]["pipeline"]
            .as_object_mut()
            .unwrap()
            .remove("env");
        expected["pipeline"].as_object_mut().unwrap().remove("env");
        let got: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(got, expected);
        assert_eq!(got["build"]["number"], json!(7));
    }

    #[test]
    fn paths_are_validated() {
        assert_eq!("".parse::<JsonPath>(), Err(PathError::Empty));
        assert!(matches!(
            "a..b".parse::<JsonPath>(),
            Err(PathError::EmptySegment(_))
        ));
        assert_eq!("a.b".parse::<JsonPath>().unwrap().to_string(), "a.b");
    }
}
