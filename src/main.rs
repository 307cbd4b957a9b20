//! The `copyist` binary: parses arguments and hands over to [`copyist::cli`].
fn main() {}
