//! Step benchmark (being written).
fn main() {}
