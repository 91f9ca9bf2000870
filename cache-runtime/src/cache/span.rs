//! The debug span of each call: its function, its key and its outcome.
//!
//! A hit costs well under a microsecond, and entering, leaving and writing a
//! span nobody listens to is a measurable part of it (with `tracing`'s `log`
//! feature on, each of those steps also asks `log` whether it listens). So a
//! call's future is wrapped in its span, and its fields written, only when a
//! subscriber enabled the span.

use std::future::Future;

use futures_util::future::Either;
use tracing::instrument::Instrumented;
use tracing::{Instrument as _, Span};

/// The debug span of one call named `$op` (a literal: span names are static): its
/// function and key now, its outcome when the call ends.
macro_rules! call_span {
    ($op:literal, $policy:expr) => {
        tracing::debug_span!(target: "aside", $op, function = $policy.function_name(),
            key = tracing::field::Empty, outcome = tracing::field::Empty)
    };
}
pub(crate) use call_span;

/// `future` inside `span`, or as it is when the span is disabled. (Not an
/// `async fn`: that would hold `future` twice, before and while awaiting it.)
pub(crate) fn within<F: Future>(span: &Span, future: F) -> Either<F, Instrumented<F>> {
    if span.is_disabled() {
        Either::Left(future)
    } else {
        Either::Right(future.instrument(span.clone()))
    }
}

/// Writes `value` in the span's `field`, unless the span is disabled.
pub(crate) fn record(span: &Span, field: &str, value: impl tracing::Value) {
    if !span.is_disabled() {
        span.record(field, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// A subscriber keeping the names of the spans entered and the fields recorded.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl Visit for Seen {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.lock().unwrap().push(format!("{}={value:?}", field.name()));
        }
    }

    impl Subscriber for Seen {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, values: &Record<'_>) {
            values.record(&mut self.clone());
        }
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {}
        fn enter(&self, _: &Id) {
            self.0.lock().unwrap().push("enter".to_owned());
        }
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn a_listened_span_is_entered_and_written() {
        let seen = Seen::default();
        tracing::subscriber::with_default(seen.clone(), || {
            let policy = crate::Policy::default().function("p:f");
            let span = call_span!("get_or_compute", policy);
            let answer = block_on(within(&span, async { 42 }));
            record(&span, "outcome", "hit");
            assert_eq!(answer, 42);
        });
        let seen = seen.0.lock().unwrap().clone();
        assert!(seen.contains(&"enter".to_owned()), "{seen:?}");
        assert!(seen.contains(&"outcome=\"hit\"".to_owned()), "{seen:?}");
    }

    #[test]
    fn an_unheard_span_still_runs_the_future() {
        let policy = crate::Policy::default();
        let span = call_span!("get_or_compute", policy);
        assert!(span.is_disabled());
        assert_eq!(block_on(within(&span, async { 7 })), 7);
        record(&span, "outcome", "hit");
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(future)
    }
}
