//! Processors sharing one consumer group: which partitions each owns now, and how far the
//! group has folded its input over them, as their metrics say.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::processor::Processor;
use crate::wait::wait_until;

/// Input offsets committed by `processors`, over the partitions each owns (and is not
/// restoring) right now; a stopped or exited one owns nothing. A partition in two
/// processors' metrics mid-rebalance counts with the larger offset.
pub async fn committed_by(processors: &[&Processor]) -> BTreeMap<i32, i64> {
    let mut owned = BTreeMap::new();
    for processor in processors {
        if let Ok(offsets) = processor.owned_offsets().await {
            for (partition, offset) in offsets {
                let at: &mut i64 = owned.entry(partition).or_default();
                *at = (*at).max(offset);
            }
        }
    }
    owned
}

/// Waits until `check` holds for [`committed_by`] of `processors`, failing early if one
/// exits; returns the offsets it held for. A failure shows every processor's log.
pub async fn wait_owned(
    what: &str,
    processors: &mut [&mut Processor],
    timeout: Duration,
    check: impl Fn(&BTreeMap<i32, i64>) -> bool,
) -> Result<BTreeMap<i32, i64>> {
    let owned = wait_until(what, timeout, async || {
        for processor in processors.iter_mut() {
            processor.process.fail_if_exited()?;
        }
        let refs: Vec<&Processor> = processors.iter().map(|p| &**p).collect();
        let owned = committed_by(&refs).await;
        Ok(check(&owned).then_some(owned))
    })
    .await;
    let Err(e) = owned else {
        return owned;
    };
    let refs: Vec<&Processor> = processors.iter().map(|p| &**p).collect();
    let now = committed_by(&refs).await;
    let logs: Vec<String> = refs.iter().map(|p| p.process.output()).collect();
    Err(anyhow!(
        "{e:#}; owned offsets {now:?}\n{}",
        logs.join("\n----\n")
    ))
}
