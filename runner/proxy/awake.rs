//! How long the proxy's thread keeps polling after a wake-up before it
//! sleeps again: a window that adapts to the traffic, as the kernel's guest
//! halt-polling adapts its own.
//!
//! A relayed request's answer often comes back a few hundred microseconds
//! after the proxy forwarded it. A thread that is still running when it
//! arrives needs no wake-up; one that slept needs a cross-CPU wake-up,
//! which on a VM costs more than the relaying itself. Keeping the thread
//! awake costs CPU, so the window only grows while the events it missed
//! came soon after it slept, and closes when one comes late
//! (a remote server, an idle task).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The first window after a miss, in microseconds.
const START_US: u64 = 50;
/// The longest window, in microseconds. A sleep longer than this would not
/// have been saved by any window, so it shrinks the window.
const MAX_US: u64 = 500;

/// The window after a sleep of `slept_us` that followed a window of `us`
/// (both in microseconds): doubled (from [`START_US`], at most [`MAX_US`])
/// when the sleep was short enough that a longer window would have caught
/// the event, closed when it was not. (Halving instead kept the window
/// open against a server that answers late: each of its connections has
/// one late event, the answer, and two or three early ones, the closes
/// and the next connection, which doubled it back.)
pub(super) fn next(us: u64, slept_us: u64) -> u64 {
    if slept_us <= MAX_US {
        (us * 2).clamp(START_US, MAX_US)
    } else {
        0
    }
}

/// The window, shared between the runtime's park and unpark hooks (which
/// adapt it) and the task that keeps the thread awake (which reads it).
#[derive(Debug)]
pub(super) struct Window {
    base: Instant,
    /// Nanoseconds after `base` when the thread last went to sleep.
    parked_at: AtomicU64,
    /// The current window, in microseconds.
    us: AtomicU64,
}

impl Window {
    pub(super) fn new() -> Self {
        Self {
            base: Instant::now(),
            parked_at: AtomicU64::new(0),
            us: AtomicU64::new(START_US),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The thread is about to sleep: the window ran out without an event.
    pub(super) fn parked(&self) {
        self.parked_at.store(self.now_ns(), Ordering::Relaxed);
    }

    /// The thread woke: adapt the window to how long it slept.
    pub(super) fn unparked(&self) {
        let slept_us = self
            .now_ns()
            .saturating_sub(self.parked_at.load(Ordering::Relaxed))
            / 1000;
        let us = self.us.load(Ordering::Relaxed);
        self.us.store(next(us, slept_us), Ordering::Relaxed);
    }

    /// How long to stay awake now.
    pub(super) fn current(&self) -> Duration {
        Duration::from_micros(self.us.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_sleep_grows_the_window_up_to_the_cap() {
        assert_eq!(next(0, 10), START_US);
        assert_eq!(next(START_US, 10), 2 * START_US);
        assert_eq!(next(200, MAX_US), 400);
        assert_eq!(next(400, 1), MAX_US);
        assert_eq!(next(MAX_US, 1), MAX_US);
    }

    #[test]
    fn a_long_sleep_closes_the_window() {
        assert_eq!(next(MAX_US, MAX_US + 1), 0);
        assert_eq!(next(START_US, 10 * MAX_US), 0);
        assert_eq!(next(0, 10 * MAX_US), 0);
    }

    #[test]
    fn a_server_that_answers_late_keeps_the_window_small() {
        // Per connection: the answer after a long sleep, then the two
        // closes and the next connection soon after.
        let mut us = MAX_US;
        let mut spun = 0;
        for _ in 0..100 {
            us = next(us, 5000);
            for _ in 0..3 {
                spun += us;
                us = next(us, 20);
            }
            spun += us;
        }
        assert!(us <= 4 * START_US, "{us}");
        assert!(
            spun / 100 <= 8 * START_US,
            "{} µs per connection",
            spun / 100
        );
    }

    #[test]
    fn the_window_follows_how_long_the_thread_slept() {
        let w = Window::new();
        w.parked();
        w.unparked();
        assert_eq!(w.current(), Duration::from_micros(2 * START_US));
        w.parked();
        std::thread::sleep(Duration::from_micros(5 * MAX_US));
        w.unparked();
        assert_eq!(w.current(), Duration::ZERO);
    }
}
