use super::*;
use drover_protocol::Sign as _;
use drover_protocol::testkit::TestKeys;

fn config() -> AgentConfig {
    AgentConfig::new(
        DeviceId::new("dev-1").unwrap(),
        FleetId::new("prod").unwrap(),
        "mqtt://127.0.0.1:1883",
        TestKeys::new(1).root.public_key(),
        "/var/lib/drover",
    )
}

#[test]
fn commented_toml_round_trips() {
    let mut c = config();
    c.labels = parse_labels("region=eu, site=a-b.c/1").unwrap();
    c.api = Some("127.0.0.1:7070".parse().unwrap());
    c.password = Some("s3cret".into());
    let text = c.to_commented_toml().unwrap();
    assert!(text.contains("# MQTT broker"));
    assert!(text.contains("# username ="), "{text}");
    let back = AgentConfig::from_toml(&text).unwrap();
    assert_eq!(back, c);
}

#[test]
fn env_overrides_apply_with_types() {
    let c = config();
    let env: BTreeMap<&str, &str> = [
        ("DROVER_AGENT_BROKER", "mqtt://broker.local"),
        ("DROVER_AGENT_TELEMETRY_WINDOW_MS", "500"),
        ("DROVER_AGENT_PASSWORD", "1234"),
        ("DROVER_AGENT_LABELS", "a=1,b=2"),
        ("DROVER_AGENT_GUARD_MAX_ERROR_RATE", "0.5"),
        ("DROVER_AGENT_API", "127.0.0.1:0"),
    ]
    .into_iter()
    .collect();
    let lookup = |k: &str| env.get(k).map(|v| (*v).to_string());
    let o = c.apply_env(&lookup).unwrap();
    assert_eq!(o.broker_addr().unwrap().host, "broker.local");
    assert_eq!(o.broker_addr().unwrap().port, 1883);
    assert_eq!(o.telemetry_window_ms, 500);
    assert_eq!(o.password.as_deref(), Some("1234"));
    assert_eq!(o.labels.get("b").map(String::as_str), Some("2"));
    assert_eq!(o.guard_max_error_rate, 0.5);
    assert_eq!(o.api.unwrap().port(), 0);
    let bad = |k: &str| (k == "DROVER_AGENT_CHUNK_WINDOW").then(|| "many".to_string());
    assert!(matches!(c.apply_env(&bad), Err(ConfigError::Parse(_))));
    let zero = |k: &str| (k == "DROVER_AGENT_CHUNK_WINDOW").then(|| "0".to_string());
    assert!(matches!(
        c.apply_env(&zero),
        Err(ConfigError::Invalid {
            key: "chunk_window",
            ..
        })
    ));
}

#[test]
fn bad_values_are_refused_with_the_key() {
    assert!(parse_broker("mqtt://h:1").is_ok());
    assert_eq!(parse_broker("mqtt://[::1]:99").unwrap().host, "::1");
    // mqtts:// is TLS on 8883 by default and needs the pinned CA.
    let tls = parse_broker("mqtts://h").unwrap();
    assert!(tls.tls && tls.port == 8883);
    assert!(!parse_broker("mqtt://h").unwrap().tls);
    let mut c = config();
    c.broker = "mqtts://h".into();
    assert!(matches!(
        c.validate(),
        Err(ConfigError::Invalid { key: "ca_file", .. })
    ));
    c.ca_file = Some("ca.pem".into());
    assert!(c.validate().is_ok());
    c.client_cert_file = Some("c.pem".into());
    assert!(matches!(
        c.validate(),
        Err(ConfigError::Invalid {
            key: "client_cert_file",
            ..
        })
    ));
    for bad in [
        "http://h",
        "mqtt://",
        "mqtt://h:0",
        "mqtt://h:x",
        "mqtt://u@h",
        "mqtts://",
        "ws://h",
    ] {
        assert!(parse_broker(bad).is_err(), "{bad}");
    }
    let mut c = config();
    c.api = Some("0.0.0.0:7070".parse().unwrap());
    assert!(matches!(
        c.validate(),
        Err(ConfigError::Invalid { key: "api", .. })
    ));
    let mut c = config();
    c.chunk_size = 10 * 1024 * 1024;
    assert!(matches!(
        c.validate(),
        Err(ConfigError::Invalid {
            key: "chunk_size",
            ..
        })
    ));
    let text = config().to_commented_toml().unwrap();
    assert!(AgentConfig::from_toml(&format!("{text}\nbogus = 1\n")).is_err());
    assert!(
        AgentConfig::from_toml(&text.replace("device_id = \"dev-1\"", "device_id = \"Dev 1\""))
            .is_err()
    );
    assert!(parse_labels("novalue").is_err());
    // The controller could never select these (fleet-wide label rules).
    assert!(parse_labels("site=a b").is_err());
}
