//! `kumactl`: the operator CLI.

fn main() {}
