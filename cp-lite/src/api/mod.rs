//! The API server (default port 5681): Kuma-style REST for every resource type, used by kumactl.
