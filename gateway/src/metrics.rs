//! Prometheus metrics. Label values are bounded: an unknown source is counted as
//! `unknown` and an unauthenticated request's event as `-`, so a scanner cannot blow up
//! the series count.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub produce_seconds: HistogramVec,
    pub produce_errors: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub in_flight: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "hookfold_gateway_requests_total",
                "Webhook requests answered, by source, event and HTTP status.",
            ),
            &["source", "event", "status"],
        )
        .expect("static metric definition");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hookfold_gateway_request_duration_seconds",
                "Time from request to answer, by source.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["source"],
        )
        .expect("static metric definition");
        let produce_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hookfold_gateway_produce_duration_seconds",
                "Time from handing a record to the producer until the broker acked it.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["source"],
        )
        .expect("static metric definition");
        let produce_errors = IntCounterVec::new(
            Opts::new(
                "hookfold_gateway_produce_errors_total",
                "Records the broker did not ack (answered 503), by source and error.",
            ),
            &["source", "error"],
        )
        .expect("static metric definition");
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "hookfold_gateway_auth_failures_total",
                "Requests refused with 401, by source and reason.",
            ),
            &["source", "reason"],
        )
        .expect("static metric definition");
        let in_flight = IntGauge::new(
            "hookfold_gateway_in_flight_requests",
            "Webhook requests being handled right now.",
        )
        .expect("static metric definition");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(produce_seconds.clone()),
            Box::new(produce_errors.clone()),
            Box::new(auth_failures.clone()),
            Box::new(in_flight.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            request_seconds,
            produce_seconds,
            produce_errors,
            auth_failures,
            in_flight,
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding our own registry into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
