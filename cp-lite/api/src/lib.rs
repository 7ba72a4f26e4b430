//! The gRPC protocol between `kuma-dp` and `cp-lite`'s DP server, generated from
//! `proto/kuma/dp/v1/dataplane.proto`, and command-line helpers shared by the binaries.

pub mod cli;

/// Version 1 of the protocol.
pub mod v1 {
    #![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
    tonic::include_proto!("kuma.dp.v1");
}
