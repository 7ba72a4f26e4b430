//! The DP server (default port 5678): gRPC over TLS for kuma-dp agents.
