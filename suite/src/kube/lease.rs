//! Leases that let several runs share one cluster (`coordination.k8s.io/v1`, in the `default`
//! namespace).
//!
//! - Every run announces itself with a **run lease** (`netpol-conformance-run-<run id>`) that it
//!   renews while it lives. `cleanup` and a starting run use them to tell a live run's objects
//!   from those of a run that was killed.
//! - Trials with cluster-scoped policies (ANP, BANP, CNP) select namespaces by labels that every
//!   run's npa world carries, so they take turns on one **cluster lock**
//!   (`netpol-conformance-cluster-policies`): created by its holder, renewed with the run lease,
//!   deleted on release. A lock whose holder stopped renewing expires and is taken over.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use super::LABEL_RUN;
use crate::backend::BackendError;

/// Where the leases live (present on every cluster).
pub const LEASE_NAMESPACE: &str = "default";
/// The cluster lock's name.
pub const CLUSTER_LOCK: &str = "netpol-conformance-cluster-policies";
/// A lease not renewed for this long is expired.
const LEASE_SECONDS: i32 = 20;
/// How often held leases are renewed.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often a waiting run looks at the lock again.
const POLL_EVERY: Duration = Duration::from_millis(500);

fn run_lease_name(run_id: &str) -> String {
    format!("netpol-conformance-run-{run_id}")
}

fn lease_error(operation: impl Into<String>, e: kube::Error) -> BackendError {
    BackendError::Other {
        operation: operation.into(),
        cause: e.into(),
    }
}

/// Whether a lease is past its renew time plus its duration.
pub fn expired(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else { return true };
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    let Some(renewed) = renewed else { return true };
    let seconds = spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS);
    renewed + SignedDuration::from_secs(i64::from(seconds)) < now
}

/// Who holds a lease, for messages.
pub fn holder(lease: &Lease) -> String {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_else(|| "an unnamed holder".into())
}

/// This run's leases.
pub struct Leases {
    api: Api<Lease>,
    run_id: String,
    identity: String,
    renewer: Mutex<Option<JoinHandle<()>>>,
    /// When this run last took or found it holds the cluster lock (cleared when it lets go):
    /// trials that take turns one after another do not ask the API server again within
    /// [`RENEW_EVERY`], well inside the lease's life.
    held_at: Mutex<Option<std::time::Instant>>,
}

impl Leases {
    /// The leases of run `run_id` on this cluster; nothing is created yet.
    pub fn new(client: Client, run_id: &str) -> Leases {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown-host".into());
        Leases {
            api: Api::namespaced(client, LEASE_NAMESPACE),
            run_id: run_id.to_string(),
            identity: format!("run {run_id} (pid {} on {host})", std::process::id()),
            renewer: Mutex::new(None),
            held_at: Mutex::new(None),
        }
    }

