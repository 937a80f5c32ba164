//! Conversions between RFC 3339 text, [`time::OffsetDateTime`] and
//! `google.protobuf.Timestamp` ([`prost_types::Timestamp`]).

use prost_types::Timestamp;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Why a time cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("`{0}` is not an RFC 3339 timestamp")]
    Parse(String),
    #[error("timestamp {seconds}s {nanos}ns is outside 0001-01-01..9999-12-31 or not normalized")]
    OutOfRange { seconds: i64, nanos: i32 },
}

/// Parses RFC 3339 text (any offset) into a UTC timestamp.
pub fn parse_rfc3339(text: &str) -> Result<Timestamp, TimestampError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(from_offset_date_time)
        .map_err(|_| TimestampError::Parse(text.to_owned()))
}

/// The timestamp of an instant (the offset is dropped: timestamps are UTC).
pub fn from_offset_date_time(at: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: at.unix_timestamp(),
        // Always 0..1e9, which fits i32.
        nanos: at.nanosecond() as i32,
    }
}

/// The instant of a timestamp, in UTC.
pub fn to_offset_date_time(ts: &Timestamp) -> Result<OffsetDateTime, TimestampError> {
    let out_of_range = || TimestampError::OutOfRange {
        seconds: ts.seconds,
        nanos: ts.nanos,
    };
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(out_of_range)?;
    let at = OffsetDateTime::from_unix_timestamp(ts.seconds).map_err(|_| out_of_range())?;
    let at = at.replace_nanosecond(nanos).map_err(|_| out_of_range())?;
    if !(1..=9999).contains(&at.year()) {
        return Err(out_of_range());
    }
    Ok(at)
}

/// Formats a timestamp as proto3 JSON does: UTC, `Z` suffix, and 0, 3, 6 or 9 fractional
/// digits (e.g. `2024-11-09T13:14:33.659528Z`).
pub fn to_rfc3339(ts: &Timestamp) -> Result<String, TimestampError> {
    let at = to_offset_date_time(ts)?;
    let nanos = at.nanosecond();
    let fraction = if nanos == 0 {
        String::new()
    } else if nanos % 1_000_000 == 0 {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    };
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{fraction}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_proto3_json() {
        let cases = [
            (
                "2024-11-09T13:14:33.659528+00:00",
                "2024-11-09T13:14:33.659528Z",
            ),
            ("2021-02-03T20:34:10.486Z", "2021-02-03T20:34:10.486Z"),
            ("2025-05-16T07:36:56+02:00", "2025-05-16T05:36:56Z"),
            (
                "2025-05-16T07:36:56.000000001Z",
                "2025-05-16T07:36:56.000000001Z",
            ),
        ];
        for (input, expected) in cases {
            let ts = parse_rfc3339(input).unwrap();
            assert_eq!(to_rfc3339(&ts).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn rejects_garbage_and_out_of_range() {
        assert!(matches!(
            parse_rfc3339("yesterday"),
            Err(TimestampError::Parse(_))
        ));
        assert!(
            to_rfc3339(&Timestamp {
                seconds: 0,
                nanos: -1
            })
            .is_err()
        );
        assert!(
            to_rfc3339(&Timestamp {
                seconds: 0,
                nanos: 1_000_000_000
            })
            .is_err()
        );
        assert!(
            to_rfc3339(&Timestamp {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_err()
        );
        // Year 0 is valid for `time` but not for RFC 3339 / proto3 JSON.
        assert!(
            to_rfc3339(&Timestamp {
                seconds: -62_135_596_801,
                nanos: 0
            })
            .is_err()
        );
        assert_eq!(
            to_rfc3339(&Timestamp {
                seconds: 0,
                nanos: 0
            })
            .unwrap(),
            "1970-01-01T00:00:00Z"
        );
    }
}
