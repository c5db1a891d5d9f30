//! Placeholder replaced by the benches of the load-testing issue.
fn main() {}
