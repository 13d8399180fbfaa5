//! A per-provider circuit breaker: closed → open after `LLM_CB_FAILURE_THRESHOLD` consecutive
//! provider failures; open → half-open once `LLM_CB_RESET_TIMEOUT` has passed; half-open lets
//! one probe through at a time, and `LLM_CB_SUCCESS_THRESHOLD` successful probes close it
//! again while one failed probe re-opens it. An open circuit refuses without calling upstream.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use portico_limiter::Clock;
use prometheus_client::metrics::gauge::Gauge;

/// What operators see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    /// `closed`, `half_open` or `open`: readiness's `circuitBreaker` (docs/CONTRACT.md §6).
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }

    /// The `circuit_breaker_state` value: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until_micros: u64 },
    HalfOpen { probing: bool, successes: u32 },
}

/// The breaker's settings.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub failures: u32,
    pub reset: Duration,
    pub successes: u32,
}

/// One provider's breaker.
#[derive(Debug)]
pub struct Breaker {
    thresholds: Thresholds,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    /// `circuit_breaker_state{name}`.
    gauge: Gauge,
    /// `dependency_up{dependency="llm:<name>"}`: 1 only while closed. Open and half-open are
    /// both 0: the provider is not known to answer until a probe has closed the circuit again.
    up: Gauge,
}

/// Leave to make one upstream call; say how it went with [`Permit::record`]. A permit dropped
/// without a verdict (the caller went away) frees the half-open probe slot.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: bool,
}

/// How one upstream call went, as far as the provider's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The provider answered (including a refusal of the caller's request).
    Healthy,
    /// 5xx, 429, a timeout, a broken connection or stream, a bad key.
    Failed,
}

impl Breaker {
    /// A closed breaker that keeps `gauge` (the circuit state) and `up` (the provider's
    /// `dependency_up`) equal to its state as it changes, with no probe of its own.
    pub fn new(thresholds: Thresholds, clock: Arc<dyn Clock>, gauge: Gauge, up: Gauge) -> Self {
        let breaker = Self {
            thresholds,
            clock,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            gauge,
            up,
        };
        breaker.publish(State::Closed);
        breaker
    }

