//! Polling until a condition holds, with a generous bound that means "stuck".

use std::time::{Duration, Instant};

/// Generous bound on anything a test waits for that should take a second or
/// two: exceeding it means something is stuck, which fails the test. Not a
/// timing assertion.
pub const STUCK: Duration = Duration::from_secs(30);

/// Waits (polling every 5 ms) until `ready()` holds.
///
/// # Panics
///
/// With `what` in the message, when it still does not hold after [`STUCK`].
///
/// ```no_run
/// # async fn demo() {
/// use std::sync::atomic::{AtomicBool, Ordering};
/// let done = AtomicBool::new(true);
/// aside_testkit::until("the task is done", || done.load(Ordering::SeqCst)).await;
/// # }
/// ```
pub async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + STUCK;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
