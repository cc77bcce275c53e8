//! What an authenticated device may do through the gate: connect only with
//! a client id bound to its username, leave a will only on its own status
//! topic, publish only on its own `up`/`status`, subscribe only to its own
//! `down`/`chunk` (exact topics: no wildcards, so no `drover/#`).

use drover_protocol::topic::{Channel, Topic};
use drover_protocol::{DeviceId, FleetId};

/// The client ids a device may use: its id, or the agent's
/// `drover-FLEET-DEVICE`. Anything else could kick another session off.
pub(crate) fn client_id_bound(fleet: &FleetId, device: &DeviceId, client_id: &str) -> bool {
    client_id == device.as_str() || client_id == format!("drover-{fleet}-{device}")
}

fn own(fleet: &FleetId, device: &DeviceId, topic: &str, allowed: [Channel; 2]) -> bool {
    match Topic::parse(topic) {
        Ok(t) => &t.fleet == fleet && &t.device == device && allowed.contains(&t.channel),
        Err(_) => false,
    }
}

/// A device publishes (or leaves a will) only on its own `up` and `status`.
pub(crate) fn may_publish(fleet: &FleetId, device: &DeviceId, topic: &str) -> bool {
    own(fleet, device, topic, [Channel::Up, Channel::Status])
}

/// A device subscribes only to its own `down` and `chunk`.
pub(crate) fn may_subscribe(fleet: &FleetId, device: &DeviceId, filter: &str) -> bool {
    own(fleet, device, filter, [Channel::Down, Channel::Chunk])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_confined_to_its_four_topics() {
        let f = FleetId::new("plant").unwrap();
        let d = DeviceId::new("dev-1").unwrap();
        assert!(client_id_bound(&f, &d, "dev-1"));
        assert!(client_id_bound(&f, &d, "drover-plant-dev-1"));
        for bad in [
            "dev-2",
            "drover-plant-dev-2",
            "",
            "drover-other-dev-1",
            "dev-1x",
        ] {
            assert!(!client_id_bound(&f, &d, bad), "{bad}");
        }
        assert!(may_publish(&f, &d, "drover/plant/d/dev-1/up"));
        assert!(may_publish(&f, &d, "drover/plant/d/dev-1/status"));
        assert!(may_subscribe(&f, &d, "drover/plant/d/dev-1/down"));
        assert!(may_subscribe(&f, &d, "drover/plant/d/dev-1/chunk"));
        for bad in [
            "drover/plant/d/dev-2/up",
            "drover/plant/d/dev-1/down",
            "drover/plant/d/dev-1/chunk",
            "drover/other/d/dev-1/up",
            "drover/plant/d/+/up",
            "drover/#",
            "#",
            "$SYS/x",
        ] {
            assert!(!may_publish(&f, &d, bad), "publish {bad}");
        }
        for bad in [
            "drover/plant/d/dev-2/down",
            "drover/plant/d/dev-1/up",
            "drover/plant/d/+/down",
            "drover/plant/d/dev-1/#",
            "drover/#",
            "#",
            "+/+/+/+/+",
        ] {
            assert!(!may_subscribe(&f, &d, bad), "subscribe {bad}");
        }
    }
}
