//! The client against the in-process simulator: every action, and every failure class the
//! provisioner has to tell apart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use whmcs::{
    AcceptOrderRequest, AddOrderRequest, BillingCycle, GetOrdersRequest, GetProductsRequest,
    OrderLine, Params, WhmcsClient, WhmcsError, WhmcsSettings,
};
use whmcs_sim::{ActionFaults, WhmcsSim, WhmcsSimConfig};

async fn start() -> WhmcsSim {
    WhmcsSim::start(WhmcsSimConfig::for_tests()).await.unwrap()
}

fn client(sim: &WhmcsSim) -> WhmcsClient {
    client_with(sim, Duration::from_secs(5))
}

fn client_with(sim: &WhmcsSim, timeout: Duration) -> WhmcsClient {
    let mut settings =
        WhmcsSettings::new(sim.api_url(), sim.identifier(), sim.secret()).with_timeout(timeout);
    if let Some(key) = sim.access_key() {
        settings = settings.with_access_key(key);
    }
    WhmcsClient::new(settings).unwrap()
}

fn line(pid: u64, cycle: BillingCycle) -> OrderLine {
    OrderLine {
        pid,
        billingcycle: cycle,
        qty: None,
    }
}

fn order(client_id: u64, pid: u64, marker: &str) -> AddOrderRequest {
    AddOrderRequest::new(client_id, "stripe", vec![line(pid, BillingCycle::Monthly)])
        .with_notes(marker)
}

#[tokio::test]
async fn read_actions() {
    let sim = start().await;
    let acme = sim.state().seed_client("Acme Hosting", true);
    let bare = sim.state().seed_client("Bare Ltd", false);
    let hosting = sim
        .state()
        .seed_product("Hosting", &["monthly", "annually"]);
    let domain = sim.state().seed_product("Domain", &["onetime"]);
    let api = client(&sim);

    let details = api.get_clients_details(acme).await.unwrap();
    assert_eq!(details.id, acme);
    assert_eq!(details.companyname, "Acme Hosting");
    assert_eq!(details.status, "Active");
    assert!(!details.is_closed());
    let missing = api.get_clients_details(999).await.unwrap_err();
    assert!(missing.is_business());
    assert_eq!(missing.message(), "Client Not Found");
    assert_eq!(missing.contract_code(), "WHMCS_ERROR");

    let methods = api.get_pay_methods(acme).await.unwrap();
    assert_eq!(methods.len(), 1);
    assert_eq!(methods[0].kind, "RemoteCreditCard");
    assert_eq!(methods[0].gateway_name, "stripe");
    assert_eq!(methods[0].card_last_four.as_deref(), Some("4242"));
    assert!(api.get_pay_methods(bare).await.unwrap().is_empty());
    assert_eq!(
        api.get_pay_methods(999).await.unwrap_err().message(),
        "Client Not Found"
    );

    let all = api.get_products(&GetProductsRequest::all()).await.unwrap();
    assert_eq!(all.len(), 2);
    let one = api
        .get_products(&GetProductsRequest::pid(hosting))
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    let product = &one[0];
    assert_eq!(product.name, "Hosting");
    assert_eq!(product.paytype, "recurring");
    assert!(product.accepts_cycle(BillingCycle::Monthly));
    assert!(product.accepts_cycle(BillingCycle::Annually));
    assert!(!product.accepts_cycle(BillingCycle::Quarterly));
    assert!(!product.accepts_cycle(BillingCycle::OneTime));
    assert_eq!(
        product.price(Some("USD"), BillingCycle::Monthly),
        Some(10.0)
    );
    let domain = api
        .get_products(&GetProductsRequest::pid(domain))
        .await
        .unwrap();
    assert!(domain[0].accepts_cycle(BillingCycle::OneTime));
    assert!(!domain[0].accepts_cycle(BillingCycle::Monthly));
    assert!(api
        .get_products(&GetProductsRequest::pid(999))
        .await
        .unwrap()
        .is_empty());

    let stats = sim.state().stats();
    assert_eq!(stats.calls("GetClientsDetails"), 2);
    assert_eq!(stats.calls("getpaymethods"), 3);
    assert_eq!(stats.calls("GetProducts"), 4);
}

