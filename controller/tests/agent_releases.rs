//! `drover agent push|list` against an in-process controller: the ELF arch
//! check (in the CLI and again at the API), immutable releases, the stored
//! binary served as an artifact, and releases signed by the agents key that
//! a device's trust state accepts, also after the agents key rotates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use drover_controller::agent_releases::AgentReleaseView;
use drover_controller::http::ErrorBody;
use drover_protocol::manifest::AgentVersion;
use drover_protocol::release::Arch;
use drover_protocol::trust::Role;
use drover_protocol::{DeviceId, Sha256, TrustState};
use support::{TestController, drover, stderr, stdout, token_for};

fn host_arch() -> Arch {
    Arch::parse(std::env::consts::ARCH).expect("tests run on x86_64, aarch64 or armv7")
}

fn other_arch() -> Arch {
    if host_arch() == Arch::Aarch64 {
        Arch::X86_64
    } else {
        Arch::Aarch64
    }
}

/// A minimal ELF header for `arch` followed by `tag`: enough for the
/// registry, which reads only the header.
fn fake_elf(arch: Arch, tag: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = if arch == Arch::Armv7 { 1 } else { 2 };
    h[5] = 1;
    h[16..18].copy_from_slice(&3u16.to_le_bytes());
    h[18..20].copy_from_slice(&arch.elf_machine().to_le_bytes());
    h.extend_from_slice(tag);
    h
}