    fn lease(&self, name: &str) -> Lease {
        let now = MicroTime(Timestamp::now());
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {LABEL_RUN: self.run_id}},
        }))
        .map(|mut l: Lease| {
            l.spec = Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                ..Default::default()
            });
            l
        })
        .expect("lease literal")
    }

    /// Creates the run lease and starts renewing every lease this run holds.
    pub async fn announce(&self) -> Result<(), BackendError> {
        let name = run_lease_name(&self.run_id);
        self.api
            .create(&PostParams::default(), &self.lease(&name))
            .await
            .map_err(|e| lease_error(format!("creating the run lease {name}"), e))?;
        let api = self.api.clone();
        let run_id = self.run_id.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let held = api
                    .list(&ListParams::default().labels(&format!("{LABEL_RUN}={run_id}")))
                    .await;
                let Ok(held) = held else { continue };
                for mut lease in held.items {
                    if let Some(spec) = lease.spec.as_mut() {
                        spec.renew_time = Some(MicroTime(Timestamp::now()));
                    }
                    let name = lease.name_any();
                    if let Err(e) = api.replace(&name, &PostParams::default(), &lease).await {
                        tracing::warn!("renewing lease {name}: {e}");
                    }
                }
            }
        });
        *self.renewer.lock().expect("renewer lock") = Some(task);
        Ok(())
    }

    /// Takes the cluster lock (at once when this run already holds it). A held lock is waited
    /// for (`on_wait` is told who holds it, once per holder), or with `wait == false` is an
    /// error naming the holder. An expired lock is taken over. `true` when the lock is newly
    /// this run's (the moment to clean up after runs that are gone), `false` when it held it.
    pub async fn lock(&self, wait: bool, on_wait: &dyn Fn(&str)) -> Result<bool, BackendError> {
        let held = |at: &Option<std::time::Instant>| at.is_some_and(|t| t.elapsed() < RENEW_EVERY);
        if held(&self.held_at.lock().expect("lease lock")) {
            return Ok(false);
        }
        let taken = self.take_lock(wait, on_wait).await?;
        *self.held_at.lock().expect("lease lock") = Some(std::time::Instant::now());
        Ok(taken)
    }

    /// [`Leases::lock`] through the API server: `true` when the lock was free (or expired)
    /// and is now this run's, `false` when this run held it already.
    async fn take_lock(&self, wait: bool, on_wait: &dyn Fn(&str)) -> Result<bool, BackendError> {
        let mut told = String::new();
        loop {
            match self
                .api
                .create(&PostParams::default(), &self.lease(CLUSTER_LOCK))
                .await
            {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(lease_error("taking the cluster lock", e)),
            }
            let current = match self.api.get_opt(CLUSTER_LOCK).await {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => return Err(lease_error("reading the cluster lock", e)),
            };
            if current.labels().get(LABEL_RUN) == Some(&self.run_id) {
                return Ok(false);
            }
            if expired(&current, Timestamp::now()) {
                // The holder stopped renewing (killed): take the lock over.
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: current.uid(),
                        resource_version: current.resource_version(),
                    }),
                    ..DeleteParams::default()
                };
                match self.api.delete(CLUSTER_LOCK, &dp).await {
                    Ok(_) => continue,
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => continue,
                    Err(e) => return Err(lease_error("taking over an expired cluster lock", e)),
                }
            }
            let who = holder(&current);
            if !wait {
                return Err(BackendError::Other {
                    operation: "taking the cluster lock for cluster-scoped policies".into(),
                    cause: format!("held by {who} (--no-wait)").into(),
                });
            }
            if who != told {
                on_wait(&who);
                told = who;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Releases the cluster lock, if this run holds it.
    pub async fn unlock(&self) -> Result<(), BackendError> {
        *self.held_at.lock().expect("lease lock") = None;
        let current = match self.api.get_opt(CLUSTER_LOCK).await {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(e) => return Err(lease_error("reading the cluster lock", e)),
        };
        if current.labels().get(LABEL_RUN) != Some(&self.run_id) {
            return Ok(());
        }
        match self
            .api
            .delete(CLUSTER_LOCK, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(lease_error("releasing the cluster lock", e)),
        }
    }

    /// Stops renewing and deletes this run's leases (end of run).
    pub async fn retire(&self) -> Result<(), BackendError> {
        if let Some(task) = self.renewer.lock().expect("renewer lock").take() {
            task.abort();
        }
        self.unlock().await?;
        match self
            .api
            .delete(&run_lease_name(&self.run_id), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(lease_error("deleting the run lease", e)),
        }
    }

    /// Every lease any run of the suite made (run leases and the cluster lock).
    async fn ours(&self) -> Result<Vec<Lease>, BackendError> {
        self.api
            .list(&ListParams::default().labels(LABEL_RUN))
            .await
            .map(|l| l.items)
            .map_err(|e| lease_error("listing the suite's leases", e))
    }

    /// Deletes run leases (and a cluster lock) whose holder stopped renewing; returns their
    /// names.
    pub async fn prune_expired(&self) -> Result<Vec<String>, BackendError> {
        let now = Timestamp::now();
        let mut pruned = Vec::new();
        for lease in self.ours().await?.iter().filter(|l| expired(l, now)) {
            let name = lease.name_any();
            match self.api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => pruned.push(format!("Lease {LEASE_NAMESPACE}/{name}")),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(lease_error(format!("deleting lease {name}"), e)),
            }
        }
        Ok(pruned)
    }

    /// The ids of runs whose run lease is live (this one included once announced).
    pub async fn live_runs(&self) -> Result<BTreeSet<String>, BackendError> {
        let now = Timestamp::now();
        Ok(self
            .ours()
            .await?
            .iter()
            .filter(|l| l.name_any().starts_with("netpol-conformance-run-") && !expired(l, now))
            .filter_map(|l| l.labels().get(LABEL_RUN).cloned())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(renewed: Option<Timestamp>, seconds: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                renew_time: renewed.map(MicroTime),
                lease_duration_seconds: Some(seconds),
                holder_identity: Some("run abcde".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_expires_after_its_duration_without_renewal() {
        let now = Timestamp::now();
        assert!(!expired(&lease(Some(now), 20), now));
        let old = now - SignedDuration::from_secs(21);
        assert!(expired(&lease(Some(old), 20), now));
        assert!(expired(&lease(None, 20), now), "never renewed");
        assert!(expired(&Lease::default(), now), "no spec");
        assert_eq!(holder(&lease(None, 1)), "run abcde");
    }
}
