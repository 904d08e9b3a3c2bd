//! Batch lanes: the items of every batch of one caller share one lane of
//! `limits.batch_concurrency` places, so a caller sending many batches at
//! once (each up to `limits.max_batch` KMS calls or RSA signatures) has no
//! more backend work in flight than one batch would, and the requests of
//! other callers wait behind a handful of its items, not all of them. A
//! caller is its uid or its gid, as the connection limits count it
//! ([`crate::policy::Principal`]); the places are handed out in turn
//! (tokio's semaphore is fair).

use crate::policy::Principal;
use futures_util::{Stream, StreamExt};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

#[derive(Debug)]
pub struct Lanes {
    width: usize,
    /// One lane per caller the rules name (so their number is bounded).
    lanes: Mutex<HashMap<Principal, Arc<Semaphore>>>,
}

impl Lanes {
    pub fn new(width: usize) -> Self {
        Self {
            width: width.max(1),
            lanes: Mutex::new(HashMap::new()),
        }
    }

    fn lane(&self, caller: Principal) -> Arc<Semaphore> {
        let mut lanes = self.lanes.lock().expect("the lanes lock is never poisoned");
        (lanes.entry(caller))
            .or_insert_with(|| Arc::new(Semaphore::new(self.width)))
            .clone()
    }

    /// `calls` in their order, each run once it has a place in `caller`'s
    /// lane (futures are lazy: made by the caller, run as this polls them).
    pub fn run<F>(&self, caller: Principal, calls: Vec<F>) -> impl Stream<Item = F::Output> + use<F>
    where
        F: Future,
    {
        let lane = self.lane(caller);
        let width = self.width;
        futures_util::stream::iter(calls.into_iter().map(move |call| {
            let lane = lane.clone();
            async move {
                let _place = lane.acquire_owned().await.expect("a lane is never closed");
                call.await
            }
        }))
        .buffered(width)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_callers_batches_share_one_lane_and_others_have_their_own() {
        let lanes = Arc::new(Lanes::new(4));
        let running = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let most = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let batch = |who: usize, caller: Principal| {
            let (lanes, running, most) = (lanes.clone(), running.clone(), most.clone());
            tokio::spawn(async move {
                let calls: Vec<_> = (0..16)
                    .map(|i| {
                        let (running, most) = (running.clone(), most.clone());
                        async move {
                            let now = running[who].fetch_add(1, Ordering::SeqCst) + 1;
                            most[who].fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            running[who].fetch_sub(1, Ordering::SeqCst);
                            i
                        }
                    })
                    .collect();
                lanes.run(caller, calls).collect::<Vec<_>>().await
            })
        };
        // Four batches of one caller at once, and one of another.
        let mine: Vec<_> = (0..4).map(|_| batch(0, Principal::Uid(1000))).collect();
        let theirs = batch(1, Principal::Gid(2000));
        for b in mine {
            assert_eq!(b.await.unwrap(), (0..16).collect::<Vec<_>>(), "in order");
        }
        theirs.await.unwrap();
        assert_eq!(
            most[0].load(Ordering::SeqCst),
            4,
            "four batches, one lane of 4"
        );
        assert_eq!(
            most[1].load(Ordering::SeqCst),
            4,
            "the other caller's own lane"
        );
    }
}
