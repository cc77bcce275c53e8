//! Commands that never took effect: lost with a device's session, expired
//! before they arrived, or never sent because the device was offline when
//! its wave started. None of them is an install failure, and none may leave
//! a rollout waiting for an operator once the devices are back.

use super::*;

fn wave0(n: usize, k: usize) -> Vec<DeviceId> {
    Fleet::new(n).ids_in_wave(0).into_iter().take(k).collect()
}

fn paused_cause(f: &Fleet) -> Option<PauseCause> {
    match f.rollout.phase() {
        Phase::Paused { cause, .. } => Some(*cause),
        _ => None,
    }
}

/// Drives until `dev` has been sent `n` deploys.
fn until_commanded(f: &mut Fleet, dev: &DeviceId, n: usize) {
    for _ in 0..10_000 {
        if f.deploys_to(dev) >= n {
            return;
        }
        f.pump();
        match f.next_wake() {
            Some(t) => f.now = f.now.max(t),
            None => break,
        }
    }
    panic!("{dev} got {} deploys, not {n}", f.deploys_to(dev));
}

#[test]
fn offline_at_wave_start_pauses_then_resumes_once_enough_are_back() {
    let away = wave0(3000, 3);
    let a = away.clone();
    let mut f = Fleet::build(
        3000,
        |_| {},
        move |i, d| {
            if a.contains(&id(i)) {
                d.online = false;
            }
        },
        BTreeSet::new(),
    );
    f.drive_until_idle(50_000);
    assert_eq!(paused_cause(&f), Some(PauseCause::TooManySilent));
    assert!(away.iter().all(|d| f.deploys_to(d) == 0));

    // One back: 2 of 30 still silent (6.7 % > 5 %), so still paused; the
    // device waits queued, uncommanded.
    f.now = f.now.plus_ms(10 * MIN);
    f.change(&away[0], |s| s.online = true);
    f.pump();
    assert_eq!(paused_cause(&f), Some(PauseCause::TooManySilent));
    assert_eq!(f.deploys_to(&away[0]), 0);

    // A second one back: 1 of 30 (within the limit). The pause's cause has
    // cleared, so the wave carries on by itself and both get the candidate.
    f.change(&away[1], |s| s.online = true);
    f.pump();
    assert!(
        matches!(f.rollout.phase(), Phase::Deploying { .. }),
        "{:?}",
        f.rollout.phase()
    );
    assert!(f.kinds().contains(&"resumed".to_string()));
    assert_eq!(f.deploys_to(&away[0]), 1);
    assert_eq!(f.deploys_to(&away[1]), 1);
    f.drive_until_idle(50_000);
    assert!(is_completed(f.rollout.phase()), "{:?}", f.rollout.phase());
    assert_eq!(f.devices[&away[0]].version, Some(NEW));
    assert_eq!(f.devices[&away[1]].version, Some(NEW));

    // The last one catches up after the end, as any late device does.
    f.change(&away[2], |s| s.online = true);
    f.drive_until_idle(50_000);
    assert_eq!(f.devices[&away[2]].version, Some(NEW));
}

#[test]
fn mute_devices_keep_a_silent_pause_until_they_answer() {
    // Silence by timeout is not cleared by time passing: only news about
    // the devices (back online after being seen, a late report) resumes.
    let mute = wave0(3000, 3);
    let m = mute.clone();
    let mut f = Fleet::build(
        3000,
        |_| {},
        move |i, d| {
            if m.contains(&id(i)) {
                d.behaviour = Behaviour::Mute;
            }
        },
        BTreeSet::new(),
    );
    f.drive_until_idle(50_000);
    assert_eq!(paused_cause(&f), Some(PauseCause::TooManySilent));
    f.drive_for(60 * MIN);
    assert_eq!(paused_cause(&f), Some(PauseCause::TooManySilent));
    // Two answer late (the install did happen): within the limit again.
    for d in &mute[..2] {
        f.rollout
            .handle_deploy_report(f.now, d, DeployOutcome::Active { version: NEW })
            .unwrap();
    }
    f.pump();
    assert!(f.kinds().contains(&"resumed".to_string()));
    f.drive_until_idle(50_000);
    assert!(is_completed(f.rollout.phase()), "{:?}", f.rollout.phase());
}