#[tokio::test]
async fn add_accept_and_list_orders() {
    let sim = start().await;
    let acme = sim.state().seed_client("Acme", true);
    let web = sim.state().seed_product("Web", &["monthly", "annually"]);
    let vps = sim.state().seed_product_with(&whmcs_sim::ProductSpec {
        name: "VPS".into(),
        cycles: vec!["semiannually".into()],
        allowqty: true,
        monthly_price: Some(20.0),
        setup_fee: 0.0,
        module: None,
    });
    let vps = vps.unwrap();
    let api = client(&sim);

    let request = AddOrderRequest::new(
        acme,
        "stripe",
        vec![
            line(web, BillingCycle::Annually),
            OrderLine {
                pid: vps,
                billingcycle: BillingCycle::SemiAnnually,
                qty: Some(2),
            },
        ],
    )
    .with_notes("prov:801000000000001AAA");
    let created = api.add_order(&request).await.unwrap();
    assert_eq!(created.serviceids.len(), 2);
    assert!(created.invoiceid.is_some());

    let stored = sim.state().order(created.orderid).unwrap();
    assert_eq!(stored.status, "Pending");
    assert_eq!(stored.notes, "prov:801000000000001AAA");
    assert_eq!(stored.services[0].billingcycle, "annually");
    assert_eq!(stored.services[1].billingcycle, "semiannually");
    assert_eq!(stored.services[1].qty, 2);
    assert_eq!(stored.service_ids(), created.serviceids);

    // noinvoice: WHMCS leaves `invoiceid` out of the reply.
    let second = api
        .add_order(&AddOrderRequest {
            noinvoice: true,
            ..order(acme, web, "prov:second")
        })
        .await
        .unwrap();
    assert!(second.invoiceid.is_none());
    assert!(sim
        .state()
        .order(second.orderid)
        .unwrap()
        .invoice_id
        .is_none());

    let page = api
        .get_orders(&GetOrdersRequest::for_client(acme))
        .await
        .unwrap();
    assert_eq!(page.totalresults, 2);
    let ids: Vec<u64> = page.orders.iter().map(|o| o.id).collect();
    assert_eq!(ids, vec![second.orderid, created.orderid], "newest first");
    let first = &page.orders[1];
    assert_eq!(first.notes, "prov:801000000000001AAA");
    assert_eq!(first.invoiceid, created.invoiceid);
    assert_eq!(first.userid, Some(acme));
    assert_eq!(first.service_ids(), created.serviceids);
    assert_eq!(first.lineitems[0].billingcycle, "Annually");
    assert_eq!(first.lineitems[1].billingcycle, "Semi-Annually");

    api.accept_order(&AcceptOrderRequest::new(created.orderid))
        .await
        .unwrap();
    let accepted = sim.state().order(created.orderid).unwrap();
    assert_eq!(accepted.status, "Active");
    let record = accepted.accept.unwrap();
    assert_eq!(record.autosetup, Some(true));
    assert!(record.module_create_ran && !record.sendemail);
    assert!(accepted
        .services
        .iter()
        .all(|s| s.status == "Active" && s.provisioned));

    let fetched = api.get_order(created.orderid).await.unwrap().unwrap();
    assert!(fetched.is_active());
    assert!(api.get_order(9999).await.unwrap().is_none());

    let pending = api
        .get_orders(&GetOrdersRequest {
            status: Some("Pending".into()),
            ..GetOrdersRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.orders.len(), 1);
    assert_eq!(pending.orders[0].id, second.orderid);

    let paged = api
        .get_orders(&GetOrdersRequest {
            userid: Some(acme),
            limitstart: Some(1),
            limitnum: Some(1),
            ..GetOrdersRequest::default()
        })
        .await
        .unwrap();
    assert_eq!((paged.totalresults, paged.numreturned), (2, 1));
    assert_eq!(paged.orders[0].id, created.orderid);
}

#[tokio::test]
async fn business_errors_are_whmcs_errors() {
    let sim = start().await;
    let acme = sim.state().seed_client("Acme", true);
    let closed = sim.state().seed_client("Closed Co", true);
    sim.state()
        .set_client_status(closed, whmcs_sim::ClientStatus::Closed)
        .unwrap();
    let web = sim.state().seed_product("Web", &["monthly"]);
    let api = client(&sim);

    let cases = [
        (order(999, web, "m"), "Client ID Not Found"),
        (
            order(closed, web, "m"),
            "Unable to add order when client status is Closed",
        ),
        (
            AddOrderRequest::new(acme, "paypal", vec![line(web, BillingCycle::Monthly)]),
            "Invalid Payment Method. Valid options include mailin,stripe,banktransfer",
        ),
        (
            order(acme, 999, "m"),
            "No items added to cart so order cannot proceed",
        ),
    ];
    for (request, message) in cases {
        let err = api.add_order(&request).await.unwrap_err();
        assert!(err.is_business(), "{err}");
        assert_eq!(err.message(), message);
        assert_eq!(err.contract_code(), "WHMCS_ERROR");
        assert!(!err.outcome_unknown() && !err.is_transient());
    }
    assert!(sim.state().orders().is_empty());

    // An injected result=error replaces the action.
    sim.state().set_faults(
        "AddOrder",
        ActionFaults::error("Module temporarily unavailable", 1),
    );
    let err = api.add_order(&order(acme, web, "m")).await.unwrap_err();
    assert_eq!(err.message(), "Module temporarily unavailable");
    assert!(sim.state().orders().is_empty());
    api.add_order(&order(acme, web, "m")).await.unwrap();
    assert_eq!(sim.state().stats().faults_fired, 1);

    // Client-side validation never sends an empty cart.
    let before = sim.state().stats().calls("AddOrder");
    let empty = api
        .add_order(&AddOrderRequest::new(acme, "stripe", vec![]))
        .await
        .unwrap_err();
    assert!(matches!(empty, WhmcsError::InvalidRequest { .. }));
    assert_eq!(sim.state().stats().calls("AddOrder"), before);
}

#[tokio::test]
async fn disabled_cycle_silently_falls_back_like_whmcs() {
    let sim = start().await;
    let acme = sim.state().seed_client("Acme", true);
    let web = sim.state().seed_product("Web", &["quarterly", "annually"]);
    let api = client(&sim);
    let created = api
        .add_order(&AddOrderRequest::new(
            acme,
            "stripe",
            vec![line(web, BillingCycle::Monthly)],
        ))
        .await
        .unwrap();
    let stored = api.get_order(created.orderid).await.unwrap().unwrap();
    assert_eq!(stored.lineitems[0].billingcycle, "Quarterly");
}

#[tokio::test]
async fn accept_order_only_on_pending() {
    let sim = start().await;
    let acme = sim.state().seed_client("Acme", true);
    let web = sim.state().seed_product("Web", &["monthly"]);
    let api = client(&sim);
    let created = api.add_order(&order(acme, web, "m1")).await.unwrap();
    api.accept_order(&AcceptOrderRequest::new(created.orderid))
        .await
        .unwrap();
    let again = api
        .accept_order(&AcceptOrderRequest::new(created.orderid))
        .await
        .unwrap_err();
    assert!(again.is_business());
    assert_eq!(again.message(), "Order ID not found or Status not Pending");

    let other = api.add_order(&order(acme, web, "m2")).await.unwrap();
    sim.state()
        .set_order_status(other.orderid, "Cancelled")
        .unwrap();
    let cancelled = api
        .accept_order(&AcceptOrderRequest::new(other.orderid))
        .await
        .unwrap_err();
    assert_eq!(
        cancelled.message(),
        "Order ID not found or Status not Pending"
    );
    let missing = api
        .accept_order(&AcceptOrderRequest::new(4242))
        .await
        .unwrap_err();
    assert_eq!(
        missing.message(),
        "Order ID not found or Status not Pending"
    );
}

#[tokio::test]
async fn bad_credentials_are_403_auth_errors() {
    let sim = start().await;
    sim.state().seed_client("Acme", true);
    let wrong_secret = WhmcsClient::new(WhmcsSettings::new(
        sim.api_url(),
        sim.identifier(),
        "not-the-secret",
    ))
    .unwrap();
    let err = wrong_secret.get_clients_details(1).await.unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert_eq!(err.contract_code(), "403");
    assert_eq!(err.message(), "Authentication Failed");
    assert!(!err.is_transient() && !err.outcome_unknown());

    let wrong_identifier =
        WhmcsClient::new(WhmcsSettings::new(sim.api_url(), "nobody", "x")).unwrap();
    let err = wrong_identifier
        .add_order(&order(1, 1, "m"))
        .await
        .unwrap_err();
    assert!(err.is_auth());
    assert_eq!(err.message(), "Invalid or missing credentials");
    assert!(!err.outcome_unknown(), "WHMCS refused before the action");
    assert!(sim.state().orders().is_empty());
    assert_eq!(sim.state().stats().auth_failures, 2);

    // An action the install does not know is also refused before it runs.
    let api = client(&sim);
    let err = api
        .call("FrobnicateOrder", &Params::new())
        .await
        .unwrap_err();
    assert_eq!(err.contract_code(), "403");
    assert_eq!(
        err.message(),
        "Invalid API Action: \"frobnicateorder\" is not a valid API action"
    );
}

#[tokio::test]
async fn access_key_and_ip_ban() {
    let config = WhmcsSimConfig {
        access_key: Some("k3y".into()),
        allowed_ips: Some(vec![]),
        ban_after_failures: Some(3),
        ..WhmcsSimConfig::for_tests()
    };
    let sim = WhmcsSim::start(config).await.unwrap();
    let acme = sim.state().seed_client("Acme", true);
    // With the key: admitted although the IP allow-list is empty.
    client(&sim).get_clients_details(acme).await.unwrap();

    let no_key = WhmcsClient::new(WhmcsSettings::new(
        sim.api_url(),
        sim.identifier(),
        sim.secret(),
    ))
    .unwrap();
    let err = no_key.get_clients_details(acme).await.unwrap_err();
    assert!(err.is_auth());
    assert_eq!(err.message(), "Invalid IP 127.0.0.1");

    let wrong_key = WhmcsClient::new(
        WhmcsSettings::new(sim.api_url(), sim.identifier(), sim.secret()).with_access_key("nope"),
    )
    .unwrap();
    assert_eq!(
        wrong_key
            .get_clients_details(acme)
            .await
            .unwrap_err()
            .message(),
        "Invalid Access Key"
    );

    let bad = WhmcsClient::new(
        WhmcsSettings::new(sim.api_url(), sim.identifier(), "wrong").with_access_key("k3y"),
    )
    .unwrap();
    for _ in 0..3 {
        assert_eq!(
            bad.get_clients_details(acme).await.unwrap_err().message(),
            "Authentication Failed"
        );
    }
    // Three strikes: even the right credentials are refused now.
    let err = client(&sim).get_clients_details(acme).await.unwrap_err();
    assert_eq!(err.message(), "IP Banned");
    sim.state().clear_bans();
    client(&sim).get_clients_details(acme).await.unwrap();
}

#[tokio::test]
async fn server_errors_are_unknown_outcomes_for_add_order() {
    let sim = start().await;
    let acme = sim.state().seed_client("Acme", true);
    let web = sim.state().seed_product("Web", &["monthly"]);
    let api = client(&sim);

    sim.state()
        .set_faults("AddOrder", ActionFaults::http_status(503, 1));
    let err = api.add_order(&order(acme, web, "m")).await.unwrap_err();
    assert!(matches!(err, WhmcsError::Http { status: 503, .. }), "{err}");
    assert_eq!(err.contract_code(), "503");
    assert!(err.outcome_unknown() && err.is_transient());
    // The injected 503 came before the action: reconciliation finds nothing.
    assert!(api.find_order_by_marker(acme, "m").await.unwrap().is_none());

    sim.state()
        .set_faults("GetOrders", ActionFaults::http_status(500, 1));
    let err = api
        .get_orders(&GetOrdersRequest::for_client(acme))
        .await
        .unwrap_err();
    assert_eq!(err.contract_code(), "500");
    assert!(!err.outcome_unknown(), "reads change nothing");
}

#[tokio::test]
async fn hang_past_the_timeout_is_etimeout() {
    let sim = start().await;
    let acme = sim.state().seed_client("Acme", true);
    let web = sim.state().seed_product("Web", &["monthly"]);
    sim.state()
        .set_faults("AddOrder", ActionFaults::hang(Duration::from_secs(30), 1));
    let impatient = client_with(&sim, Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = impatient
        .add_order(&order(acme, web, "prov:hang"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, WhmcsError::Timeout { .. }), "{err}");
    assert_eq!(err.contract_code(), "ETIMEOUT");
    assert!(err.outcome_unknown());
    // The hang held the request without running it.
    let found = client(&sim)
        .find_order_by_marker(acme, "prov:hang")
        .await
        .unwrap();
    assert!(found.is_none());
    assert!(sim.state().orders_for_client(acme).is_empty());
}

#[tokio::test]
async fn fail_after_commit_is_reconciled_by_marker() {
    let sim = start().await;
    let acme = sim.state().seed_client("Acme", true);
    let web = sim.state().seed_product("Web", &["monthly"]);
    let api = client(&sim);
    // Older orders of the client, one with a similar marker.
    api.add_order(&order(acme, web, "prov:801A")).await.unwrap();

    sim.state()
        .set_faults("AddOrder", ActionFaults::fail_after_commit_status(500, 1));
    let err = api
        .add_order(&order(acme, web, "prov:801B"))
        .await
        .unwrap_err();
    assert_eq!(err.contract_code(), "500");
    assert!(err.outcome_unknown());
    let found = api
        .find_order_by_marker(acme, "prov:801B")
        .await
        .unwrap()
        .expect("the order was committed");
    assert_eq!(found.notes, "prov:801B");
    assert!(found.is_pending());
    assert_eq!(sim.state().orders_for_client(acme).len(), 2);

    // Committed, then the reply is held past the client's timeout.
    sim.state().set_faults(
        "AcceptOrder",
        ActionFaults::fail_after_commit_hang(Duration::from_secs(30), 1),
    );
    let err = client_with(&sim, Duration::from_millis(300))
        .accept_order(&AcceptOrderRequest::new(found.id))
        .await
        .unwrap_err();
    assert_eq!(err.contract_code(), "ETIMEOUT");
    assert!(err.outcome_unknown());
    assert!(api.get_order(found.id).await.unwrap().unwrap().is_active());

    // An empty marker would match anything.
    assert!(api.find_order_by_marker(acme, " ").await.is_err());
}

#[tokio::test]
async fn marker_scan_pages_through_many_orders() {
    let sim = start().await;
    let acme = sim.state().seed_client("Acme", true);
    let other = sim.state().seed_client("Other", true);
    let web = sim.state().seed_product("Web", &["monthly"]);
    let api = client(&sim);
    api.add_order(&order(acme, web, "prov:oldest"))
        .await
        .unwrap();
    api.add_order(&order(other, web, "prov:other"))
        .await
        .unwrap();
    for i in 0..whmcs::client::MARKER_SCAN_PAGE + 5 {
        api.add_order(&order(acme, web, &format!("prov:n{i}")))
            .await
            .unwrap();
    }
    sim.state().reset_stats();
    let found = api
        .find_order_by_marker(acme, "prov:oldest")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.notes, "prov:oldest");
    assert_eq!(sim.state().stats().calls("GetOrders"), 2);
    assert!(api
        .find_order_by_marker(acme, "prov:other")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn connection_refused_is_econnrefused() {
    let sim = start().await;
    let url = sim.api_url();
    let (identifier, secret) = (sim.identifier().to_owned(), sim.secret().to_owned());
    sim.shutdown().await;
    let api = WhmcsClient::new(WhmcsSettings::new(url, identifier, secret)).unwrap();
    let err = api.add_order(&order(1, 1, "m")).await.unwrap_err();
    assert_eq!(err.contract_code(), "ECONNREFUSED", "{err}");
    assert!(!err.outcome_unknown());
}

#[tokio::test]
async fn latency_is_added_to_every_call() {
    let sim = start().await;
    let acme = sim.state().seed_client("Acme", true);
    sim.state().set_latency_all(Duration::from_millis(150));
    let api = client(&sim);
    let started = std::time::Instant::now();
    api.get_clients_details(acme).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    sim.state().clear_faults();
    assert_eq!(sim.state().latency_all(), Duration::ZERO);
}
