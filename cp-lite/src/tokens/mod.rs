//! Dataplane tokens: RS256 JWTs, per-mesh signing keys, revocation and boundary checks.
