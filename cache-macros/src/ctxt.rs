//! The error context: every mistake found while checking, reported together
//! (serde_derive's `internals/ctxt.rs`).

use std::cell::RefCell;
use std::fmt::Display;

use proc_macro2::Span;

/// Collects errors. It must be finished with [`Ctxt::check`]: dropping it
/// unchecked is a bug of the macro, and panics, so no error is ever lost.
pub(crate) struct Ctxt {
    /// `None` once checked.
    errors: RefCell<Option<Vec<syn::Error>>>,
}

impl Ctxt {
    /// An empty context.
    pub(crate) fn new() -> Ctxt {
        Ctxt {
            errors: RefCell::new(Some(Vec::new())),
        }
    }

    /// Records `message` at `span`, the token that is wrong.
    pub(crate) fn error(&self, span: Span, message: impl Display) {
        self.syn_error(syn::Error::new(span, message));
    }

    /// Records an error from syn (a parse error, or one built elsewhere).
    pub(crate) fn syn_error(&self, error: syn::Error) {
        match self.errors.borrow_mut().as_mut() {
            Some(errors) => errors.push(error),
            None => unreachable!("`Ctxt` used after `check`"),
        }
    }

    /// The value of `result`, or `None` with its error recorded.
    pub(crate) fn ok<T>(&self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|error| self.syn_error(error)).ok()
    }

    /// Finishes the context: every error recorded, combined into one.
    pub(crate) fn check(self) -> syn::Result<()> {
        let errors = self.errors.borrow_mut().take().unwrap_or_default();
        let mut errors = errors.into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            combined.combine(error);
        }
        Err(combined)
    }
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        if !std::thread::panicking() && self.errors.borrow().is_some() {
            panic!("`Ctxt` dropped without `check`: errors would be lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_reported_together() {
        let cx = Ctxt::new();
        assert!(cx.check().is_ok());
        let cx = Ctxt::new();
        cx.error(Span::call_site(), "one");
        assert_eq!(cx.ok::<()>(Err(syn::Error::new(Span::call_site(), "two"))), None);
        let messages: Vec<String> = cx.check().unwrap_err().into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages, ["one", "two"]);
    }

    #[test]
    #[should_panic(expected = "dropped without `check`")]
    fn a_context_dropped_unchecked_panics() {
        let cx = Ctxt::new();
        cx.error(Span::call_site(), "lost");
    }
}
