//! The refresher on tokio's paused clock: when it refreshes (70 % ± 10 %,
//! within bounds), how it backs off, what it serves meanwhile, waking,
//! rejection, polling, and the guard.

use super::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// A source whose answers the test steers: credential `n` for the n-th
/// call, living `lifetime`; failing while `fail` is set.
#[derive(Default)]
struct Script {
    fail: AtomicBool,
    replaced: AtomicBool,
    lifetime: Mutex<Option<Duration>>,
    poll: Option<Duration>,
    /// When each call came, and the credential it was given.
    calls: Mutex<Vec<(Instant, Option<u32>)>>,
}

impl Script {
    fn lasting(lifetime: Duration) -> Arc<Self> {
        Arc::new(Self {
            lifetime: Mutex::new(Some(lifetime)),
            ..Self::default()
        })
    }

    fn calls(&self) -> Vec<(Instant, Option<u32>)> {
        self.calls.lock().unwrap().clone()
    }

    /// Seconds between consecutive calls.
    fn intervals(&self) -> Vec<f64> {
        let calls = self.calls();
        calls
            .windows(2)
            .map(|w| (w[1].0 - w[0].0).as_secs_f64())
            .collect()
    }
}

struct Fake(Arc<Script>);

#[async_trait]
impl Source for Fake {
    type Credential = u32;

    async fn refresh(&self, current: Option<&u32>) -> Result<Fresh<u32>, RefreshError> {
        let n = {
            let mut calls = self.0.calls.lock().unwrap();
            calls.push((Instant::now(), current.copied()));
            calls.len() as u32
        };
        if self.0.fail.load(Ordering::SeqCst) {
            return Err(RefreshError(format!("attempt {n} failed")));
        }
        let lifetime = *self.0.lifetime.lock().unwrap();
        Ok(Fresh {
            credential: n,
            expires: lifetime.map(|l| SystemTime::now() + l),
        })
    }

    fn poll_every(&self) -> Option<Duration> {
        self.0.poll
    }

    async fn replaced(&self, _current: &u32) -> bool {
        self.0.replaced.swap(false, Ordering::SeqCst)
    }
}

const SCHEDULE: Schedule = Schedule {
    min: Duration::from_secs(1),
    max: Duration::from_secs(3600),
    retry: Duration::from_secs(1),
    retry_max: Duration::from_secs(30),
};

