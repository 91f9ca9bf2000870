//! Compile-time behaviour of `#[cached]`: what compiles (`tests/ui/pass`) and, for
//! each mistake, the error and where it points (`tests/ui/fail/*.stderr`).
//!
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test --test ui`,
//! then read it: the caret must sit under the token that is wrong.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
