//! Agent rollouts: the same engine, with agent versions packed into
//! `Version`s, fallbacks counted per wave, and metrics read from any model.

use drover_protocol::manifest::AgentVersion;

use super::*;

fn agent_fleet(n: usize) -> Fleet {
    Fleet::build(
        n,
        |s| {
            let mut a = RolloutSpec::agent("a1", AgentVersion::from_packed(NEW).unwrap());
            a.selector = s.selector.clone();
            *s = a;
        },
        |_, _| {},
        BTreeSet::new(),
    )
}

#[test]
fn an_agent_rollout_has_no_shadow_and_labels_versions_as_agents() {
    let mut spec = RolloutSpec::agent("a1", AgentVersion::parse("0.2.0").unwrap());
    assert_eq!(spec.target_label(), "agent@0.2.0");
    assert_eq!(spec.version_label(Version(1 << 16)), "0.1.0");
    assert_eq!(spec.validate(), Ok(()));
    spec.shadow_ms = Some(60_000);
    assert_eq!(spec.validate(), Err(SpecError::AgentShadow));
    let mut other = RolloutSpec::agent("a1", AgentVersion::parse("0.2.0").unwrap());
    other.model = ModelName::new("sensor").unwrap();
    assert!(matches!(other.validate(), Err(SpecError::AgentTarget(_))));
}

#[test]
fn an_agent_rollout_completes_comparing_devices_whatever_model_they_serve() {
    let mut f = agent_fleet(500);
    f.drive_until_idle(50_000);
    assert!(is_completed(f.rollout.phase()), "{:?}", f.rollout.phase());
    assert!(!f.requests.is_empty());
    assert!(f.requests.iter().all(|r| r.any_model));
    let st = f.rollout.status();
    assert_eq!(st.target_label, "agent@0.0.2");
    for w in &st.waves {
        assert_eq!(w.versions.get("0.0.2"), Some(&w.targeted), "{w:?}");
        assert_eq!(w.fallbacks, 0);
    }
}

#[test]
fn fallbacks_fail_the_canary_are_counted_and_roll_back_in_stages() {
    let mut f = agent_fleet(2000);
    f.drive_until_phase(50_000, |p| {
        matches!(
            p,
            Phase::Baking {
                stage: Stage::Wave(0),
                ..
            }
        )
    });
    // Two canary devices' new agents do not come up: they run the old one
    // again by themselves and say so.
    let canary = f.ids_in_wave(0);
    for d in canary.iter().take(2) {
        f.devices.get_mut(d).unwrap().version = Some(OLD);
        f.rollout
            .handle_deploy_report(
                f.now,
                d,
                DeployOutcome::FellBack {
                    to: Some(OLD),
                    reason: "agent_start_failed: started 3 times without confirming".into(),
                },
            )
            .unwrap();
    }
    let st = f.rollout.status();
    assert_eq!(st.waves[0].fallbacks, 2);
    assert_eq!(st.waves[0].failed, 2);
    assert_eq!(st.waves[0].versions.get("0.0.1"), Some(&2));
    f.drive_until_idle(50_000);
    assert!(matches!(f.rollout.phase(), Phase::RolledBack { .. }));
    // The rest of the canary goes back (commanded, explicit rollbacks to
    // the old agent); the devices that fell back are not commanded again.
    let rolled: BTreeSet<DeviceId> = f.rollbacks().into_iter().map(|(_, d, _)| d).collect();
    assert_eq!(rolled.len(), canary.len() - 2);
    assert!(canary.iter().take(2).all(|d| !rolled.contains(d)));
    assert!(f.rollbacks().iter().all(|(_, _, to)| *to == OLD));
    let st = f.rollout.status();
    assert_eq!(st.waves[0].fallbacks, 2);
    assert_eq!(
        st.waves[0].versions.get("0.0.1"),
        Some(&st.waves[0].targeted)
    );
}