    fn publish(&self, state: State) {
        self.gauge.set(state.gauge_value());
        self.up.set(i64::from(state == State::Closed));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state as of now (an open circuit whose reset has passed reads half-open).
    pub fn state(&self) -> State {
        let now = self.clock.now_micros();
        let state = match *self.lock() {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { until_micros } if now >= until_micros => State::HalfOpen,
            Inner::Open { .. } => State::Open,
            Inner::HalfOpen { .. } => State::HalfOpen,
        };
        self.publish(state);
        state
    }

    /// A permit, or how long until the circuit lets a call through.
    pub fn acquire(self: &Arc<Self>) -> Result<Permit, Duration> {
        let now = self.clock.now_micros();
        let mut inner = self.lock();
        let probe = match &mut *inner {
            Inner::Closed { .. } => false,
            Inner::Open { until_micros } if now < *until_micros => {
                return Err(Duration::from_micros(*until_micros - now));
            }
            Inner::Open { .. } => {
                *inner = Inner::HalfOpen {
                    probing: true,
                    successes: 0,
                };
                self.publish(State::HalfOpen);
                true
            }
            Inner::HalfOpen { probing: true, .. } => {
                // One probe at a time; the others are refused as if open, briefly.
                return Err(Duration::from_secs(1));
            }
            Inner::HalfOpen { probing, .. } => {
                *probing = true;
                true
            }
        };
        Ok(Permit {
            breaker: Arc::clone(self),
            probe,
            settled: false,
        })
    }

    fn settle(&self, probe: bool, verdict: Option<Verdict>) {
        let now = self.clock.now_micros();
        let mut inner = self.lock();
        let open = Inner::Open {
            until_micros: now + self.thresholds.reset.as_micros() as u64,
        };
        let next = match (&*inner, verdict) {
            (Inner::Closed { .. }, Some(Verdict::Healthy)) => Inner::Closed { failures: 0 },
            (Inner::Closed { failures }, Some(Verdict::Failed)) => {
                if failures + 1 >= self.thresholds.failures {
                    tracing::warn!(failures = failures + 1, "circuit opened");
                    open
                } else {
                    Inner::Closed {
                        failures: failures + 1,
                    }
                }
            }
            (Inner::HalfOpen { successes, .. }, Some(Verdict::Healthy)) if probe => {
                if successes + 1 >= self.thresholds.successes {
                    tracing::info!("circuit closed after a successful probe");
                    Inner::Closed { failures: 0 }
                } else {
                    Inner::HalfOpen {
                        probing: false,
                        successes: successes + 1,
                    }
                }
            }
            (Inner::HalfOpen { .. }, Some(Verdict::Failed)) if probe => {
                tracing::warn!("half-open probe failed; circuit re-opened");
                open
            }
            (Inner::HalfOpen { successes, .. }, None) if probe => Inner::HalfOpen {
                probing: false,
                successes: *successes,
            },
            // A call admitted while closed that ends after the circuit opened changes nothing.
            _ => return,
        };
        self.publish(match next {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { .. } => State::Open,
            Inner::HalfOpen { .. } => State::HalfOpen,
        });
        *inner = next;
    }
}

impl Permit {
    /// Records how the call went.
    pub fn record(mut self, verdict: Verdict) {
        self.settled = true;
        self.breaker.settle(self.probe, Some(verdict));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle(self.probe, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use portico_limiter::ManualClock;

    use super::*;

    fn breaker(clock: &Arc<ManualClock>) -> Arc<Breaker> {
        Arc::new(Breaker::new(
            Thresholds {
                failures: 3,
                reset: Duration::from_secs(30),
                successes: 1,
            },
            clock.clone(),
            Gauge::default(),
            Gauge::default(),
        ))
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let clock = ManualClock::new(1_000_000);
        let b = breaker(&clock);
        for _ in 0..2 {
            b.acquire().expect("closed").record(Verdict::Failed);
        }
        // A success resets the count: failures must be consecutive.
        b.acquire().expect("closed").record(Verdict::Healthy);
        for _ in 0..2 {
            b.acquire().expect("closed").record(Verdict::Failed);
        }
        assert_eq!(b.state(), State::Closed);
        b.acquire().expect("closed").record(Verdict::Failed);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.acquire().expect_err("open"), Duration::from_secs(30));
    }

    #[test]
    fn the_up_gauge_is_1_only_while_closed() {
        let clock = ManualClock::new(1_000_000);
        let (state, up) = (Gauge::default(), Gauge::default());
        let b = Arc::new(Breaker::new(
            Thresholds {
                failures: 2,
                reset: Duration::from_secs(30),
                successes: 1,
            },
            clock.clone(),
            state.clone(),
            up.clone(),
        ));
        assert_eq!((state.get(), up.get()), (0, 1));
        b.acquire().expect("closed").record(Verdict::Failed);
        assert_eq!(up.get(), 1, "one failure is not down");
        b.acquire().expect("closed").record(Verdict::Failed);
        assert_eq!(
            (state.get(), up.get()),
            (2, 0),
            "open is down, with no read of the state"
        );
        clock.advance(Duration::from_secs(30));
        let probe = b.acquire().expect("probe");
        assert_eq!((state.get(), up.get()), (1, 0), "half-open is not up yet");
        probe.record(Verdict::Healthy);
        assert_eq!((state.get(), up.get()), (0, 1));
    }

    #[test]
    fn half_open_admits_one_probe_and_its_verdict_decides() {
        let clock = ManualClock::new(1_000_000);
        let b = breaker(&clock);
        for _ in 0..3 {
            b.acquire().expect("closed").record(Verdict::Failed);
        }
        clock.advance(Duration::from_secs(30));
        assert_eq!(b.state(), State::HalfOpen);
        let probe = b.acquire().expect("probe");
        assert!(b.acquire().is_err(), "a second caller waits for the probe");
        probe.record(Verdict::Failed);
        assert_eq!(b.state(), State::Open);

        clock.advance(Duration::from_secs(30));
        // A probe whose caller went away frees the slot without a verdict.
        drop(b.acquire().expect("probe"));
        assert_eq!(b.state(), State::HalfOpen);
        b.acquire().expect("probe").record(Verdict::Healthy);
        assert_eq!(b.state(), State::Closed);
    }
}
