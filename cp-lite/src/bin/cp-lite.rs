//! `cp-lite`: the thin control plane.

fn main() {}
