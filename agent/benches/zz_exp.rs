#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
use drover_agent::InferRequest;
use drover_agent::clock::Clock;
use drover_agent::core::window::RecorderConfig;
use drover_agent::runtime::{LoadedModel, Runtime};
use drover_protocol::manifest::Task;
use drover_protocol::{Timestamp, testkit};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;
use tract_onnx::prelude::*;
const ROW: [f32; 4] = [58.3, 1.8, 11.3, 61.0];
fn t(name: &str, mut f: impl FnMut()) {
    let mut best = f64::MAX;
    for _ in 0..20 {
        let s = Instant::now();
        for _ in 0..5000 {
            f();
        }
        best = best.min(s.elapsed().as_secs_f64() * 1e9 / 5000.0);
    }
    println!("{name:30} {best:8.0} ns");
}
fn main() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/models/sensor_clf_v1.onnx"
    ))
    .unwrap();
    let mut m = testkit::manifest("sensor", 1, &bytes, Timestamp(0));
    if let Task::Classification { labels, .. } = &mut m.task {
        *labels = vec!["a".into(), "b".into(), "c".into()];
    }
    m.health_checks.samples.clear();
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .with_input_fact(0, f32::fact([1, 4]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let lm = Arc::new(LoadedModel::load(&bytes, m, RecorderConfig::default()).unwrap());
    let rt = Runtime::new(Clock::new());
    rt.set_active(Some(lm.clone()));
    if std::env::var("ONLY_INFER").is_ok() {
        let s = Instant::now();
        while s.elapsed().as_secs() < 4 {
            for _ in 0..1000 {
                black_box(rt.infer(InferRequest::new(ROW.to_vec())).unwrap());
            }
        }
        return;
    }
    let mut ratios = vec![];
    for _ in 0..40 {
        let a = {
            let s = Instant::now();
            for _ in 0..1000 {
                let x = Tensor::from_shape(&[1, 4], &ROW).unwrap();
                black_box(plan.run(tvec!(x.into())).unwrap());
            }
            s.elapsed().as_secs_f64()
        };
        let b = {
            let s = Instant::now();
            for _ in 0..1000 {
                black_box(rt.infer(InferRequest::new(ROW.to_vec())).unwrap());
            }
            s.elapsed().as_secs_f64()
        };
        ratios.push((b / a, (b - a) * 1e6));
    }
    ratios.sort_by(|x, y| x.0.total_cmp(&y.0));
    println!(
        "median ratio {:.3} extra {:.0} ns",
        ratios[20].0, ratios[20].1
    );
    t("bare", || {
        let x = Tensor::from_shape(&[1, 4], &ROW).unwrap();
        black_box(plan.run(tvec!(x.into())).unwrap());
    });
    t("lm.run", || {
        black_box(lm.run(&ROW).unwrap());
    });
    t("lm.run+predict", || {
        let o = lm.run(&ROW).unwrap();
        black_box(lm.predict(&o));
    });
    t("rt.infer", || {
        black_box(rt.infer(InferRequest::new(ROW.to_vec())).unwrap());
    });
    t("bare", || {
        let x = Tensor::from_shape(&[1, 4], &ROW).unwrap();
        black_box(plan.run(tvec!(x.into())).unwrap());
    });
    let o = lm.run(&ROW).unwrap();
    t("predict only", || {
        black_box(lm.predict(black_box(&o)));
    });
    t("primary only", || {
        black_box(lm.primary_values(black_box(&o)));
    });
    t("instant x2", || {
        let a = Instant::now();
        black_box(a);
        black_box(Instant::now());
    });
    t("active clone", || {
        black_box(rt.active());
    });
}
