//! The services' own telemetry set-up, once per test process: spans get trace ids and messages
//! carry `traceparent` exactly as in the binaries. Logs go to stdout in the pretty format.

/// Installs the global subscriber the first time it is called; later calls do nothing.
#[allow(clippy::expect_used)]
pub fn init_once(service_name: &str, log_filter: &str) {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let env =
            platform::config::Env::from_pairs([("LOG_FORMAT", "pretty"), ("RUST_LOG", log_filter)]);
        let settings = platform::telemetry::TelemetrySettings::from_env(&env, service_name)
            .expect("telemetry settings");
        // The guard only matters for exporting, which these tests do not configure.
        std::mem::forget(platform::telemetry::init(&settings).expect("telemetry init"));
    });
}
