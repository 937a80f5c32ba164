//! The restore's writer thread: applies every restoring partition's replayed writes to its
//! store, in the order they come, while the restore thread goes on reading. Reading and
//! writing each take most of a core at full speed, so overlapping them is most of a
//! restore's speed; the writer works in bursts (it sorts 32 MiB of states into a table file
//! at a time), and a few writes of room keep the reader going meanwhile, bounding the memory
//! at [`WRITES_AHEAD`] × `MAX_PENDING` states.
//!
//! Invariant: a store's position (next offset, marker) is written once, at [`Job::Finish`]:
//! until then the restore flag marks the store as unfinished, and a crash wipes it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::time::{Duration, Instant};

use super::Command;
use crate::changelog::Write;
use crate::store::{PartitionStore, RestoreWriter, StoreError};

/// Writes (of up to `hookfold_state::changelog::MAX_PENDING` states each) the reader may be
/// ahead of the writer.
pub const WRITES_AHEAD: usize = 4;

pub enum Job {
    /// Start writing into `store`.
    Begin {
        partition: i32,
        store: Arc<PartitionStore>,
    },
    Write {
        partition: i32,
        write: Write,
    },
    /// Write what is gathered, flush, and move the store to `position`; answer with
    /// [`Done`].
    Finish {
        partition: i32,
        position: Option<(i64, i64)>,
    },
    /// Forget the partition (its restore was cancelled) and close its store here.
    Drop {
        partition: i32,
    },
}

/// A partition's writes are all in its store.
pub struct Done {
    pub partition: i32,
    /// Time spent writing, and in the final flush.
    pub result: Result<(Duration, Duration), StoreError>,
}

struct Writing {
    writer: RestoreWriter<Arc<PartitionStore>>,
    spent: Duration,
    /// The first failed write: the rest of the partition's writes are ignored, and the
    /// error is its answer.
    failed: Option<StoreError>,
}

/// The channel the restore thread hands jobs through.
pub fn channel() -> (SyncSender<Job>, Receiver<Job>) {
    std::sync::mpsc::sync_channel(WRITES_AHEAD)
}

/// Serves jobs until the channel closes; answers into the restore thread's inbox.
pub fn run(jobs: Receiver<Job>, done: Sender<Command>) {
    let mut writing: HashMap<i32, Writing> = HashMap::new();
    for job in jobs {
        match job {
            Job::Begin { partition, store } => {
                writing.insert(
                    partition,
                    Writing {
                        writer: RestoreWriter::new(store),
                        spent: Duration::ZERO,
                        failed: None,
                    },
                );
            }
            Job::Write { partition, write } => {
                let Some(w) = writing.get_mut(&partition) else {
                    continue;
                };
                if w.failed.is_some() {
                    continue;
                }
                let started = Instant::now();
                let written = match write {
                    Write::Clear => w.writer.clear(),
                    // The position is written once, at the end (module header).
                    Write::States { states, .. } => w.writer.write(states),
                };
                w.spent += started.elapsed();
                w.failed = written.err();
            }
            Job::Finish {
                partition,
                position,
            } => {
                let Some(w) = writing.remove(&partition) else {
                    continue;
                };
                let result = finish(w, position);
                let _ = done.send(Command::Written(Done { partition, result }));
            }
            Job::Drop { partition } => {
                writing.remove(&partition);
                let _ = done.send(Command::Dropped { partition });
            }
        }
    }
}

fn finish(w: Writing, position: Option<(i64, i64)>) -> Result<(Duration, Duration), StoreError> {
    if let Some(e) = w.failed {
        return Err(e);
    }
    let started = Instant::now();
    let store = w.writer.finish()?;
    let writing = w.spent + started.elapsed();
    let started = Instant::now();
    store.finish_restore([], position)?;
    Ok((writing, started.elapsed()))
}