fn start(script: &Arc<Script>, schedule: Schedule) -> (Refresher<u32>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let refresher = Refresher::spawn("b", Fake(script.clone()), schedule, metrics.clone());
    (refresher, metrics)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Lets the paused clock run `d` (the refresh task runs at its times).
async fn run_for(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Waits (on the paused clock, in 1 ms steps) until the source was
/// called `n` times, and says how long that took.
async fn until_calls(script: &Script, n: usize) -> Duration {
    let started = Instant::now();
    while script.calls().len() < n {
        assert!(started.elapsed() < secs(3600), "{:?}", script.calls());
        run_for(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

#[test]
fn the_schedule_keeps_to_its_bounds() {
    for _ in 0..1000 {
        let at = SCHEDULE.refresh_in(Some(secs(100))).as_secs_f64();
        assert!((63.0..=77.0).contains(&at), "{at}");
        assert_eq!(SCHEDULE.refresh_in(Some(secs(100_000))), secs(3600));
        assert_eq!(
            SCHEDULE.refresh_in(Some(Duration::from_millis(10))),
            secs(1)
        );
        let forever = SCHEDULE.refresh_in(None).as_secs_f64();
        assert!(
            (3240.0..=3600.0).contains(&forever),
            "at max, jittered: {forever}"
        );
        let first = SCHEDULE.retry_in(1).as_secs_f64();
        assert!((0.8..=1.2).contains(&first), "{first}");
        assert!(SCHEDULE.retry_in(40) <= secs(30));
    }
}

#[tokio::test(start_paused = true)]
async fn refreshes_at_seventy_percent_of_the_lifetime_with_jitter() {
    let script = Script::lasting(secs(1000));
    let (refresher, metrics) = start(&script, SCHEDULE);
    assert_eq!(refresher.ready(), Err(NotReady::NotYet));
    refresher.first_refresh(secs(5)).await;
    assert_eq!(refresher.current().as_deref(), Some(&1));
    run_for(secs(20_000)).await;
    let intervals = script.intervals();
    assert!(intervals.len() >= 25, "{intervals:?}");
    for i in &intervals {
        // 70 % ± 10 % of it; the lifetime is a few µs short of 1000 s
        // by the time it is installed (wall-clock time runs on).
        assert!((629.9..=770.0).contains(i), "{intervals:?}");
    }
    assert!(
        intervals.iter().any(|i| (i - 700.0).abs() > 1.0),
        "jittered: {intervals:?}"
    );
    // Each refresh is handed the credential it replaces.
    for (n, (_, current)) in script.calls().iter().enumerate() {
        assert_eq!(*current, (n > 0).then_some(n as u32));
    }
    let refreshes = script.calls().len() as u64;
    let ok = metrics.credential_refresh.with_label_values(&["b", "ok"]);
    assert_eq!(ok.get(), refreshes);
    let expiry = metrics.credential_expiry.with_label_values(&["b"]).get();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now + 900.0, "{expiry} vs {now}");
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_with_jitter() {
    let script = Script::lasting(secs(1000));
    script.fail.store(true, Ordering::SeqCst);
    let (refresher, metrics) = start(&script, SCHEDULE);
    run_for(secs(300)).await;
    let intervals = script.intervals();
    assert!(intervals.len() >= 10, "{intervals:?}");
    for (k, i) in intervals.iter().enumerate() {
        let expected = (1u64 << k.min(10)).min(30) as f64;
        let low = expected * 0.8 - 0.001;
        let high = (expected * 1.2).min(30.0);
        assert!((low..=high).contains(i), "wait {k}: {intervals:?}");
    }
    assert!(
        intervals
            .iter()
            .enumerate()
            .any(|(k, i)| (i - (1u64 << k.min(10)).min(30) as f64).abs() > 0.01),
        "jittered: {intervals:?}"
    );
    let errors = metrics
        .credential_refresh
        .with_label_values(&["b", "error"]);
    assert_eq!(errors.get(), script.calls().len() as u64);
    let last = format!("attempt {} failed", script.calls().len());
    assert_eq!(refresher.ready(), Err(NotReady::Failed(last.clone())));
    assert_eq!(refresher.last_error(), Some(last));
}

#[tokio::test(start_paused = true)]
async fn the_last_good_credential_serves_until_it_expires() {
    let script = Script::lasting(secs(100));
    let schedule = Schedule {
        retry: secs(5),
        retry_max: secs(5),
        ..SCHEDULE
    };
    let (refresher, _metrics) = start(&script, schedule);
    refresher.first_refresh(secs(5)).await;
    script.fail.store(true, Ordering::SeqCst);
    // The refresh near 70 s fails, and so do the retries.
    run_for(secs(90)).await;
    assert!(script.calls().len() >= 3, "{:?}", script.calls());
    assert!(refresher.last_error().is_some());
    assert_eq!(refresher.current().as_deref(), Some(&1), "kept while valid");
    assert!(refresher.ready().is_ok());
    // Expired: none, not ready, saying why.
    run_for(secs(11)).await;
    assert_eq!(refresher.current(), None);
    let why = refresher.ready().unwrap_err();
    assert!(
        matches!(&why, NotReady::Failed(f) if f.ends_with("failed")),
        "{why:?}"
    );
    // The next retry succeeds.
    script.fail.store(false, Ordering::SeqCst);
    run_for(secs(6)).await;
    assert!(refresher.current().is_some());
    assert_eq!(refresher.last_error(), None);
}

#[tokio::test(start_paused = true)]
async fn a_credential_expiring_before_the_lower_bound_is_not_ready_once_expired() {
    let script = Script::lasting(secs(10));
    let schedule = Schedule {
        min: secs(60),
        ..SCHEDULE
    };
    let (refresher, _metrics) = start(&script, schedule);
    refresher.first_refresh(secs(5)).await;
    run_for(secs(30)).await;
    assert_eq!(script.calls().len(), 1, "no refresh before `min`");
    assert_eq!(refresher.ready(), Err(NotReady::Expired));
    assert_eq!(refresher.current(), None);
    // A caller that needs one gets it at once.
    let started = Instant::now();
    assert_eq!(refresher.refreshed().await.as_deref(), Ok(&2));
    assert!(started.elapsed() < secs(1));
}

#[tokio::test(start_paused = true)]
async fn waking_refreshes_at_once() {
    let script = Script::lasting(secs(3600));
    let (refresher, _metrics) = start(&script, SCHEDULE);
    refresher.first_refresh(secs(5)).await;
    refresher.wake();
    let took = until_calls(&script, 2).await;
    assert!(took < secs(1), "woken, not due (~2520 s): {took:?}");
    assert_eq!(refresher.current().as_deref(), Some(&2));

    // A rejected credential is dropped at once, saying why, and
    // replaced at once; rejecting an old one does nothing.
    let rejected = refresher.current().unwrap();
    assert!(refresher.reject(&rejected, "HTTP 403"));
    assert_eq!(refresher.current(), None);
    assert_eq!(
        refresher.ready(),
        Err(NotReady::Rejected {
            why: "HTTP 403".into(),
            failed: None
        })
    );
    let took = until_calls(&script, 3).await;
    assert!(took < secs(1), "{took:?}");
    assert_eq!(script.calls()[2].1, None, "not handed the rejected one");
    assert_eq!(refresher.current().as_deref(), Some(&3));
    assert!(!refresher.reject(&rejected, "late"));
    assert_eq!(refresher.current().as_deref(), Some(&3));

    // Waking cuts a backoff short too.
    script.fail.store(true, Ordering::SeqCst);
    let current = refresher.current().unwrap();
    refresher.reject(&current, "HTTP 401");
    until_calls(&script, 4).await;
    let why = refresher.ready().unwrap_err();
    assert!(
        matches!(
            &why,
            NotReady::Rejected {
                failed: Some(_),
                ..
            }
        ),
        "{why:?}"
    );
    assert!(why.to_string().contains("HTTP 401"), "{why}");
    script.fail.store(false, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(refresher.refreshed().await.as_deref(), Ok(&5));
    assert!(started.elapsed() < secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_credential_is_refused_runs_once_more_with_a_new_one() {
    let script = Script::lasting(secs(3600));
    let (refresher, _metrics) = start(&script, SCHEDULE);
    refresher.first_refresh(secs(5)).await;
    // The KMS refuses credential 1 only: the call is made again with 2.
    let handle = refresher.handle();
    let call = || async {
        handle
            .current()
            .map(|c| *c)
            .filter(|c| *c != 1)
            .ok_or("401")
    };
    let refused = |e: &&str| (*e == "401").then(|| "HTTP 401".to_owned());
    assert_eq!(refresher.call_rejecting(call, refused).await, Ok(Ok(2)));
    assert_eq!(script.calls().len(), 2);
    // Another error is the call's own: no rejection, no second attempt.
    let calls = std::sync::atomic::AtomicU32::new(0);
    let failing = || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err::<u32, &str>("500")
    };
    assert_eq!(
        refresher.call_rejecting(failing, refused).await,
        Ok(Err("500"))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(refresher.current().as_deref(), Some(&2));
    // Refused again while no new credential can be had: the refusal stands.
    script.fail.store(true, Ordering::SeqCst);
    let always = || async { Err::<u32, &str>("401") };
    assert_eq!(
        refresher.call_rejecting(always, refused).await,
        Ok(Err("401"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_polled_source_is_refreshed_when_its_credential_was_replaced() {
    let script = Arc::new(Script {
        lifetime: Mutex::new(Some(secs(3600))),
        poll: Some(secs(5)),
        ..Script::default()
    });
    let (refresher, _metrics) = start(&script, SCHEDULE);
    refresher.first_refresh(secs(5)).await;
    run_for(secs(60)).await;
    assert_eq!(script.calls().len(), 1, "polled, not replaced");
    script.replaced.store(true, Ordering::SeqCst);
    let took = until_calls(&script, 2).await;
    assert!(took <= secs(5), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_guard_stops_the_task() {
    let script = Script::lasting(secs(10));
    let (refresher, _metrics) = start(&script, SCHEDULE);
    refresher.first_refresh(secs(5)).await;
    let handle = refresher.handle();
    drop(refresher);
    run_for(secs(3600)).await;
    assert_eq!(script.calls().len(), 1);
    assert_eq!(
        Arc::strong_count(&script),
        1,
        "the task and its source are gone"
    );
    // A handle outlives the task: no credential, no hang.
    assert_eq!(handle.current(), None);
    assert_eq!(handle.refreshed().await, Err(NotReady::Expired));
}
