//! The web dashboard in a real browser: Debian's Chromium, headless, driven
//! through chromedriver (WebDriver) against a running controller with
//! simulated agents. Every page is opened, its numbers are compared with the
//! JSON API's, a rollout that fails its gate shows the gate's values and the
//! rollback, a pause clicked on the page is seen through the API, a viewer
//! gets no buttons and a forged POST is refused, and no page logs a console
//! error. Screenshots go to target/ui-screenshots/.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use drover_controller::http::rollouts::StartBody;
use drover_controller::serve::{self, ServeConfig};
use drover_sim::data::Drift;
use drover_sim::demo::{push, rollout_and_wait, train_model};
use drover_sim::fleet::{Fleet, FleetConfig};
use serde_json::Value;
use webdriver::Browser;

const CONTROLLER_TOML: &str = r#"[retrain.sensor]
psi_threshold = 0.1
consecutive = 2
min_samples = 400
cooldown_secs = 3600
interval = "2s"
window = "10m"
cohort_key = "region"

[retrain.sensor.capture]
devices = 2
samples_per_device = 200
max_bytes_per_device = 262144
timeout = "5s"

[retrain.sensor.dataset]
label_column = "label"
min_labelled_rows = 100
max_reference_rows = 1000

[retrain.sensor.hook]
kind = "builtin"
"#;

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "POST {path}: {}", r.status());
        r.json().await.unwrap()
    }
}

fn shots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Screenshot plus the console check: any SEVERE entry fails the test.
async fn visited(b: &Browser, name: &str) {
    b.screenshot(&shots_dir().join(format!("{name}.png")))
        .await
        .unwrap();
    let log = b.console().await.unwrap();
    let severe: Vec<&str> = log
        .iter()
        .filter(|e| e.level == "SEVERE")
        .map(|e| e.message.as_str())
        .collect();
    assert!(severe.is_empty(), "console errors on {name}: {severe:?}");
}

