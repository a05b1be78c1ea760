//! The simulators as the tests run them: sf-sim accepting JWTs signed with the test keys
//! ([`crate::keys::test_keys`]) and whmcs-sim, the environment that points a service at them,
//! and the orders the tests seed and read.

use sf_sim::{SfSim, SimConfig};
use whmcs_sim::{WhmcsSim, WhmcsSimConfig};

/// sf-sim's test configuration, trusting the test keys' public half.
pub fn sf_config() -> SimConfig {
    SimConfig::for_tests(crate::keys::test_keys().public_pem.clone())
}

/// sf-sim with [`sf_config`].
pub async fn start_sf() -> SfSim {
    start_sf_with(sf_config()).await
}

/// sf-sim with `config` (usually [`sf_config`] changed by the test).
#[allow(clippy::expect_used)]
pub async fn start_sf_with(config: SimConfig) -> SfSim {
    SfSim::start(config).await.expect("start sf-sim")
}

/// whmcs-sim with `config` (usually [`WhmcsSimConfig::for_tests`]).
#[allow(clippy::expect_used)]
pub async fn start_whmcs_with(config: WhmcsSimConfig) -> WhmcsSim {
    WhmcsSim::start(config).await.expect("start whmcs-sim")
}

/// `SF_LOGIN_URL`, `SF_CLIENT_ID`, `SF_USERNAME` and `SF_PRIVATE_KEY_PATH`: the login a service
/// needs for `sf`.
pub fn sf_env(sf: &SfSim) -> Vec<(&'static str, String)> {
    crate::stack::salesforce_login(
        sf.login_url(),
        &sf.config().client_id,
        &sf.config().username,
    )
}

/// `WHMCS_API_URL`, `WHMCS_API_IDENTIFIER` and `WHMCS_API_SECRET` for `whmcs`.
pub fn whmcs_env(whmcs: &WhmcsSim) -> Vec<(&'static str, String)> {
    vec![
        ("WHMCS_API_URL", whmcs.api_url()),
        ("WHMCS_API_IDENTIFIER", whmcs.identifier().to_owned()),
        ("WHMCS_API_SECRET", whmcs.secret().to_owned()),
    ]
}

/// sf-bridge's own Salesforce variables: sf-sim's Pub/Sub endpoint, and every retained event
/// read on a first start.
pub fn pubsub_env(sf: &SfSim) -> Vec<(&'static str, String)> {
    vec![
        ("SF_PUBSUB_ENDPOINT", sf.pubsub_url()),
        ("SF_EVENTS_REPLAY", "ALL".to_owned()),
    ]
}

/// sf-sim accepting the test keys' JWTs, and whmcs-sim.
#[derive(Debug)]
pub struct Simulators {
    pub sf: SfSim,
    pub whmcs: WhmcsSim,
    /// The configuration sf-sim was started with (client id, username, org id).
    pub config: SimConfig,
}

impl Simulators {
    pub async fn start() -> Self {
        Self::start_with(WhmcsSimConfig::for_tests()).await
    }

    pub async fn start_with(whmcs: WhmcsSimConfig) -> Self {
        Self::start_configured(sf_config(), whmcs).await
    }

    pub async fn start_configured(sf: SimConfig, whmcs: WhmcsSimConfig) -> Self {
        let config = sf.clone();
        let sf = start_sf_with(sf).await;
        let whmcs = start_whmcs_with(whmcs).await;
        Self { sf, whmcs, config }
    }

    /// [`sf_env`] of this sf-sim.
    pub fn salesforce_login(&self) -> Vec<(&'static str, String)> {
        sf_env(&self.sf)
    }

    /// What each service of the pipeline reads beyond the environment they share
    /// ([`crate::service::process_env`]), in the order of [`crate::service::PIPELINE`].
    pub fn pipeline_envs(&self) -> [Vec<(&'static str, String)>; 3] {
        [pubsub_env(&self.sf), whmcs_env(&self.whmcs), Vec::new()]
    }
}

/// A Draft order that provisions once approved: a WHMCS client named `name` with a pay method,
/// a mapped product.
pub fn seed_good_order(sf: &SfSim, whmcs: &WhmcsSim, name: &str) -> String {
    let client = whmcs.state().seed_client(name, true);
    let pid = whmcs.state().seed_product("Hosting S", &["monthly"]);
    let sf = sf.state();
    let account = sf.seed_account(name, Some(&client.to_string()));
    let product = sf.seed_product("Hosting S", Some(&pid.to_string()), Some("Monthly"));
    sf.seed_order(&account, &[(product, 1)])
}

/// A Draft order that fails at `mapping` with `CLIENT_MISSING`: its Account has no WHMCS client.
pub fn seed_client_missing_order(sf: &SfSim) -> String {
    let sf = sf.state();
    let account = sf.seed_account("No Client Ltd", None);
    let product = sf.seed_product("Hosting", Some("1"), Some("Monthly"));
    sf.seed_order(&account, &[(product, 1)])
}

/// An Order's `Activation_Status__c`, when it has one.
pub fn status_of(sf: &SfSim, order_id: &str) -> Option<String> {
    sf.state()
        .order(order_id)?
        .get("Activation_Status__c")?
        .as_str()
        .map(str::to_owned)
}
