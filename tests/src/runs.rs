//! A processor's run as the tests compare runs: its incident records and final state; the
//! reference run a run under test must equal, and the clean stop that ends a run.
//!
//! Invariant: a run is collected only after a clean stop (SIGTERM, exit status 0). Then
//! every incident event it emitted is acked and its state is on disk, so two runs over the
//! same input compare record for record and line for line.

use std::time::Duration;

use anyhow::Result;
use rdkafka::message::OwnedMessage;

use crate::processor::{Processor, ProcessorSetup};
use crate::topics::read_all;

/// What one processor deployment produced.
pub struct Run {
    /// Every record on its incident topic, read by an independent consumer.
    pub incidents: Vec<OwnedMessage>,
    /// `hookfold-processor state`: its stored state as sorted JSON lines.
    pub state: Vec<String>,
}

/// Starts `setup` (a deployment of its own on the input under test, fully written by now),
/// waits until it has committed `records` input records (and its group stages have folded
/// what they were sent), and collects its run: what the
/// same input gives with nothing going wrong.
pub async fn reference_run(setup: ProcessorSetup, records: i64, timeout: Duration) -> Result<Run> {
    let mut processor = setup.start().await?;
    processor.wait_committed(records, timeout).await?;
    processor.wait_groups_folded(timeout).await?;
    stop_and_collect(&mut processor)
}

/// Stops `processor` cleanly and collects its run. Blocks (for the exit, the reading, the
/// state dump) in place, so that the test's other tasks, such as a load, keep running on
/// the runtime's other threads (the tests run on a multi-threaded runtime).
pub fn stop_and_collect(processor: &mut Processor) -> Result<Run> {
    tokio::task::block_in_place(|| {
        processor.stop()?;
        Ok(Run {
            incidents: read_all(&processor.bootstrap, &processor.incidents_topic)?,
            state: processor.state_dump()?,
        })
    })
}
