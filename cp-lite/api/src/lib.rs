//! The gRPC protocol between `kuma-dp` and `cp-lite`'s DP server, generated from
//! `proto/kuma/dp/v1/dataplane.proto`.

/// Version 1 of the protocol.
pub mod v1 {
    #![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
    tonic::include_proto!("kuma.dp.v1");
}