#[test]
fn a_lost_command_is_sent_again_at_once_without_counting_an_attempt() {
    let dev = wave0(3000, 1).remove(0);
    let d0 = dev.clone();
    let mut f = Fleet::build(
        3000,
        |_| {},
        move |i, d| {
            if id(i) == d0 {
                d.behaviour = Behaviour::Mute;
            }
        },
        BTreeSet::new(),
    );
    until_commanded(&mut f, &dev, 1);
    let at = f.now;
    f.devices.get_mut(&dev).unwrap().behaviour = Behaviour::Good;
    assert!(f.rollout.handle_command_lost(at, &dev, NEW).unwrap());
    f.pump();
    assert_eq!(f.deploys_to(&dev), 2, "sent again at once");
    assert_eq!(f.sent.last().map(|(t, _)| *t), Some(at));
    // Lost about another version: nothing to do.
    assert!(!f.rollout.handle_command_lost(at, &dev, OLD).unwrap());
    f.pump();
    assert_eq!(f.deploys_to(&dev), 2);
    f.drive_until_idle(50_000);
    assert!(is_completed(f.rollout.phase()), "{:?}", f.rollout.phase());
    assert!(!f.kinds().contains(&"device_retry".to_string()));
    assert!(!f.kinds().contains(&"device_silent".to_string()));
    // Once the device is done, a Hello naming an old command changes nothing.
    assert!(!f.rollout.handle_command_lost(f.now, &dev, NEW).unwrap());
    f.pump();
    assert_eq!(f.deploys_to(&dev), 2);
}

#[test]
fn an_expired_command_gets_a_fresh_one_not_a_failure() {
    let dev = wave0(3000, 1).remove(0);
    let d0 = dev.clone();
    let mut f = Fleet::build(
        3000,
        |_| {},
        move |i, d| {
            if id(i) == d0 {
                d.behaviour = Behaviour::Mute;
            }
        },
        BTreeSet::new(),
    );
    until_commanded(&mut f, &dev, 1);
    let at = f.now;
    f.devices.get_mut(&dev).unwrap().behaviour = Behaviour::Good;
    f.rollout
        .handle_command_expired(at, &dev, NEW, "command_expired: command 1 expired")
        .unwrap();
    f.pump();
    assert_eq!(f.deploys_to(&dev), 2, "a fresh command at once");
    assert_eq!(f.sent.last().map(|(t, _)| *t), Some(at));
    assert!(f.kinds().contains(&"device_retry".to_string()));
    f.drive_until_idle(50_000);
    assert!(is_completed(f.rollout.phase()), "{:?}", f.rollout.phase());
    assert_eq!(f.devices[&dev].version, Some(NEW));
    assert!(f.rollout.status().waves.iter().all(|w| w.failed == 0));

    // The same answer again once the device is done (an old command of
    // ours replayed to it that was still newer than what it accepted cannot
    // exist then; whatever arrives late) changes nothing: a finished device
    // is never failed and never commanded again.
    let before = f.rollout.status();
    f.rollout
        .handle_command_expired(f.now, &dev, NEW, "command_expired: late")
        .unwrap();
    f.pump();
    assert_eq!(f.rollout.status(), before);
    assert_eq!(f.deploys_to(&dev), 2);
}

#[test]
fn a_device_finding_every_command_expired_fails_with_that_reason() {
    // Its idea of the controller's clock is off: every fresh command looks
    // expired too. Bounded by max_attempts, then a readable failure (one of
    // 30 in the canary is within max_failed, so the rollout goes on).
    let dev = wave0(3000, 1).remove(0);
    let d0 = dev.clone();
    let mut f = Fleet::build(
        3000,
        |_| {},
        move |i, d| {
            if id(i) == d0 {
                d.behaviour = Behaviour::Mute;
            }
        },
        BTreeSet::new(),
    );
    let max = f.rollout.spec().max_attempts as usize;
    for n in 1..=max {
        until_commanded(&mut f, &dev, n);
        f.rollout
            .handle_command_expired(f.now, &dev, NEW, "command_expired")
            .unwrap();
        f.pump();
    }
    assert_eq!(f.deploys_to(&dev), max);
    let failed = f.audit.iter().find_map(|e| match &e.event {
        AuditKind::DeviceFailed { device, reason, .. } if device == &dev => Some(reason.clone()),
        _ => None,
    });
    let reason = failed.expect("device failed");
    assert!(reason.contains("expired"), "{reason}");
    f.drive_until_idle(50_000);
    assert!(is_completed(f.rollout.phase()), "{:?}", f.rollout.phase());
    assert_eq!(f.deploys_to(&dev), max);
}