async fn post_json(url: &str, body: serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/v1/agents"))
        .bearer_auth(token_for(url))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_list_and_verify_agent_releases() {
    let t = TestController::start().await;
    let url = t.url();
    let c = t.running.handle();
    // A real executable of this machine's arch stands in for drover-agent
    // (a small one: a debug drover-agent is over 100 MB).
    let exe = if std::path::Path::new("/bin/true").exists() {
        "/bin/true"
    } else {
        env!("CARGO_BIN_EXE_drover")
    };
    let arch = host_arch().to_string();

    let o = drover(
        &url,
        &["agent", "push", exe, "--arch", &arch, "--version", "0.2.0"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("pushed agent 0.2.0 for "),
        "{}",
        stdout(&o)
    );
    // Same bytes again: a no-op.
    let o = drover(
        &url,
        &["agent", "push", exe, "--arch", &arch, "--version", "0.2.0"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("already stored"), "{}", stdout(&o));

    // The CLI refuses a binary whose ELF header names another arch, and a
    // file that is not an executable, before uploading anything.
    let other = other_arch().to_string();
    let o = drover(
        &url,
        &["agent", "push", exe, "--arch", &other, "--version", "0.3.0"],
    )
    .await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("built for {arch}, not {other}")),
        "{}",
        stderr(&o)
    );
    let script = t.dir.path().join("agent.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let o = drover(
        &url,
        &[
            "agent",
            "push",
            script.to_str().unwrap(),
            "--arch",
            &arch,
            "--version",
            "0.3.0",
        ],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not an ELF file"), "{}", stderr(&o));
    let o = drover(
        &url,
        &["agent", "push", exe, "--arch", &arch, "--version", "0.3"],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("major.minor.patch"), "{}", stderr(&o));

    // The API checks the same on its own (a client other than the CLI).
    let r = post_json(
        &url,
        serde_json::json!({"version": "0.3.0", "arch": other, "binary_base64": b64(&fake_elf(host_arch(), b"x"))}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 422);
    assert_eq!(r.json::<ErrorBody>().await.unwrap().error, "arch_mismatch");
    // A release is immutable: other bytes under 0.2.0 are a conflict.
    let r = post_json(
        &url,
        serde_json::json!({"version": "0.2.0", "arch": arch, "binary_base64": b64(&fake_elf(host_arch(), b"other"))}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 409);
    assert_eq!(r.json::<ErrorBody>().await.unwrap().error, "release_exists");
    // Another arch is its own release.
    let arm = fake_elf(Arch::Armv7, b"arm build");
    let r = post_json(
        &url,
        serde_json::json!({"version": "0.10.0", "arch": "armv7", "binary_base64": b64(&arm)}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 201);

    // Listed newest version first (numerically: 0.10.0 > 0.2.0).
    let o = drover(&url, &["--output", "json", "agent", "list"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let list: Vec<AgentReleaseView> = serde_json::from_slice(&o.stdout).unwrap();
    let got: Vec<(&str, &str)> = list
        .iter()
        .map(|r| (r.version.as_str(), r.arch.as_str()))
        .collect();
    assert_eq!(got, [("0.10.0", "armv7"), ("0.2.0", arch.as_str())]);
    let o = drover(&url, &["agent", "list"]).await;
    assert!(stdout(&o).contains("VERSION"), "{}", stdout(&o));

    // The binary is in the artifact store, byte for byte, under its digest
    // (what a device's chunk requests read).
    let binary = std::fs::read(exe).unwrap();
    let (release, signed) = c
        .agent_release(AgentVersion::parse("0.2.0").unwrap(), host_arch())
        .await
        .unwrap();
    assert_eq!(release.artifact.sha256, Sha256::of(&binary));
    assert_eq!(c.artifact(release.artifact.sha256).await.unwrap(), binary);

    // A device trusting this fleet's key list accepts the release.
    let info = c.keys_info();
    assert_eq!(signed.key_id.to_string(), list[1].key_id);
    let root = drover_protocol::PublicKey::from_hex(&info.root_public_key).unwrap();
    let mut trust = TrustState::new(root, DeviceId::new("dev-1").unwrap());
    trust.handle_key_list(&c.key_list().1, c.now()).unwrap();
    assert_eq!(
        trust.verify_agent_release(&signed, c.now()).unwrap(),
        release
    );

    // Rotating the agents key re-signs every release under the new key.
    let out = c.rotate_key(Role::Agents).await.unwrap();
    assert_eq!(out.manifests_resigned, 2);
    trust.handle_key_list(&c.key_list().1, c.now()).unwrap();
    assert!(trust.verify_agent_release(&signed, c.now()).is_err());
    let (_, resigned) = c
        .agent_release(AgentVersion::parse("0.2.0").unwrap(), host_arch())
        .await
        .unwrap();
    assert_eq!(
        trust.verify_agent_release(&resigned, c.now()).unwrap(),
        release
    );
    assert_ne!(c.keys_info().agents_public_key, info.agents_public_key);

    // `drover rollout start agent@V` names a release (checked before any
    // device is looked at), with a version in the agent's form.
    let o = drover(&url, &["rollout", "start", "agent@9.9.9"]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("agent@9.9.9"), "{}", stderr(&o));
    let o = drover(&url, &["rollout", "start", "agent@0.2"]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("major.minor.patch"), "{}", stderr(&o));
    let o = drover(&url, &["rollout", "start", "agent@0.2.0", "--shadow", "5m"]).await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no shadow phase"), "{}", stderr(&o));
    // A known release, but no device matches: refused like a model rollout.
    let o = drover(
        &url,
        &[
            "rollout",
            "start",
            "agent@0.2.0",
            "--selector",
            "arch=aarch64",
        ],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("at least 2"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_command_reaches_the_device_and_its_chunks_are_served() {
    use drover_protocol::Action;
    use drover_protocol::messages::{ChunkRequest, Down, Hello, Up};

    let t = TestController::start().await;
    let url = t.url();
    let c = t.running.handle();
    let binary = fake_elf(host_arch(), &[7u8; 100_000]);
    let r = post_json(
        &url,
        serde_json::json!({"version": "0.2.0", "arch": host_arch().to_string(), "binary_base64": b64(&binary)}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 201);

    let mut peer = t.registered_peer("dev-1").await;
    // Before its Hello the device's arch is unknown: no release to pick.
    let o = drover(
        &url,
        &["agent", "update", "--device", "dev-1", "--version", "0.2.0"],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown_arch"), "{}", stderr(&o));

    let mut events = c.subscribe();
    peer.send_up(&Up::Hello(Hello {
        agent_version: "0.1.0".into(),
        arch: std::env::consts::ARCH.into(),
        key_list_version: 1,
        ..Hello::default()
    }))
    .await;
    // The inventory has the Hello once its event is out.
    tokio::time::timeout(support::STEP, async {
        loop {
            if let Ok(drover_controller::DeviceEvent::Hello { device, .. }) = events.recv().await
                && device.as_str() == "dev-1"
            {
                break;
            }
        }
    })
    .await
    .unwrap();
    let o = drover(
        &url,
        &[
            "--output",
            "json",
            "agent",
            "update",
            "--device",
            "dev-1",
            "--version",
            "0.2.0",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    let sent: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let seq = sent["seq"].as_u64().unwrap();
    let release = peer
        .wait_for(|d| match d {
            Down::Command(signed) => {
                let cmd = signed.decode_unverified().unwrap();
                match cmd.action {
                    Action::UpdateAgent { release, rollback } if cmd.seq == seq => {
                        assert!(!rollback);
                        Some(release)
                    }
                    _ => None,
                }
            }
            _ => None,
        })
        .await;
    let r = release.decode_unverified().unwrap();
    assert_eq!(r.artifact.sha256, Sha256::of(&binary));
    assert_eq!(r.arch, host_arch());

    // The binary's chunks are served to this device, as a model's are.
    let mut got = Vec::new();
    while (got.len() as u64) < r.artifact.size {
        peer.send_up(&Up::ChunkRequest(ChunkRequest {
            sha256: r.artifact.sha256,
            offset: got.len() as u64,
            len: 65_536,
        }))
        .await;
        let ch = peer
            .wait_for(|d| match d {
                Down::Chunk(c) => Some(c),
                _ => None,
            })
            .await;
        got.extend_from_slice(&ch.data);
    }
    assert_eq!(got, binary);
    t.running.shutdown().await;
}

/// An agent rollout over devices of two arches with a release for one: the
/// device with no build for its arch is not commanded and fails its wave
/// with the reason; the other gets the release of its own arch, and its
/// Hello on the new version completes its install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_rollout_fails_devices_with_no_build_for_their_arch() {
    use drover_protocol::Action;
    use drover_protocol::messages::{Down, Hello, Up};

    let t = TestController::start().await;
    let url = t.url();
    let c = t.running.handle();
    let binary = fake_elf(host_arch(), b"new agent");
    let r = post_json(
        &url,
        serde_json::json!({"version": "0.2.0", "arch": host_arch().to_string(), "binary_base64": b64(&binary)}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 201);
    let mut events = c.subscribe();
    let mut peers = Vec::new();
    for (id, arch) in [("dev-1", host_arch()), ("dev-2", other_arch())] {
        let peer = t.registered_peer(id).await;
        peer.send_up(&Up::Hello(Hello {
            agent_version: "0.1.0".into(),
            arch: arch.to_string(),
            key_list_version: 1,
            ..Hello::default()
        }))
        .await;
        peers.push(peer);
    }
    let mut hellos = 0;
    tokio::time::timeout(support::STEP, async {
        while hellos < 2 {
            if let Ok(drover_controller::DeviceEvent::Hello { .. }) = events.recv().await {
                hellos += 1;
            }
        }
    })
    .await
    .unwrap();

    let o = drover(
        &url,
        &[
            "--output",
            "json",
            "rollout",
            "start",
            "agent@0.2.0",
            "--id",
            "agents",
            "--waves",
            "50,100",
            "--bake",
            "1s",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    // The device of the host's arch is commanded (in its wave), with the
    // host's build; it "restarts" and says Hello on the new version.
    let mut dev1 = peers.remove(0);
    let release = tokio::time::timeout(
        support::STEP * 4,
        dev1.wait_for(|d| match d {
            Down::Command(signed) => match signed.decode_unverified().unwrap().action {
                Action::UpdateAgent { release, rollback } => Some((release, rollback)),
                _ => None,
            },
            _ => None,
        }),
    )
    .await;
    // With dev-2 as the canary the rollout fails before dev-1's wave.
    if let Ok((release, rollback)) = release {
        assert!(!rollback);
        assert_eq!(release.decode_unverified().unwrap().arch, host_arch());
        dev1.send_up(&Up::Hello(Hello {
            agent_version: "0.2.0".into(),
            arch: host_arch().to_string(),
            key_list_version: 1,
            ..Hello::default()
        }))
        .await;
    }
    let detail = tokio::time::timeout(support::STEP * 4, async {
        loop {
            let d = t.running.rollouts().detail("agents", 100).await.unwrap();
            if !d.status.active {
                return d;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the rollout ends");
    let failed: u64 = detail.status.waves.iter().map(|w| w.failed).sum();
    assert_eq!(failed, 1, "{:#?}", detail.status);
    let reason = format!("no agent release 0.2.0 for {}", other_arch());
    let told = detail.audit.iter().any(|e| {
        e["event"]["kind"] == "device_failed"
            && e["event"]["device"] == "dev-2"
            && e["event"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(&reason))
    });
    assert!(told, "{:#?}", detail.audit);
    assert_eq!(detail.status.phase.name(), "rolled_back");
    // dev-2 was never sent an UpdateAgent.
    let mut dev2 = peers.remove(0);
    let none = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        dev2.wait_for(|d| match d {
            Down::Command(signed) => matches!(
                signed.decode_unverified().unwrap().action,
                Action::UpdateAgent { .. }
            )
            .then_some(()),
            _ => None,
        }),
    )
    .await;
    assert!(none.is_err(), "dev-2 got an UpdateAgent");
    t.running.shutdown().await;
}
