//! Brokers for tests: an embedded rumqttd on a free port (default), the broker
//! named by `DROVER_TEST_BROKER=mqtt://host:port`, or a Mosquitto child process
//! that can be stopped and restarted on the same port.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listening on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The broker a test talks to.
pub struct TestBroker {
    url: String,
}

impl TestBroker {
    /// `DROVER_TEST_BROKER` if set, else an embedded rumqttd on a free port.
    pub async fn start() -> TestBroker {
        if let Ok(url) = std::env::var("DROVER_TEST_BROKER") {
            return TestBroker { url };
        }
        let port = free_port();
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let connections = ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 4 * 1024 * 1024,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        let mut v4 = HashMap::new();
        v4.insert(
            "v4-1".to_string(),
            ServerSettings {
                name: "v4-1".into(),
                listen,
                tls: None,
                next_connection_delay_ms: 1,
                connections,
            },
        );
        let cfg = Config {
            id: 0,
            router: RouterConfig {
                max_connections: 1000,
                max_outgoing_packet_count: 200,
                max_segment_size: 16 * 1024 * 1024,
                max_segment_count: 4,
                ..RouterConfig::default()
            },
            v4: Some(v4),
            ..Config::default()
        };
        std::thread::Builder::new()
            .name(format!("rumqttd-{port}"))
            .spawn(move || {
                let mut b = rumqttd::Broker::new(cfg);
                let _ = b.start();
            })
            .unwrap();
        wait_listening(listen).await;
        TestBroker {
            url: format!("mqtt://127.0.0.1:{port}"),
        }
    }

    /// `mqtt://host:port`.
    pub fn url(&self) -> String {
        self.url.clone()
    }
}

fn mosquitto_binary() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        let p = PathBuf::from(p);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "this test needs a stoppable broker: install the 'mosquitto' package \
         (scripts/test.sh does; binary expected at /usr/sbin/mosquitto)"
    );
}

/// A Mosquitto child process on a port of its own; `stop` kills it (like a
/// crash), `restart` brings it back on the same port.
pub struct Mosquitto {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts Mosquitto on a free port.
    pub async fn start() -> Mosquitto {
        let mut m = Mosquitto {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        m.launch().await;
        m
    }

    async fn launch(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 100000\n",
                self.port
            ),
        )
        .unwrap();
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning mosquitto");
        self.child = Some(child);
        wait_listening(([127, 0, 0, 1], self.port).into()).await;
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Kills the broker.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}
