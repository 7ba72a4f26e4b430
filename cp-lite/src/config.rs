//! Configuration of `cp-lite run`: flags with `KUMA_*` environment fallbacks.
