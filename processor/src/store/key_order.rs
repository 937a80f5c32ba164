//! The order a restore writes its gathered states in: each key's last state, in key order,
//! found by a most-significant-digit radix sort over 8-byte digits of the keys.

use hookfold_state::changelog::States;

/// A state's place in a restore's gathered writes: (chunk, index) in one number, in write
/// order.
fn pack(chunk: usize, i: usize) -> u64 {
    ((chunk as u64) << 32) | i as u64
}

pub(super) fn unpack(at: u64) -> (usize, usize) {
    ((at >> 32) as usize, (at & u64::from(u32::MAX)) as usize)
}

/// The places in `chunks` of each key's last state, in key order.
///
/// Comparing keys in place costs a cache miss per comparison, and sorting that way cost
/// more than building the table file. This sorts small entries that compare in cache
/// instead: 8 bytes of the key from a depth on (starting after the prefix all keys share),
/// how many bytes the key has there, and the place; runs of keys that agree on those 8
/// bytes and go on are sorted again on the next 8 (a most-significant-digit radix sort
/// with 8-byte digits). Equal keys end up by place, the last written last.
pub(super) fn latest_in_key_order(chunks: &[States]) -> Vec<u64> {
    let key = |at: u64| {
        let (chunk, i) = unpack(at);
        chunks[chunk].key(i)
    };
    let mut order: Vec<Digit> = chunks
        .iter()
        .enumerate()
        .flat_map(|(chunk, states)| {
            (0..states.len()).map(move |i| Digit {
                bytes: 0,
                taken: 0,
                at: pack(chunk, i),
            })
        })
        .collect();
    let Some(first) = order.first().map(|d| key(d.at)) else {
        return Vec::new();
    };
    let shared = order.iter().fold(first.len(), |shared, digit| {
        first[..shared]
            .iter()
            .zip(key(digit.at))
            .take_while(|(a, b)| a == b)
            .count()
    });
    let mut latest = Vec::with_capacity(order.len());
    sort_from(&key, &mut order, shared, &mut latest);
    latest
}

/// One key's digit at a depth, for [`latest_in_key_order`]. Field order is sort order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Digit {
    /// The key's 8 bytes from the depth on, zero-padded, big-endian.
    bytes: u64,
    /// How many key bytes the digit holds, 9 if the key goes on after them: of two keys
    /// whose padded bytes agree, the shorter sorts first.
    taken: u8,
    at: u64,
}

/// Sorts `order` (keys that agree on their first `depth` bytes) by key, then place, and
/// appends the place of each key's last state to `latest`, in key order.
fn sort_from<'k>(
    key: &impl Fn(u64) -> &'k [u8],
    order: &mut [Digit],
    depth: usize,
    latest: &mut Vec<u64>,
) {
    for digit in order.iter_mut() {
        let rest = key(digit.at).get(depth..).unwrap_or_default();
        let n = rest.len().min(8);
        let mut bytes = [0u8; 8];
        bytes[..n].copy_from_slice(&rest[..n]);
        digit.bytes = u64::from_be_bytes(bytes);
        digit.taken = if rest.len() > 8 { 9 } else { n as u8 };
    }
    order.sort_unstable();
    let mut start = 0;
    while start < order.len() {
        let (bytes, taken) = (order[start].bytes, order[start].taken);
        let end = start
            + order[start..]
                .iter()
                .take_while(|d| d.bytes == bytes && d.taken == taken)
                .count();
        if taken == 9 && end - start > 1 {
            sort_from(key, &mut order[start..end], depth + 8, latest);
        } else {
            // One key, or keys that ended within the digit: equal, and by place.
            latest.push(order[end - 1].at);
        }
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_state_of_each_key_in_key_order() {
        // Keys that share prefixes of every length, are prefixes of each other, contain
        // NUL bytes and repeat; the reference is a map that keeps the last write.
        let mut seed = 7u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut chunks = vec![States::default(); 3];
        let mut reference = std::collections::BTreeMap::new();
        for i in 0..6_000 {
            let mut key = b"acme/pipeline/".to_vec();
            for _ in 0..next() % 12 {
                key.push(b"ab\0z"[(next() % 4) as usize]);
            }
            let chunk = i / 2_000;
            reference.insert(key.clone(), pack(chunk, chunks[chunk].len()));
            chunks[chunk].push(&key, Some(i.to_string().as_bytes()));
        }
        let order = latest_in_key_order(&chunks);
        assert!(order.len() < 6_000, "some keys repeat");
        assert_eq!(order, reference.into_values().collect::<Vec<_>>());
        assert!(latest_in_key_order(&[]).is_empty());
    }
}
