//! The transport attack suite, TLS half (the plaintext half is
//! `attack_broker.rs`): the embedded broker with `--mqtt-tls` and a real
//! Mosquitto with `require_certificate` + `use_identity_as_username`, both
//! with certificates Drover's fleet CA issued; real agents started from the
//! bundles `enroll_device` writes; raw rumqttc clients as the attacker.
//! Every refusal is asserted together with "nothing changed".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use drover_agent::{Agent, AgentConfig};
use drover_controller::DeviceEvent;
use drover_controller::fleet::broker::BrokerChoice;
use drover_controller::fleet::devices::DeviceBundle;
use drover_controller::fleet::fleet_ca::FleetCa;
use drover_controller::registry::PushRequest;
use drover_controller::serve::{RunningController, ServeConfig, start};
use drover_protocol::labels::Selector;
use drover_protocol::messages::DeployPhase;
use drover_protocol::{DeviceId, ModelName};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject as _;

const STEP: Duration = Duration::from_secs(30);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// Writes a bundle the way `drover device add --out DIR` does and loads it
/// the way `drover-agent run --config DIR/agent.toml` does.
fn agent_from_bundle(bundle: &DeviceBundle, dir: &Path) -> AgentConfig {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("agent.toml"), &bundle.agent_toml).unwrap();
    for (name, text) in bundle.tls.files() {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let mut cfg = AgentConfig::load(&dir.join("agent.toml")).unwrap();
    cfg.data_dir = dir.join("data");
    cfg.api = None;
    cfg.telemetry_window_ms = 200;
    cfg
}

async fn wait_event(
    rx: &mut tokio::sync::broadcast::Receiver<DeviceEvent>,
    mut pick: impl FnMut(&DeviceEvent) -> bool,
) -> DeviceEvent {
    tokio::time::timeout(STEP, async {
        loop {
            match rx.recv().await {
                Ok(e) if pick(&e) => return e,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream closed: {e}"),
            }
        }
    })
    .await
    .expect("event did not arrive in time")
}

