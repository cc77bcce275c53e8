//! Who may call which route: the operator roles and the one route table.
//! Pure: the HTTP layer ([`crate::auth`]) looks the caller's token up and
//! asks [`authorize`] for the verdict.

use std::fmt;
use std::str::FromStr;

/// An operator role. Ordered: each role may do everything the roles below it
/// may (`Viewer < Operator < Admin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OperatorRole {
    /// Reads: models, devices, telemetry, drift, rollouts, jobs, metrics.
    Viewer,
    /// Changes what runs: push, aliases, deploy, rollouts, retraining.
    Operator,
    /// Changes who may act: tokens, signing keys, device registration and
    /// credentials, broker ACL files.
    Admin,
}

impl OperatorRole {
    /// The role's name as written in tokens, flags and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Viewer => "viewer",
            OperatorRole::Operator => "operator",
            OperatorRole::Admin => "admin",
        }
    }
}

impl fmt::Display for OperatorRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OperatorRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(OperatorRole::Viewer),
            "operator" => Ok(OperatorRole::Operator),
            "admin" => Ok(OperatorRole::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected viewer, operator or admin"
            )),
        }
    }
}

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed (liveness only).
    Public,
    /// A token of at least this role.
    Role(OperatorRole),
}

/// One row of the route table: method, path pattern (`{x}` matches one
/// segment), minimum access.
#[derive(Debug, Clone, Copy)]
pub struct RouteRule {
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path pattern.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

const fn rule(method: &'static str, path: &'static str, access: Access) -> RouteRule {
    RouteRule {
        method,
        path,
        access,
    }
}

use Access::{Public, Role};
use OperatorRole::{Admin, Operator, Viewer};

/// Every route of the API and its minimum role. `controller/API.md` lists
/// the same; the attack suite loops over this table.
pub const ROUTES: &[RouteRule] = &[
    rule("GET", "/healthz", Public),
    rule("GET", "/metrics", Role(Viewer)),
    rule("GET", "/v1/keys", Role(Viewer)),
    rule("POST", "/v1/keys/init", Role(Admin)),
    rule("POST", "/v1/keys/rotate", Role(Admin)),
    rule("POST", "/v1/keys/rotate/prepare", Role(Admin)),
    rule("POST", "/v1/models", Role(Operator)),
    rule("GET", "/v1/models", Role(Viewer)),
    rule("GET", "/v1/models/{name}/{version}", Role(Viewer)),
    rule("GET", "/v1/models/{name}/{version}/artifact", Role(Viewer)),
    rule("PUT", "/v1/models/{name}/aliases/{alias}", Role(Operator)),
    rule("POST", "/v1/devices", Role(Admin)),
    rule("GET", "/v1/devices", Role(Viewer)),
    rule("GET", "/v1/devices/{id}", Role(Viewer)),
    rule("PUT", "/v1/devices/{id}/labels", Role(Admin)),
    rule("GET", "/v1/devices/{id}/deploys", Role(Viewer)),
    rule("GET", "/v1/broker/acl", Role(Admin)),
    rule("POST", "/v1/deploy", Role(Operator)),
    rule("GET", "/v1/deployments/{id}", Role(Viewer)),
    rule("GET", "/v1/telemetry", Role(Viewer)),
    rule("POST", "/v1/agents", Role(Operator)),
    rule("GET", "/v1/agents", Role(Viewer)),
    rule("POST", "/v1/agents/update", Role(Operator)),
    rule("POST", "/v1/rollouts", Role(Operator)),
    rule("GET", "/v1/rollouts", Role(Viewer)),
    rule("GET", "/v1/rollouts/{id}", Role(Viewer)),
    rule("POST", "/v1/rollouts/{id}/{verb}", Role(Operator)),
    rule("GET", "/v1/drift", Role(Viewer)),
    rule("GET", "/v1/drift/history", Role(Viewer)),
    rule("GET", "/v1/retrain", Role(Viewer)),
    rule("POST", "/v1/retrain", Role(Operator)),
    rule("GET", "/v1/retrain/{id}", Role(Viewer)),
    rule("GET", "/v1/tokens", Role(Admin)),
    rule("POST", "/v1/tokens", Role(Admin)),
    rule("DELETE", "/v1/tokens/{name}", Role(Admin)),
];

fn matches(pattern: &str, path: &str) -> bool {
    let mut p = pattern.split('/');
    let mut s = path.split('/');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) => {
                let wildcard = a.starts_with('{') && a.ends_with('}');
                if !(wildcard && !b.is_empty() || a == b) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// The access `method path` requires. A request not in the table (a 404,
/// or a method the route lacks) still needs a token, so an anonymous caller
/// learns nothing about which routes exist: a viewer token for reads, an
/// admin token for anything else, so a route someone forgets to list here
/// fails closed rather than open.
pub fn required(method: &str, path: &str) -> Access {
    ROUTES
        .iter()
        .find(|r| r.method.eq_ignore_ascii_case(method) && matches(r.path, path))
        .map_or_else(
            || {
                if method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD") {
                    Access::Role(Viewer)
                } else {
                    Access::Role(Admin)
                }
            },
            |r| r.access,
        )
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No valid token (HTTP 401).
    Unauthenticated,
    /// A valid token whose role is too low (HTTP 403).
    Forbidden {
        /// What the route needs.
        needs: OperatorRole,
        /// What the caller has.
        has: OperatorRole,
    },
}

/// The verdict for a caller holding `caller` (None: no valid token).
pub fn authorize(access: Access, caller: Option<OperatorRole>) -> Result<(), Denied> {
    match (access, caller) {
        (Access::Public, _) => Ok(()),
        (Access::Role(_), None) => Err(Denied::Unauthenticated),
        (Access::Role(needs), Some(has)) if has >= needs => Ok(()),
        (Access::Role(needs), Some(has)) => Err(Denied::Forbidden { needs, has }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Viewer < Operator && Operator < Admin);
        for r in [Viewer, Operator, Admin] {
            assert_eq!(r.as_str().parse::<OperatorRole>(), Ok(r));
        }
        assert!("root".parse::<OperatorRole>().is_err());
    }

    #[test]
    fn table_lookup() {
        assert_eq!(required("GET", "/healthz"), Public);
        assert_eq!(required("POST", "/v1/models"), Role(Operator));
        assert_eq!(required("GET", "/v1/models"), Role(Viewer));
        assert_eq!(
            required("PUT", "/v1/models/s/aliases/production"),
            Role(Operator)
        );
        assert_eq!(required("POST", "/v1/rollouts/7/pause"), Role(Operator));
        assert_eq!(required("DELETE", "/v1/tokens/ci"), Role(Admin));
        assert_eq!(required("GET", "/v1/broker/acl"), Role(Admin));
        // Unknown reads need a viewer, unknown writes an admin; never public.
        assert_eq!(required("GET", "/nope"), Role(Viewer));
        assert_eq!(required("GET", "/v1/devices/"), Role(Viewer));
        assert_eq!(required("POST", "/healthz"), Role(Admin));
        assert_eq!(required("PUT", "/v1/models//aliases/x"), Role(Admin));
    }

    #[test]
    fn verdicts() {
        assert_eq!(authorize(Public, None), Ok(()));
        assert_eq!(authorize(Role(Viewer), None), Err(Denied::Unauthenticated));
        assert_eq!(authorize(Role(Operator), Some(Admin)), Ok(()));
        assert_eq!(
            authorize(Role(Admin), Some(Operator)),
            Err(Denied::Forbidden {
                needs: Admin,
                has: Operator
            })
        );
    }
}
