//! The kube-rs namespace cache against a local server that replays the
//! captured `GET /api/v1/namespaces` and serves a watch we control.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::fake_api::start;
use common::*;
use serde_json::json;
use weft_injector::namespaces::{KubeNamespaces, LookupError, NamespaceLookup};

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cache_serves_lookups_and_follows_the_watch() {
    let (api, client) = start(fixture("namespaces.list.json")).await;
    let (namespaces, watch) = KubeNamespaces::new(client);
    let watch = tokio::spawn(watch);
    tokio::time::timeout(Duration::from_secs(10), namespaces.ready()).await.expect("cache ready in time");
    assert!(api.counters.lists.load(Ordering::SeqCst) >= 1);
    assert_eq!(namespaces.cached(), 6);

    let emojivoto = namespaces.annotations("emojivoto").await.expect("emojivoto");
    assert_eq!(emojivoto.get("weft.io/inject").map(String::as_str), Some("enabled"));
    let plain = namespaces.annotations("plain").await.expect("plain");
    assert!(!plain.contains_key("weft.io/inject"));
    assert!(plain.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
    let system = namespaces.annotations("kube-system").await.expect("kube-system");
    assert!(system.is_empty());
    // All from the cache.
    assert_eq!(api.counters.gets.load(Ordering::SeqCst), 0);

    // The namespace gets annotated: the watch event reaches the cache.
    eventually("the watch to open", || !api.watchers.lock().expect("lock").is_empty()).await;
    let mut plain_ns = api.list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == "plain"))
        .cloned()
        .expect("plain in list");
    plain_ns["metadata"]["annotations"]["weft.io/inject"] = json!("enabled");
    plain_ns["metadata"]["resourceVersion"] = json!("400");
    let event = format!("{}\n", json!({"type": "MODIFIED", "object": plain_ns}));
    for tx in api.watchers.lock().expect("lock").iter() {
        let _ = tx.send(Bytes::from(event.clone()));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = namespaces.annotations("plain").await.expect("plain");
        if a.get("weft.io/inject").map(String::as_str) == Some("enabled") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "watch event never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(api.counters.gets.load(Ordering::SeqCst), 0);
    watch.abort();
}

#[tokio::test]
async fn uncached_namespaces_fall_back_to_get() {
    // The watch has not delivered anything yet (or never will): lookups GET.
    let (api, client) = start(fixture("namespaces.list.json")).await;
    let (namespaces, _watch_not_started) = KubeNamespaces::new(client);
    let emojivoto = namespaces.annotations("emojivoto").await.expect("emojivoto");
    assert_eq!(emojivoto.get("weft.io/inject").map(String::as_str), Some("enabled"));
    assert_eq!(api.counters.gets.load(Ordering::SeqCst), 1);
    match namespaces.annotations("missing").await {
        Err(LookupError::NotFound(name)) => assert_eq!(name, "missing"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn api_errors_are_reported_not_hidden() {
    // Nothing listens on this port any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut config = kube::Config::new(format!("http://{addr}").parse().expect("uri"));
    config.connect_timeout = Some(Duration::from_secs(2));
    let client = kube::Client::try_from(config).expect("client");
    let (namespaces, _watch) = KubeNamespaces::new(client);
    match namespaces.annotations("emojivoto").await {
        Err(LookupError::Api { name, .. }) => assert_eq!(name, "emojivoto"),
        other => panic!("expected an API error, got {other:?}"),
    }
}