/// A rustls client config trusting `ca_pem`, with an optional client cert.
fn tls_client(ca_pem: &str, client: Option<(&str, &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match client {
        Some((cert, key)) => b
            .with_client_auth_cert(
                rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    })
}

/// Another CA nobody trusts, as an attacker would bring.
fn foreign_ca_pem() -> String {
    let dir = tempfile::tempdir().unwrap();
    FleetCa::open_or_create(dir.path())
        .unwrap()
        .cert_pem()
        .to_string()
}

/// Connects a raw client; Ok(()) on CONNACK success, Err(text) otherwise.
async fn try_connect(
    addr: SocketAddr,
    client_id: &str,
    creds: Option<(&str, &str)>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(), String> {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = creds {
        opts.set_credentials(u, p);
    }
    if let Some(t) = tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(t)));
    }
    let (_c, mut el) = AsyncClient::new(opts, 4);
    loop {
        match tokio::time::timeout(STEP, el.poll()).await.expect("hung") {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn inventory(r: &RunningController) -> String {
    let mut d = r.handle().devices(&Selector::default()).await.unwrap();
    for x in &mut d {
        x.last_seen = None;
    }
    serde_json::to_string(&d).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_tls_agent_connects_and_wrong_ca_or_plaintext_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::ephemeral(dir.path().join("controller"));
    cfg.mqtt_tls = true;
    cfg.mqtt_connect_timeout = Duration::from_secs(2);
    let running = start(cfg).await.unwrap();
    assert!(
        running.mqtt_addr().starts_with("mqtts://"),
        "{}",
        running.mqtt_addr()
    );
    let addr: SocketAddr = running.mqtt_addr()["mqtts://".len()..].parse().unwrap();
    let c = running.handle();
    let device = DeviceId::new("tls-1").unwrap();
    let bundle = c
        .register_device(&device, Default::default())
        .await
        .unwrap();
    assert!(
        bundle.agent_toml.contains("ca_file = \"ca.pem\""),
        "{}",
        bundle.agent_toml
    );
    let ca = bundle.tls.ca_pem.clone().unwrap();
    assert_eq!(
        ca,
        std::fs::read_to_string(FleetCa::cert_path(&dir.path().join("controller"))).unwrap()
    );
    let mut events = c.subscribe();
    let agent = Agent::start(agent_from_bundle(&bundle, &dir.path().join("agent")))
        .await
        .unwrap();
    wait_event(
        &mut events,
        |e| matches!(e, DeviceEvent::Hello { device: d, .. } if d == &device),
    )
    .await;
    assert!(c.device(&device).await.unwrap().unwrap().online);

    let before = (
        inventory(&running).await,
        c.metrics().mqtt_messages.load(Ordering::Relaxed),
    );
    let gate = running.gate_counters().unwrap();
    let creds = Some((bundle.username.as_str(), bundle.password.as_str()));
    let cid = format!("drover-{}-tls-1", running.fleet());
    // A client that pins another CA refuses the gate's certificate (and so
    // never sends the password); the gate counts the failed handshake.
    let wrong = try_connect(addr, &cid, creds, Some(tls_client(&foreign_ca_pem(), None))).await;
    assert!(wrong.is_err(), "connected with a foreign CA pinned");
    // Plaintext MQTT to the TLS listener.
    let plain = try_connect(addr, &cid, creds, None).await;
    assert!(plain.is_err(), "plaintext accepted on the TLS listener");
    let deadline = tokio::time::Instant::now() + STEP;
    while gate.refused().get("tls_handshake").copied().unwrap_or(0) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            gate.refused()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The right CA with a wrong password is still a refusal.
    let bad_pw = try_connect(
        addr,
        &cid,
        Some((bundle.username.as_str(), "wrong")),
        Some(tls_client(&ca, None)),
    )
    .await;
    assert!(bad_pw.unwrap_err().contains("BadUserNamePassword"));
    // Nothing changed; the agent is still connected.
    let after = (
        inventory(&running).await,
        c.metrics().mqtt_messages.load(Ordering::Relaxed),
    );
    assert_eq!(after, before);
    assert!(c.device(&device).await.unwrap().unwrap().online);
    agent.shutdown().await.unwrap();
    running.shutdown().await;
}

/// A Mosquitto child with a TLS listener that requires a client certificate
/// from the fleet CA and takes the certificate's CN as the username.
struct TlsMosquitto {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TlsMosquitto {
    async fn start(ca: &FleetCa) -> TlsMosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = drover_sim::net::free_port().unwrap();
        let server = ca
            .server_cert(&["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(p("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(p("server.key"), &server.key_pem).unwrap();
        // The same lines README "Security" gives for Mosquitto.
        std::fs::write(
            p("drover.acl"),
            "user drover-controller\ntopic readwrite drover/#\n\n\
             pattern write drover/+/d/%u/up\npattern write drover/+/d/%u/status\n\
             pattern read drover/+/d/%u/down\npattern read drover/+/d/%u/chunk\n",
        )
        .unwrap();
        std::fs::write(
            p("mosquitto.conf"),
            format!(
                // `user root`: when the tests run as root, keep reading the
                // temp files (0700) instead of dropping to `mosquitto`.
                "user root\nper_listener_settings false\npersistence false\nallow_anonymous false\n\
                 acl_file {acl}\n\
                 listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
                 require_certificate true\nuse_identity_as_username true\n",
                acl = p("drover.acl").display(),
                ca = p("ca.pem").display(),
                cert = p("server.pem").display(),
                key = p("server.key").display(),
            ),
        )
        .unwrap();
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|b| Path::new(b).exists())
            .expect("mosquitto not installed (scripts/test.sh installs it)");
        let child = Command::new(bin)
            .arg("-c")
            .arg(p("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        drover_sim::net::wait_listening(addr, STEP).await.unwrap();
        TlsMosquitto {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for TlsMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_with_client_certificates_serves_an_agent_and_refuses_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("controller");
    // The fleet CA `drover serve` would create on its first start; created
    // first here so the broker can be configured with it.
    let ca = FleetCa::open_or_create(&data).unwrap();
    let broker = TlsMosquitto::start(&ca).await;
    let own = ca.client_cert("drover-controller").unwrap();
    let tls_dir = dir.path().join("controller-tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    std::fs::write(tls_dir.join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(tls_dir.join("controller.pem"), &own.cert_pem).unwrap();
    std::fs::write(tls_dir.join("controller.key"), &own.key_pem).unwrap();
    let mut cfg = ServeConfig::ephemeral(&data);
    cfg.broker = BrokerChoice::External {
        host: "127.0.0.1".into(),
        port: broker.addr.port(),
        tls: true,
    };
    cfg.broker_ca = Some(tls_dir.join("ca.pem"));
    cfg.broker_cert = Some((
        tls_dir.join("controller.pem"),
        tls_dir.join("controller.key"),
    ));
    let running = start(cfg).await.unwrap();
    assert!(running.mqtt_addr().starts_with("mqtts://"));
    let c = running.handle();
    c.keys_init().unwrap();
    let model = c
        .push_model(PushRequest {
            name: Some(ModelName::new("sensor").unwrap()),
            onnx: std::fs::read(fixtures().join("models/sensor_clf_v1.onnx")).unwrap(),
            ..PushRequest::default()
        })
        .await
        .unwrap()
        .manifest
        .model_ref();

    // `drover device add --client-cert`: CN = device id, CA pinned.
    let device = DeviceId::new("cert-1").unwrap();
    let bundle = c
        .enroll_device(&device, Default::default(), true)
        .await
        .unwrap();
    assert!(
        bundle
            .agent_toml
            .contains("client_cert_file = \"client.pem\"")
    );
    let mut events = c.subscribe();
    let agent = Agent::start(agent_from_bundle(&bundle, &dir.path().join("agent")))
        .await
        .unwrap();
    wait_event(
        &mut events,
        |e| matches!(e, DeviceEvent::Hello { device: d, .. } if d == &device),
    )
    .await;
    // It serves: a deploy goes through the TLS broker end to end.
    let deployment = c.deploy(&model, &device, false).await.unwrap();
    let e = wait_event(&mut events, |e| {
        matches!(e, DeviceEvent::DeployStatus { status, .. }
            if status.seq == deployment.seq
                && matches!(status.phase, DeployPhase::Active | DeployPhase::Failed(_) | DeployPhase::RolledBack { .. }))
    })
    .await;
    let DeviceEvent::DeployStatus { status, .. } = e else {
        unreachable!()
    };
    assert_eq!(status.phase, DeployPhase::Active, "{status:?}");
    assert_eq!(agent.active_model(), Some(model));

    let before = (
        inventory(&running).await,
        c.metrics().mqtt_messages.load(Ordering::Relaxed),
    );
    let ca_pem = ca.cert_pem().to_string();
    // No client certificate against require_certificate.
    let r = try_connect(broker.addr, "cert-2", None, Some(tls_client(&ca_pem, None))).await;
    assert!(r.is_err(), "connected without a client certificate");
    // A client certificate from another CA.
    let other_dir = tempfile::tempdir().unwrap();
    let other = FleetCa::open_or_create(other_dir.path()).unwrap();
    let forged = other.client_cert("cert-1").unwrap();
    let r = try_connect(
        broker.addr,
        "cert-1",
        None,
        Some(tls_client(
            &ca_pem,
            Some((&forged.cert_pem, &forged.key_pem)),
        )),
    )
    .await;
    assert!(r.is_err(), "a certificate from a foreign CA was accepted");
    // Pinning a foreign CA: the client refuses the broker.
    let r = try_connect(
        broker.addr,
        "cert-1",
        None,
        Some(tls_client(
            &foreign_ca_pem(),
            Some((
                bundle.tls.client_cert_pem.as_deref().unwrap(),
                bundle.tls.client_key_pem.as_deref().unwrap(),
            )),
        )),
    )
    .await;
    assert!(r.is_err(), "connected while pinning a foreign CA");
    // Plaintext MQTT to the TLS listener.
    let r = try_connect(broker.addr, "cert-1", None, None).await;
    assert!(r.is_err(), "plaintext accepted");
    let after = (
        inventory(&running).await,
        c.metrics().mqtt_messages.load(Ordering::Relaxed),
    );
    assert_eq!(after, before);
    assert!(c.device(&device).await.unwrap().unwrap().online);
    agent.shutdown().await.unwrap();
    running.shutdown().await;
}

/// A plaintext Mosquitto with the password and ACL files `drover broker acl`
/// prints.
async fn mosquitto_with_acl(passwd: &str, acl: &str) -> (Child, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = drover_sim::net::free_port().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("drover.passwd"), passwd).unwrap();
    std::fs::write(p("drover.acl"), acl).unwrap();
    std::fs::write(
        p("mosquitto.conf"),
        format!(
            "user root\npersistence false\nallow_anonymous false\npassword_file {}\nacl_file {}\n\
             listener {port} 127.0.0.1\n",
            p("drover.passwd").display(),
            p("drover.acl").display()
        ),
    )
    .unwrap();
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|b| Path::new(b).exists())
        .expect("mosquitto not installed");
    let child = Command::new(bin)
        .arg("-c")
        .arg(p("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    drover_sim::net::wait_listening(addr, STEP).await.unwrap();
    (child, addr, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_verifies_drovers_password_hashes_and_acl() {
    // Register devices on one controller to get `drover broker acl`'s files
    // (hashes at the test cost: the `$7$ITERATIONS$` format is what matters;
    // Mosquitto reads the count from the hash).
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::ephemeral(dir.path().join("c1"));
    cfg.username = Some("drover-controller".into());
    cfg.password = Some("controller-secret".into());
    let first = start(cfg.clone()).await.unwrap();
    let c = first.handle();
    let a = c
        .register_device(&DeviceId::new("dev-a").unwrap(), Default::default())
        .await
        .unwrap();
    c.register_device(&DeviceId::new("dev-b").unwrap(), Default::default())
        .await
        .unwrap();
    let acl = c.broker_acl().await.unwrap();
    first.shutdown().await;
    let (mut child, addr, _mdir) = mosquitto_with_acl(&acl.password_file, &acl.acl_file).await;

    // The controller logs in with its own hashed password.
    cfg.broker = BrokerChoice::External {
        host: "127.0.0.1".into(),
        port: addr.port(),
        tls: false,
    };
    let running = start(cfg).await.unwrap();
    let before = (
        inventory(&running).await,
        running
            .handle()
            .metrics()
            .mqtt_messages
            .load(Ordering::Relaxed),
    );
    // The device's bundle password works; a wrong one, an unknown user and
    // anonymous do not.
    let fleet = running.fleet().clone();
    let cid = format!("drover-{fleet}-dev-a");
    try_connect(addr, &cid, Some(("dev-a", &a.password)), None)
        .await
        .unwrap();
    for (creds, what) in [
        (Some(("dev-a", "wrong")), "wrong password"),
        (Some(("ghost", a.password.as_str())), "unknown user"),
        (None, "anonymous"),
    ] {
        assert!(
            try_connect(addr, &cid, creds, None).await.is_err(),
            "{what} accepted by Mosquitto"
        );
    }
    // dev-a publishing as dev-b: Mosquitto's ACL drops it (QoS 1 is still
    // acknowledged), so nothing reaches the controller.
    let mut opts = MqttOptions::new(cid.clone(), "127.0.0.1", addr.port());
    opts.set_credentials("dev-a", a.password.clone());
    let (client, mut el) = AsyncClient::new(opts, 8);
    client
        .publish(
            format!("drover/{fleet}/d/dev-b/up"),
            rumqttc::QoS::AtLeastOnce,
            false,
            vec![1, 2, 3],
        )
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(STEP, el.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::PubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = (
        inventory(&running).await,
        running
            .handle()
            .metrics()
            .mqtt_messages
            .load(Ordering::Relaxed),
    );
    assert_eq!(after, before);
    running.shutdown().await;
    let _ = child.kill();
    let _ = child.wait();
}
