//! Inbound policy between pods in network namespaces, with weft-proxy-init's
//! iptables rules: a Server that admits one service account. The app listens
//! on every address, so only the redirect stands between a client dialling
//! the pod IP and the app; a refused pod, meshed or not, never reaches it.
//! Root only: elsewhere the test prints why it is skipped and passes.

use tokio::net::TcpListener;
use weft_e2e::{
    identity_name,
    pod::*,
    policy::{self, Authn, Target},
    within, TestServer, STEP,
};

const NS: &str = "demo";

#[tokio::test]
async fn a_refused_pod_cannot_reach_the_app_even_by_its_pod_ip() {
    if skip() {
        return;
    }
    within(STEP * 3, "inbound policy between pods", async {
        let mesh = Mesh::start("pods-policy", &[(NS, "client"), (NS, "server"), (NS, "other")]).await;
        let server =
            mesh.pod(PodSpec::new("server").proxy_env("WEFT_PROXY_INBOUND_DEFAULT_POLICY", "deny")).await;
        let client = mesh.pod(PodSpec::new("client")).await;
        let other = mesh.pod(PodSpec::new("other")).await;
        let outsider = mesh.pod(PodSpec::new("outsider").meshed(false)).await;
        let web = server
            .run(async { TestServer::on("server", TcpListener::bind("0.0.0.0:0").await.expect("bind app")) })
            .await;
        let port = web.addr.port();
        let d = &mesh.destination;
        d.write_manifest(
            "server.yaml",
            &policy::server(NS, "web", "server", &port.to_string(), "unknown", "deny"),
        );
        d.write_manifest(
            "authn.yaml",
            &policy::meshtls_authentication(NS, "clients", &[&identity_name(NS, "client")]),
        );
        d.write_manifest(
            "authz.yaml",
            &policy::authorization_policy(NS, "clients", Target::Server("web"), &[Authn::MeshTls("clients")]),
        );

        let url = format!("http://{}/hello", server.addr(port));
        let mut allowed = None;
        for _ in 0..200 {
            let (code, body, status) = client.curl(&[&url]).await;
            if (code, status.as_str()) == (0, "200") {
                allowed = Some(body);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let body = allowed.expect("the client pod is admitted once the Server's policy arrives");
        assert!(body.contains(&client.identity()), "the app sees the client's identity: {body}");

        let (_, body, status) = other.curl(&[&url]).await;
        assert_eq!(status, "403", "a meshed pod of another service account is refused: {body}");
        let (_, body, status) = outsider.curl(&[&url]).await;
        assert_eq!(status, "403", "an unmeshed pod is refused: {body}");
        assert_eq!(
            web.requests().len(),
            1,
            "only the admitted request reached the app: {:?}",
            web.requests()
        );

        let m =
            server.wait_metric("inbound_http_authz_deny_total", &[("srv_name", "web")], |v| v >= 2.0).await;
        let allow = [("srv_name", "web"), ("authz_name", "clients"), ("client_id", &client.identity())];
        assert_eq!(m.get("inbound_http_authz_allow_total", &allow), 1.0, "{m}");
    })
    .await;
}
