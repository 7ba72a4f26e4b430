//! The agent's Prometheus metrics, served as text on `/metrics` of the readiness port.
//!
//! One [`Metrics`] is made at start and shared (`Arc`) by the loops that move the figures.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Outcome label of certificate rotations.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Every figure the agent exposes.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    cert_expiration: Gauge<i64, AtomicI64>,
    rotations: Family<ResultLabel, Counter>,
    sds_streams: Gauge<i64, AtomicI64>,
    pushes: Counter,
    nacks: Counter,
    envoy_restarts: Counter,
    cp_connected: Gauge<i64, AtomicI64>,
    ack_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `kuma_dp` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kuma_dp");
        let cert_expiration = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "certificate_expiration_timestamp_seconds",
            "NotAfter of the certificate being served, Unix seconds (0 when none)",
            cert_expiration.clone(),
        );
        let rotations = Family::<ResultLabel, Counter>::default();
        registry.register(
            "certificate_rotations",
            "Certificate issuances, by result (ok, error)",
            rotations.clone(),
        );
        let sds_streams = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "sds_streams",
            "Open xDS/SDS streams from Envoy",
            sds_streams.clone(),
        );
        let pushes = Counter::default();
        registry.register("xds_pushes", "Responses pushed to Envoy", pushes.clone());
        let nacks = Counter::default();
        registry.register(
            "xds_nacks",
            "Responses Envoy rejected (NACK)",
            nacks.clone(),
        );
        let envoy_restarts = Counter::default();
        registry.register(
            "envoy_restarts",
            "Envoy processes restarted by the agent",
            envoy_restarts.clone(),
        );
        let cp_connected = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "control_plane_connected",
            "1 while the view stream to the control plane is open, else 0",
            cp_connected.clone(),
        );
        // 0.25 ms .. 4 s: an ACK normally comes within milliseconds of a push.
        let ack_latency = Histogram::new([
            0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 4.0,
        ]);
        registry.register(
            "xds_ack_latency_seconds",
            "Time from a response pushed to Envoy to its ACK",
            ack_latency.clone(),
        );
        Metrics {
            registry,
            cert_expiration,
            rotations,
            sds_streams,
            pushes,
            nacks,
            envoy_restarts,
            cp_connected,
            ack_latency,
        }
    }

    /// Records the NotAfter (Unix seconds) of the certificate now served; 0 when none.
    pub fn set_certificate_expiration(&self, unix_seconds: i64) {
        self.cert_expiration.set(unix_seconds);
    }

    /// Counts a successful certificate issuance.
    pub fn rotation_ok(&self) {
        self.rotations
            .get_or_create(&ResultLabel { result: "ok" })
            .inc();
    }

    /// Counts a failed certificate issuance attempt.
    pub fn rotation_error(&self) {
        self.rotations
            .get_or_create(&ResultLabel { result: "error" })
            .inc();
    }

    /// Counts an xDS/SDS stream opening.
    pub fn stream_opened(&self) {
        self.sds_streams.inc();
    }

    /// Counts an xDS/SDS stream closing.
    pub fn stream_closed(&self) {
        self.sds_streams.dec();
    }

    /// Counts a response pushed to Envoy.
    pub fn pushed(&self) {
        self.pushes.inc();
    }

    /// Counts a response Envoy rejected.
    pub fn nacked(&self) {
        self.nacks.inc();
    }

    /// Records how long Envoy took to ACK a response.
    pub fn acked(&self, latency: std::time::Duration) {
        self.ack_latency.observe(latency.as_secs_f64());
    }

    /// Counts an Envoy restart.
    pub fn envoy_restarted(&self) {
        self.envoy_restarts.inc();
    }

    /// Records whether the view stream to the control plane is open.
    pub fn set_control_plane_connected(&self, connected: bool) {
        self.cp_connected.set(i64::from(connected));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an error here would be a bug in the encoder.
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_appear_in_the_text_exposition() {
        let metrics = Metrics::new();
        metrics.set_certificate_expiration(1_700_000_000);
        metrics.rotation_ok();
        metrics.rotation_ok();
        metrics.rotation_error();
        metrics.stream_opened();
        metrics.pushed();
        metrics.nacked();
        metrics.envoy_restarted();
        metrics.set_control_plane_connected(true);
        metrics.acked(std::time::Duration::from_micros(300));
        let text = metrics.encode();
        for line in [
            "kuma_dp_certificate_expiration_timestamp_seconds 1700000000",
            "kuma_dp_certificate_rotations_total{result=\"ok\"} 2",
            "kuma_dp_certificate_rotations_total{result=\"error\"} 1",
            "kuma_dp_sds_streams 1",
            "kuma_dp_xds_pushes_total 1",
            "kuma_dp_xds_nacks_total 1",
            "kuma_dp_envoy_restarts_total 1",
            "kuma_dp_control_plane_connected 1",
            "kuma_dp_xds_ack_latency_seconds_count 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
