//! What the cross-service tests share that needs the simulators: starting sf-sim (with the test
//! keys) and whmcs-sim, the Salesforce login the services use against them, seeding orders and
//! reading an Order's status. testkit's library cannot hold it: `sf-sim` and `whmcs-sim` are
//! dev-dependencies of testkit, and sf-sim's own tests depend on testkit.

// Each test binary includes this module and uses a part of it.
#![allow(dead_code)]

use sf_sim::{SfSim, SimConfig};
use whmcs_sim::{WhmcsSim, WhmcsSimConfig};

/// sf-sim accepting the test keys' JWTs, and whmcs-sim.
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
        let keys = testkit::keys::test_keys();
        let config = SimConfig::for_tests(keys.public_pem.clone());
        let sf = SfSim::start(config.clone()).await.expect("sf-sim");
        let whmcs = WhmcsSim::start(whmcs).await.expect("whmcs-sim");
        Self { sf, whmcs, config }
    }

    /// `SF_LOGIN_URL`, `SF_CLIENT_ID`, `SF_USERNAME` and `SF_PRIVATE_KEY_PATH` for sf-sim.
    pub fn salesforce_login(&self) -> Vec<(&'static str, String)> {
        testkit::stack::salesforce_login(
            self.sf.login_url(),
            &self.config.client_id,
            &self.config.username,
        )
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