/// Waits until the stored telemetry stops growing (traffic is paused), so
/// the page and the API read the same windows.
async fn telemetry_settled(api: &Api) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = u64::MAX;
    let mut same = 0;
    loop {
        let n = api.get("/v1/telemetry").await["merged"]["count"]
            .as_u64()
            .unwrap();
        same = if n == last { same + 1 } else { 0 };
        last = n;
        // Five unchanged reads a second apart: every 1 s window the agents
        // still held has been sent and stored.
        if same >= 5 {
            return;
        }
        assert!(Instant::now() < deadline, "telemetry never settled");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn csrf_in(html: &str) -> String {
    let at = html.find(r#"name="csrf" value=""#).expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_match_the_api_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("controller");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("controller.toml"), CONTROLLER_TOML).unwrap();
    let running = serve::start(ServeConfig::ephemeral(&data)).await.unwrap();
    let ctl = running.handle();
    let rollouts = running.rollouts();
    let base = running.http_url();
    let admin = Api {
        http: reqwest::Client::new(),
        base: base.clone(),
        token: running.admin_token().unwrap().to_string(),
    };
    let operator = admin
        .post(
            "/v1/tokens",
            serde_json::json!({"name": "ops", "role": "operator"}),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let viewer = admin
        .post(
            "/v1/tokens",
            serde_json::json!({"name": "watch", "role": "viewer"}),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();

    // The browser starts while the fleet comes up.
    let browser = tokio::spawn(Browser::start());
    let fleet = Fleet::start(
        &ctl,
        running.mqtt_addr(),
        &FleetConfig {
            agents: 8,
            inferences_per_sec: 25.0,
            feedback_rate: 0.5,
            telemetry_window_ms: 1_000,
            ..FleetConfig::default()
        },
        Some(dir.path().join("agents")),
    )
    .await
    .unwrap();
    let samples = drover_sim::data::reference_samples(2000, 1);
    let (onnx, csv, _) = train_model(&samples, false).unwrap();
    let v1 = push(&ctl, "sensor", onnx, csv.clone(), None, Some("production"))
        .await
        .unwrap();
    let (phase, _) = rollout_and_wait(
        &rollouts,
        StartBody {
            model: format!("sensor@{v1}"),
            id: Some("v1-install".into()),
            waves: Some("50,100".into()),
            bake: Some(Duration::from_secs(1)),
            device_timeout: Some(Duration::from_secs(30)),
            metrics_interval: Some(Duration::from_secs(1)),
            ..StartBody::default()
        },
        Duration::from_secs(90),
        "v1",
    )
    .await
    .unwrap();
    assert_eq!(phase, "completed");
    for d in fleet.with_label("region", "eu") {
        d.set_drift(Some(Drift {
            feature: 0,
            shift_sigma: 1.5,
        }));
    }

    // A bad v2 (labels scrambled): fails accuracy_delta at the canary and is
    // rolled back.
    let (onnx, _, _) = train_model(&samples, true).unwrap();
    let v2 = push(&ctl, "sensor", onnx, csv.clone(), Some(v1), None)
        .await
        .unwrap();
    let gates = vec![
        "error_rate_delta<=0.02".to_string(),
        "accuracy_delta>=-0.1".to_string(),
    ];
    let (phase, _) = rollout_and_wait(
        &rollouts,
        StartBody {
            model: format!("sensor@{v2}"),
            id: Some("bad-v2".into()),
            waves: Some("25,100".into()),
            bake: Some(Duration::from_secs(4)),
            gates: gates.clone(),
            min_samples: Some(100),
            device_timeout: Some(Duration::from_secs(30)),
            on_fail: Some("rollback".into()),
            metrics_interval: Some(Duration::from_secs(1)),
            rollback_rate_per_min: Some(600),
            ..StartBody::default()
        },
        Duration::from_secs(120),
        "bad v2",
    )
    .await
    .unwrap();
    assert_eq!(phase, "rolled_back");

    // A good v3 whose canary bakes for long: the one paused from the page.
    let (onnx, _, _) = train_model(&drover_sim::data::reference_samples(2000, 2), false).unwrap();
    let v3 = push(&ctl, "sensor", onnx, csv, Some(v1), None)
        .await
        .unwrap();
    admin
        .post(
            "/v1/rollouts",
            serde_json::json!({"model": format!("sensor@{v3}"), "id": "good-v3",
                "waves": "50,100", "bake": "10m", "gates": gates, "min_samples": 100}),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while admin.get("/v1/rollouts/good-v3").await["status"]["phase"]["phase"] != "baking" {
        assert!(Instant::now() < deadline, "good-v3 never reached its bake");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Stop the traffic so telemetry and drift numbers hold still while the
    // page and the API are compared.
    for d in &fleet.devices {
        d.set_paused(true);
    }
    telemetry_settled(&admin).await;

    let b = browser.await.unwrap().unwrap();
    let t0 = Instant::now();

    // Sign-in: an anonymous visit lands on the login page.
    b.goto(&format!("{base}/")).await.unwrap();
    assert!(b.url().await.unwrap().ends_with("/ui/login"));
    b.type_into("#token", "drv_not_a_token").await.unwrap();
    b.click("#login").await.unwrap();
    b.wait_text("#login-error", Duration::from_secs(10), |t| {
        t.contains("not valid")
    })
    .await
    .unwrap();
    // The refused sign-in is a 401, which Chromium logs; nothing else may be.
    for e in b.console().await.unwrap() {
        assert!(
            e.level != "SEVERE" || e.message.contains("/ui/login") && e.message.contains("401"),
            "{e:?}"
        );
    }
    b.type_into("#token", &operator).await.unwrap();
    visited(&b, "login").await;
    b.click("#login").await.unwrap();
    b.wait_text("#who", Duration::from_secs(10), |t| t == "ops")
        .await
        .unwrap();

    // Fleet.
    let devices = admin.get("/v1/devices").await;
    let devices = devices.as_array().unwrap();
    let online = devices.iter().filter(|d| d["online"] == true).count();
    assert_eq!(
        b.text("#total-devices").await.unwrap(),
        devices.len().to_string()
    );
    assert_eq!(b.text("#online").await.unwrap(), online.to_string());
    let cohorts: std::collections::BTreeSet<String> = devices
        .iter()
        .map(|d| format!("{}{}", d["labels"]["region"], d["hardware"]))
        .collect();
    assert_eq!(b.count("#cohorts tbody tr").await.unwrap(), cohorts.len());
    visited(&b, "fleet").await;

    // Devices, filtered by selector through the form.
    b.goto(&format!("{base}/ui/devices")).await.unwrap();
    assert_eq!(
        b.text("#device-count").await.unwrap(),
        devices.len().to_string()
    );
    b.type_into("#selector", "region=eu").await.unwrap();
    b.click("form.filter button").await.unwrap();
    let eu = admin.get("/v1/devices?selector=region%3Deu").await;
    let eu = eu.as_array().unwrap().len();
    assert!(eu > 0);
    b.wait_text("#device-count", Duration::from_secs(10), |t| {
        t == eu.to_string()
    })
    .await
    .unwrap();
    visited(&b, "devices").await;

    // One device: its models and its telemetry, as the API has them.
    let id = devices[0]["id"].as_str().unwrap();
    b.goto(&format!("{base}/ui/devices/{id}")).await.unwrap();
    let dev = admin.get(&format!("/v1/devices/{id}")).await;
    assert_eq!(
        b.text("#dev-active").await.unwrap(),
        dev["active"].as_str().unwrap()
    );
    let tel = admin
        .get(&format!("/v1/telemetry?device={id}&role=active"))
        .await;
    assert_eq!(
        b.text("#dev-count").await.unwrap(),
        tel["merged"]["count"].to_string()
    );
    assert!(tel["merged"]["count"].as_u64().unwrap() > 0);
    assert!(
        b.count("#latency-chart .uplot").await.unwrap() == 1,
        "uPlot drew the latency chart"
    );
    // Its last deploys and how each ended, as the API has them.
    let deploys = admin.get(&format!("/v1/devices/{id}/deploys")).await;
    let deploys = deploys.as_array().unwrap();
    assert!(!deploys.is_empty(), "the device was deployed to");
    assert_eq!(
        b.count("#dev-deploys tbody tr").await.unwrap(),
        deploys.len()
    );
    let newest = &deploys[0];
    let row = format!(r#"#dev-deploys tr[data-seq="{}"]"#, newest["seq"]);
    assert_eq!(
        b.text(&format!("{row} td.outcome")).await.unwrap(),
        newest["result"].as_str().unwrap_or("no answer yet")
    );
    visited(&b, "device").await;

    // Models and one manifest.
    let models = admin.get("/v1/models").await;
    let sensor: Vec<&Value> = models
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == "sensor")
        .collect();
    b.goto(&format!("{base}/ui/models")).await.unwrap();
    assert_eq!(
        b.count(r#"section[data-model="sensor"] tr[data-version]"#)
            .await
            .unwrap(),
        sensor.len()
    );
    assert!(b.exists("svg.lineage").await.unwrap());
    visited(&b, "models").await;
    b.goto(&format!("{base}/ui/models/sensor/{v1}"))
        .await
        .unwrap();
    let m = admin.get(&format!("/v1/models/sensor/{v1}")).await;
    assert_eq!(
        b.text("#model-size").await.unwrap(),
        format!("{} bytes", m["size"])
    );
    assert_eq!(b.text("#model-aliases").await.unwrap(), "production");
    visited(&b, "model").await;

    // Rollouts.
    let list = admin.get("/v1/rollouts").await;
    b.goto(&format!("{base}/ui/rollouts")).await.unwrap();
    assert_eq!(
        b.text("#rollout-count").await.unwrap(),
        list.as_array().unwrap().len().to_string()
    );
    visited(&b, "rollouts").await;

    // The failed rollout: its gate's numbers and the rollback.
    let bad = admin.get("/v1/rollouts/bad-v2").await;
    b.goto(&format!("{base}/ui/rollouts/bad-v2")).await.unwrap();
    assert!(b.text("#phase").await.unwrap().starts_with("rolled_back"));
    let gate = bad["status"]["last_gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"]["metric"] == "accuracy_delta")
        .expect("accuracy gate in the API");
    assert_eq!(gate["decision"], "fail");
    let row = r#"#last-gates tr[data-gate="accuracy_delta"]"#;
    assert_eq!(b.text(&format!("{row} td.decision")).await.unwrap(), "fail");
    assert_eq!(
        b.text(&format!("{row} td.value")).await.unwrap(),
        format!("{:.4}", gate["value"].as_f64().unwrap())
    );
    assert_eq!(
        b.text(&format!("{row} td.threshold")).await.unwrap(),
        gate["threshold"].as_f64().unwrap().to_string()
    );
    // Each side's accuracy behind the delta, as the API reports them.
    for side in ["canary", "control"] {
        let v = gate[format!("{side}_value")]
            .as_f64()
            .unwrap_or_else(|| panic!("{side} accuracy in the API: {gate}"));
        assert_eq!(
            b.text(&format!("{row} td.{side}-value")).await.unwrap(),
            format!("{v:.4}")
        );
    }
    assert_eq!(
        b.text("#rollback-done").await.unwrap(),
        bad["status"]["rollback"]["counts"]["done"].to_string()
    );
    assert!(
        bad["status"]["rollback"]["counts"]["done"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(b.exists("#gate-history").await.unwrap());
    assert!(
        b.count(".chart .uplot").await.unwrap() >= 2,
        "gate charts drawn"
    );
    // A finished rollout offers no pause.
    assert!(!b.exists("#action-pause").await.unwrap());
    visited(&b, "rollout").await;

    // Pause from the page; the API sees it.
    b.goto(&format!("{base}/ui/rollouts/good-v3"))
        .await
        .unwrap();
    b.click("#action-pause").await.unwrap();
    b.wait_text("#phase", Duration::from_secs(10), |t| {
        t.starts_with("paused")
    })
    .await
    .unwrap();
    let v3_status = admin.get("/v1/rollouts/good-v3").await;
    assert_eq!(v3_status["status"]["phase"]["phase"], "paused");
    assert!(
        v3_status["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"]["kind"] == "operator" && e["event"]["by"] == "ops"),
        "the pause is audited under the session's token"
    );
    visited(&b, "rollout-paused").await;
    // Live: a resume through the API reaches the open page by the event
    // stream (no reload), then the page pauses it again.
    admin
        .post("/v1/rollouts/good-v3/resume", serde_json::json!({}))
        .await;
    b.wait_text("#phase", Duration::from_secs(20), |t| {
        !t.starts_with("paused")
    })
    .await
    .unwrap();
    b.click("#action-pause").await.unwrap();
    b.wait_text("#phase", Duration::from_secs(10), |t| {
        t.starts_with("paused")
    })
    .await
    .unwrap();
    assert_eq!(
        admin.get("/v1/rollouts/good-v3").await["status"]["phase"]["phase"],
        "paused"
    );
    b.goto(&format!("{base}/")).await.unwrap();
    assert!(b.exists(r#"li[data-kind="paused"]"#).await.unwrap());

    // Drift.
    let drift = admin.get("/v1/drift").await;
    let report = &drift["reports"][0]["fleet"]["report"];
    b.goto(&format!("{base}/ui/drift")).await.unwrap();
    assert_eq!(
        b.text("#fleet-score-sensor").await.unwrap(),
        format!("{:.4}", report["fleet_score"].as_f64().unwrap())
    );
    assert_eq!(
        b.text("#drift-share-sensor").await.unwrap(),
        format!(
            "{} / {}",
            report["devices"]["drifting"], report["devices"]["evaluated"]
        )
    );
    let features =
        report["features"].as_array().unwrap().len() + usize::from(!report["output"].is_null());
    assert_eq!(b.count("#heatmap-sensor tbody tr").await.unwrap(), features);
    // The drifted cohort is hotter than the others on the shifted feature.
    let eu_psi: f64 = b
        .text(r#"#heatmap-sensor tr[data-feature] td[data-scope="region=eu"]"#)
        .await
        .unwrap()
        .parse()
        .unwrap();
    let us_psi: f64 = b
        .text(r#"#heatmap-sensor tr[data-feature] td[data-scope="region=us"]"#)
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(eu_psi > us_psi, "eu {eu_psi} vs us {us_psi}");
    visited(&b, "drift").await;

    // Retraining.
    b.goto(&format!("{base}/ui/retraining")).await.unwrap();
    let mut shown = b.text("#job-count").await.unwrap();
    let mut jobs = admin.get("/v1/retrain?limit=200").await["jobs"]
        .as_array()
        .unwrap()
        .len();
    if shown != jobs.to_string() {
        // The drift policy may have started a job between the two reads.
        b.goto(&format!("{base}/ui/retraining")).await.unwrap();
        shown = b.text("#job-count").await.unwrap();
        jobs = admin.get("/v1/retrain?limit=200").await["jobs"]
            .as_array()
            .unwrap()
            .len();
    }
    assert_eq!(shown, jobs.to_string());
    visited(&b, "retraining").await;
    eprintln!("browser part: {:.1}s", t0.elapsed().as_secs_f64());

    // A viewer reads and cannot act: no buttons, a forged POST is refused.
    b.delete_cookies().await.unwrap();
    b.goto(&format!("{base}/ui/rollouts/good-v3"))
        .await
        .unwrap();
    assert!(b.url().await.unwrap().ends_with("/ui/login"));
    b.type_into("#token", &viewer).await.unwrap();
    b.click("#login").await.unwrap();
    b.wait_text("#role", Duration::from_secs(10), |t| t == "viewer")
        .await
        .unwrap();
    b.goto(&format!("{base}/ui/rollouts/good-v3"))
        .await
        .unwrap();
    assert!(!b.exists("#actions").await.unwrap());
    visited(&b, "rollout-viewer").await;
    b.quit().await;

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = |token: String| {
        let http = http.clone();
        let url = format!("{base}/ui/rollouts/good-v3");
        async move {
            http.get(url)
                .header("cookie", format!("drover_session={token}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let forge = |token: String, csrf: Option<String>| {
        let http = http.clone();
        let url = format!("{base}/ui/rollouts/good-v3/resume");
        async move {
            let body = csrf.map(|c| format!("csrf={c}")).unwrap_or_default();
            http.post(url)
                .header("cookie", format!("drover_session={token}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let viewer_csrf = csrf_in(&page(viewer.clone()).await);
    assert_eq!(forge(viewer.clone(), Some(viewer_csrf)).await, 403);
    // An operator's session without the CSRF token (a cross-site form).
    assert_eq!(forge(operator.clone(), None).await, 403);
    let other = csrf_in(&page(viewer.clone()).await);
    assert_eq!(forge(operator.clone(), Some(other)).await, 403);
    assert_eq!(
        admin.get("/v1/rollouts/good-v3").await["status"]["phase"]["phase"],
        "paused"
    );
    // With its own token the operator's resume goes through.
    let op_csrf = csrf_in(&page(operator.clone()).await);
    assert_eq!(forge(operator.clone(), Some(op_csrf)).await, 303);
    assert_ne!(
        admin.get("/v1/rollouts/good-v3").await["status"]["phase"]["phase"],
        "paused"
    );

    // Login CSRF: another site posting a (valid) token to the sign-in form
    // cannot send the form's SameSite cookie, so no session is set.
    let login = |cookie: Option<String>, field: Option<String>| {
        let http = http.clone();
        let token = operator.clone();
        let url = format!("{base}/ui/login");
        async move {
            let mut body = format!("token={token}");
            if let Some(f) = field {
                body.push_str(&format!("&login_csrf={f}"));
            }
            let mut req = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
            if let Some(c) = cookie {
                req = req.header("cookie", format!("drover_login={c}"));
            }
            let r = req.send().await.unwrap();
            let session = r
                .headers()
                .get_all("set-cookie")
                .iter()
                .any(|v| v.to_str().unwrap().starts_with("drover_session=drv"));
            (r.status().as_u16(), session)
        }
    };
    let form = http.get(format!("{base}/ui/login")).send().await.unwrap();
    let nonce = form
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("drover_login="))
        .and_then(|v| v.split(';').next())
        .expect("the sign-in form sets its login cookie")
        .to_string();
    assert!(
        form.text().await.unwrap().contains(&nonce),
        "and puts it in the form"
    );
    assert_eq!(login(None, Some(nonce.clone())).await, (403, false));
    assert_eq!(login(Some(nonce.clone()), None).await, (403, false));
    assert_eq!(
        login(Some("0".repeat(32)), Some(nonce.clone())).await,
        (403, false)
    );
    assert_eq!(login(Some(nonce.clone()), Some(nonce)).await, (303, true));

    fleet.shutdown().await;
    running.shutdown().await;
}

/// Server-side render time of every page with 2,000 registered devices and
/// 50 versions (a lineage chain) plus a rollout over the whole fleet.
/// `cargo test -p drover-sim --test dashboard_browser -- --ignored --nocapture`;
/// numbers in BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: 2,000 devices, 50 versions; prints render times"]
async fn dashboard_render_bench_2000_devices_50_versions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("controller");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("controller.toml"), CONTROLLER_TOML).unwrap();
    let running = serve::start(ServeConfig::ephemeral(&data)).await.unwrap();
    let ctl = running.handle();
    let base = running.http_url();
    let token = running.admin_token().unwrap().to_string();
    let t = Instant::now();
    let regions = ["eu", "us", "apac"];
    let hardware = ["rpi4", "jetson"];
    for i in 0..2000 {
        let labels = [
            ("region".to_string(), regions[i % 3].to_string()),
            ("hardware".to_string(), hardware[i % 2].to_string()),
        ]
        .into_iter()
        .collect();
        ctl.register_device(
            &drover_protocol::DeviceId::new(format!("dev-{i:04}")).unwrap(),
            labels,
        )
        .await
        .unwrap();
    }
    eprintln!(
        "2000 devices registered in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let samples = drover_sim::data::reference_samples(1000, 1);
    let (onnx, csv, _) = train_model(&samples, false).unwrap();
    let mut parent = None;
    for _ in 0..50 {
        parent = Some(
            push(
                &ctl,
                "sensor",
                onnx.clone(),
                csv.clone(),
                parent,
                Some("production"),
            )
            .await
            .unwrap(),
        );
    }
    eprintln!("50 versions pushed in {:.1}s", t.elapsed().as_secs_f64());
    let http = reqwest::Client::new();
    let post = http
        .post(format!("{base}/v1/rollouts"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"model": "sensor@50", "id": "big", "waves": "1,10,100"}))
        .send()
        .await
        .unwrap();
    assert!(post.status().is_success());
    let pages = [
        "/",
        "/ui/devices",
        "/ui/devices?selector=region%3Deu",
        "/ui/devices/dev-0001",
        "/ui/models",
        "/ui/models/sensor/50",
        "/ui/rollouts",
        "/ui/rollouts/big",
        "/ui/drift",
        "/ui/retraining",
    ];
    // The JSON API answering the same questions is the baseline.
    let api = [
        "/v1/devices",
        "/v1/models",
        "/v1/rollouts/big",
        "/v1/drift",
        "/v1/retrain",
    ];
    eprintln!(
        "{:<34} {:>9} {:>9} {:>9}",
        "page", "median ms", "max ms", "KiB"
    );
    for p in pages.iter().chain(api.iter()) {
        let (cookie, bearer) = if p.starts_with("/v1/") {
            (String::new(), token.clone())
        } else {
            (format!("drover_session={token}"), String::new())
        };
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..7 {
            let t = Instant::now();
            let r = http
                .get(format!("{base}{p}"))
                .header("cookie", &cookie)
                .bearer_auth(&bearer)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{p}: {}", r.status());
            size = r.bytes().await.unwrap().len();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        eprintln!(
            "{p:<34} {:>9.1} {:>9.1} {:>9}",
            times[times.len() / 2],
            times[times.len() - 1],
            size / 1024
        );
    }
    running.shutdown().await;
}
