//! `mailstack-init health`: every service of the plan probed for real (Postfix's SMTP banner,
//! each milter's OPTNEG, clamd's PING, the policy and saslauthd sockets), for a container
//! HEALTHCHECK.

use super::config::Plan;
use super::ready::{ProbeError, probe};

/// One service's health.
#[derive(Debug)]
pub struct ServiceHealth {
    /// The service.
    pub name: String,
    /// `Ok`, or why it is down.
    pub result: Result<(), ProbeError>,
}

/// Probes every service of `plan`, one after the other (at most seven services, each
/// probe bounded by [`PROBE_TIMEOUT`](super::ready::PROBE_TIMEOUT)).
pub async fn check(plan: &Plan) -> Vec<ServiceHealth> {
    let mut out = Vec::with_capacity(plan.services.len());
    for s in &plan.services {
        out.push(ServiceHealth {
            name: s.name.clone(),
            result: probe(&s.probe).await,
        });
    }
    out
}

/// The names of the services that are down, with why, one per line (empty: all up).
pub fn down(h: &[ServiceHealth]) -> Vec<String> {
    h.iter()
        .filter_map(|x| x.result.as_ref().err().map(|e| format!("{}: {e}", x.name)))
        .collect()
}
