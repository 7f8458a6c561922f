//! The Kubernetes API backend: creates worlds through the API of any cluster (and of the local
//! cluster), applies policies, and probes through a [`Prober`](crate::probe::Prober): `kubectl exec`-style exec into
//! the agnhost pods on real clusters, the netns prober on the local cluster.

pub mod lease;
mod objects;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::runtime::Handle;

use crate::backend::{
    BackendError, Capabilities, Cluster, ProbeJob, RealizedPod, RealizedWorld, TargetInfo,
};
use crate::case::ObjectRef;
use crate::probe::Prober;
use crate::reachability::Outcome;
use crate::target::KubeConfigSource;
use crate::world::{ModelPod, World};

pub use objects::{LABEL_RUN, LABEL_TRIAL, NETNS_ANNOTATION};

/// Named waits of the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeTimeouts {
    /// Pods of a world Running and Ready with IPs.
    pub world_ready: Duration,
    /// Namespaces and objects gone after deletion.
    pub delete: Duration,
    /// Pod labels visible after an update.
    pub label: Duration,
}

impl Default for KubeTimeouts {
    fn default() -> Self {
        KubeTimeouts {
            world_ready: Duration::from_secs(300),
            delete: Duration::from_secs(180),
            label: Duration::from_secs(30),
        }
    }
}

/// Options of the backend.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// The run's id, put on everything created (label [`LABEL_RUN`]).
    pub run_id: String,
    /// The agnhost image for dummy pods.
    pub image: String,
    /// Whether Services get probed (false on the local cluster: no kube-proxy).
    pub services: bool,
    /// Node addresses, when known (local cluster).
    pub node_ips: Vec<IpAddr>,
    /// The external host, when the target has one.
    pub external_ip: Option<IpAddr>,
    /// Waits.
    pub timeouts: KubeTimeouts,
    /// Wait for another run's cluster lock (`false`: fail at once, naming the holder).
    pub wait_for_lock: bool,
    /// Where the bundled enforcer runs, when the caller knows (the local cluster); `None`
    /// looks for its DaemonSet on the cluster.
    pub enforcer: Option<String>,
}

/// A cluster reached through the Kubernetes API.
pub struct KubeCluster {
    rt: Handle,
    client: Client,
    prober: Box<dyn Prober>,
    opts: KubeOptions,
    info: TargetInfo,
    caps: Capabilities,
    /// Worlds with upstream namespace names are created once per run and shared by its trials.
    shared: Mutex<BTreeMap<String, RealizedWorld>>,
    /// Worlds a trial released as it found them, by world definition, for the next trial of the
    /// same world (deleted at the end of the run with the shared ones).
    idle: Mutex<Vec<(String, RealizedWorld)>>,
    /// This run's run lease and cluster lock.
    leases: lease::Leases,
}

/// Whose leftovers `cleanup` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftovers<'a> {
    /// One run's.
    Run(&'a str),
    /// Those of every run whose run lease is gone or expired: never a live run's.
    Dead,
    /// Every run's, live ones included.
    All,
}

/// The cluster-scoped policy kinds.
const CLUSTER_SCOPED: [&str; 3] = [
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
    "ClusterNetworkPolicy",
];

/// The API resource of a policy kind.
pub fn resource_of(kind: &str) -> Option<(ApiResource, bool)> {
    let (group, version, namespaced) = match kind {
        "NetworkPolicy" => ("networking.k8s.io", "v1", true),
        "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy" => {
            ("policy.networking.k8s.io", "v1alpha1", false)
        }
        "ClusterNetworkPolicy" => ("policy.networking.k8s.io", "v1alpha2", false),
        _ => return None,
    };
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let plural = format!("{}ies", kind.to_ascii_lowercase().trim_end_matches('y'));
    Some((ApiResource::from_gvk_with_plural(&gvk, &plural), namespaced))
}

fn api_err(operation: &str, kind: &str, name: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Object {
        operation: operation.into(),
        kind: kind.into(),
        name: name.into(),
        message: e.to_string(),
    }
}

fn other(operation: impl Into<String>, e: impl std::fmt::Display) -> BackendError {
    BackendError::Other {
        operation: operation.into(),
        message: e.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl KubeCluster {
    /// Connects, and detects what the target can do.
    pub fn new(
        rt: Handle,
        client: Client,
        prober: Box<dyn Prober>,
        opts: KubeOptions,
        target: String,
        implementation: String,
        mut caps: Capabilities,
    ) -> Result<KubeCluster, BackendError> {
        let version = rt.block_on(client.apiserver_version()).map_err(|e| {
            other(
                "reading the API server version (is the cluster reachable?)",
                e,
            )
        })?;
        for kind in [
            "AdminNetworkPolicy",
            "BaselineAdminNetworkPolicy",
            "ClusterNetworkPolicy",
        ] {
            let (ar, _) = resource_of(kind).expect("known kind");
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            match rt.block_on(api.list(&ListParams::default().limit(1))) {
                Ok(_) => {
                    caps.kinds.insert(kind.to_string());
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(other(
                        format!("checking whether the cluster serves {kind}"),
                        e,
                    ));
                }
            }
        }
        caps.kinds.insert("NetworkPolicy".into());
        let (runtime, container_runtime) = rt.block_on(node_runtime(&client));
        let enforcer = match opts.enforcer.clone() {
            Some(e) => e,
            None => rt.block_on(enforcer_daemonset(&client)),
        };
        // Nobody named the implementation, but the bundled enforcer's DaemonSet is there.
        let implementation = if implementation == "unknown" && enforcer.starts_with("daemonset") {
            "netpol-enforcer (DaemonSet)".to_string()
        } else {
            implementation
        };
        Ok(KubeCluster {
            info: TargetInfo {
                target,
                kubernetes_version: version.git_version,
                implementation,
                prober: String::new(),
                runtime,
                container_runtime,
                enforcer,
                execs: 0,
            },
            leases: lease::Leases::new(client.clone(), &opts.run_id),
            rt,
            client,
            prober,
            opts,
            caps,
            shared: Mutex::new(BTreeMap::new()),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Creates a world; when that fails half-way, removes what was created, so a later trial
    /// (or the shared world's next attempt) starts from nothing rather than from leftovers.
    fn create_world_or_remove_it(
        &self,
        world: &World,
        suffix: &str,
    ) -> Result<RealizedWorld, BackendError> {
        self.rt
            .block_on(self.create_world_async(world, suffix))
            .inspect_err(|_| {
                let names: Vec<String> = world
                    .namespaces
                    .iter()
                    .map(|n| world.realized_namespace(&n.name, suffix))
                    .collect();
                if let Err(e) = self.rt.block_on(self.delete_and_wait_namespaces(&names)) {
                    tracing::warn!("removing a world that did not come up: {e}");
                }
            })
    }

    /// Deletes a pod at once (no grace period) and waits until the API no longer has it.
    async fn delete_pod_and_wait(&self, pod: &RealizedPod) -> Result<(), BackendError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        api.delete(&pod.name, &DeleteParams::default().grace_period(0))
            .await
            .map_err(|e| api_err("delete", "Pod", &pod.name, e))?;
        let deadline = Instant::now() + self.opts.timeouts.delete;
        while api
            .get_opt(&pod.name)
            .await
            .map_err(|e| api_err("get", "Pod", &pod.name, e))?
            .is_some()
        {
            if Instant::now() > deadline {
                return Err(other(
                    format!("deleting pod {}/{}", pod.namespace, pod.name),
                    "it never went away",
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Announces the run on the cluster (its run lease), so other runs and `cleanup` can tell
    /// its objects from a dead run's.
    pub fn announce(&self) -> Result<(), BackendError> {
        self.rt.block_on(self.leases.announce())
    }

    /// Ends the run's presence on the cluster: releases the lock and deletes its leases.
    pub fn retire(&self) -> Result<(), BackendError> {
        self.rt.block_on(self.leases.retire())
    }

    /// The run ids whose objects exist on the cluster but whose run lease is gone or expired.
    async fn dead_runs(&self) -> Result<BTreeSet<String>, BackendError> {
        let live = self.leases.live_runs().await?;
        let mut runs = BTreeSet::new();
        for kind in CLUSTER_SCOPED {
            if !self.caps.kinds.contains(kind) {
                continue;
            }
            let api = self.dynamic(kind, None)?;
            let list = api
                .list(&ListParams::default().labels(LABEL_RUN))
                .await
                .map_err(|e| other(format!("listing {kind}s"), e))?;
            runs.extend(
                list.items
                    .iter()
                    .filter_map(|o| o.labels().get(LABEL_RUN).cloned()),
            );
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default().labels(LABEL_RUN))
            .await
            .map_err(|e| other("listing namespaces", e))?;
        runs.extend(
            list.items
                .iter()
                .filter_map(|o| o.labels().get(LABEL_RUN).cloned()),
        );
        runs.retain(|r| !live.contains(r));
        Ok(runs)
    }

    /// Decides SCTP support on a real cluster with one probe: an SCTP server pod and a client
    /// pod in a throwaway namespace; a connection means SCTP works between pods.
    pub fn preflight_sctp(&mut self) {
        use crate::case::Feature;
        use crate::world::{ModelNamespace, ModelPod, Protocol, ServedPort, WorldKind};
        let pod = |name: &str, ports: Vec<ServedPort>| ModelPod {
            namespace: "sctp-preflight".into(),
            name: name.into(),
            pod_name: name.into(),
            labels: [("pod".to_string(), name.to_string())].into(),
            ports,
            host_network: false,
            statefulset: None,
            external: false,
        };
        let world = World {
            kind: WorldKind::Upstream,
            namespaces: vec![ModelNamespace {
                name: "sctp-preflight".into(),
                labels: Default::default(),
                upstream_name: None,
            }],
            pods: vec![
                pod(
                    "server",
                    vec![ServedPort {
                        port: 80,
                        protocol: Protocol::Sctp,
                        name: Some("serve-80-sctp".into()),
                    }],
                ),
                pod("client", vec![]),
            ],
        };
        self.caps.features.insert(Feature::Sctp);
        let ready = std::mem::replace(&mut self.opts.timeouts.world_ready, Duration::from_secs(90));
        let suffix = format!("{}-sctp", self.opts.run_id);
        let verdict = match self.create_world(&world, &suffix) {
            Ok(realized) => {
                let (client, server) = (
                    &realized.pods["sctp-preflight/client"],
                    &realized.pods["sctp-preflight/server"],
                );
                let outcome = self.prober.probe(&ProbeJob {
                    from: client.clone(),
                    to_model: server.model.clone(),
                    to_ip: server.ip,
                    port: 80,
                    protocol: Protocol::Sctp,
                    timeout: Duration::from_secs(3),
                });
                if let Err(e) = self.delete_world(&realized) {
                    tracing::warn!("deleting the SCTP pre-flight namespace: {e}");
                }
                match outcome {
                    Outcome::Connected => Ok(()),
                    other => Err(format!("SCTP pre-flight probe between two pods: {other:?}")),
                }
            }
            Err(e) => {
                let names = vec![world.realized_namespace("sctp-preflight", &suffix)];
                if let Err(e) = self.rt.block_on(self.delete_and_wait_namespaces(&names)) {
                    tracing::warn!("deleting the SCTP pre-flight namespace: {e}");
                }
                Err(format!(
                    "SCTP pre-flight: the SCTP server pod did not start ({e})"
                ))
            }
        };
        self.opts.timeouts.world_ready = ready;
        if let Err(reason) = verdict {
            self.caps.features.remove(&Feature::Sctp);
            self.caps.missing.insert(Feature::Sctp, reason);
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn dynamic(
        &self,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<Api<DynamicObject>, BackendError> {
        let (ar, namespaced) = resource_of(kind).ok_or_else(|| {
            other(
                format!("using kind {kind}"),
                "not a policy kind this suite knows",
            )
        })?;
        Ok(match (namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (true, None) => {
                return Err(other(
                    format!("using {kind}"),
                    "a namespaced kind needs a namespace",
                ));
            }
            (false, _) => Api::all_with(self.client.clone(), &ar),
        })
    }

    fn labelled(&self, obj: &Value, suffix: Option<&str>) -> Value {
        let mut obj = obj.clone();
        let labels = &mut obj["metadata"]["labels"];
        if !labels.is_object() {
            *labels = json!({});
        }
        labels[LABEL_RUN] = json!(self.opts.run_id);
        if let Some(s) = suffix {
            labels[LABEL_TRIAL] = json!(s);
        }
        obj
    }

    async fn wait_pods_ready(
        &self,
        namespaces: &[String],
        expected: usize,
    ) -> Result<Vec<Pod>, BackendError> {
        let deadline = Instant::now() + self.opts.timeouts.world_ready;
        loop {
            let mut pods = Vec::new();
            for ns in namespaces {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
                let list = api
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| other(format!("listing pods in {ns}"), e))?;
                pods.extend(list.items);
            }
            let not_ready: Vec<String> = pods
                .iter()
                .filter(|p| !objects::pod_ready(p))
                .map(objects::pod_condition_summary)
                .collect();
            if pods.len() >= expected && not_ready.is_empty() {
                return Ok(pods);
            }
            if Instant::now() > deadline {
                let missing = if pods.len() < expected {
                    format!("{} of {expected} pods exist; ", pods.len())
                } else {
                    String::new()
                };
                return Err(BackendError::World {
                    world: namespaces.join(","),
                    message: format!(
                        "{missing}pods not ready after {:?}: {}",
                        self.opts.timeouts.world_ready,
                        not_ready.join("; ")
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn create_world_async(
        &self,
        world: &World,
        suffix: &str,
    ) -> Result<RealizedWorld, BackendError> {
        let mut realized = RealizedWorld {
            suffix: suffix.to_string(),
            node_ips: self.opts.node_ips.clone(),
            external_ip: self.opts.external_ip,
            ..Default::default()
        };
        let sctp = self.caps.features.contains(&crate::case::Feature::Sctp);
        let mut namespaces = Vec::new();
        for ns in &world.namespaces {
            let name = world.realized_namespace(&ns.name, suffix);
            realized.namespaces.insert(ns.name.clone(), name.clone());
            if world
                .pods
                .iter()
                .any(|p| p.namespace == ns.name && p.external)
            {
                continue;
            }
            let mut labels = ns.labels.clone();
            labels.insert(LABEL_RUN.into(), self.opts.run_id.clone());
            if ns.upstream_name.is_none() {
                labels.insert(LABEL_TRIAL.into(), suffix.into());
            }
            let obj: Namespace = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels}
            }))
            .expect("namespace literal");
            let api: Api<Namespace> = Api::all(self.client.clone());
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                // Idempotent for this run's own namespace (a retried create); anyone else's
                // namespace of the same name is an error, never adopted.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let existing = api
                        .get(&name)
                        .await
                        .map_err(|e| api_err("read", "Namespace", &name, e))?;
                    let owner = existing.labels().get(LABEL_RUN).cloned();
                    if owner.as_deref() != Some(self.opts.run_id.as_str()) {
                        return Err(BackendError::World {
                            world: world.kind.as_str().into(),
                            message: format!(
                                "namespace {name} already exists and is not this run's (run label: {})",
                                owner.as_deref().unwrap_or("none")
                            ),
                        });
                    }
                }
                Err(e) => return Err(api_err("create", "Namespace", &name, e)),
            }
            namespaces.push(name);
        }
        let image = &self.opts.image;
        let mut statefulsets: BTreeMap<String, (String, &ModelPod)> = BTreeMap::new();
        let mut expected = 0;
        for pod in world.pods.iter().filter(|p| !p.external) {
            let ns = &realized.namespaces[&pod.namespace];
            expected += 1;
            match &pod.statefulset {
                Some(ss) => {
                    statefulsets.entry(ss.clone()).or_insert((ns.clone(), pod));
                }
                None => {
                    let obj = objects::pod(pod, image, sctp, &self.opts.run_id);
                    let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
                    api.create(&PostParams::default(), &obj)
                        .await
                        .map_err(|e| {
                            api_err("create", "Pod", &format!("{ns}/{}", pod.pod_name), e)
                        })?;
                    if world.kind == crate::world::WorldKind::Upstream && !pod.ports.is_empty() {
                        let svc = objects::service(pod, ns, sctp, &self.opts.run_id);
                        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
                        api.create(&PostParams::default(), &svc)
                            .await
                            .map_err(|e| {
                                api_err(
                                    "create",
                                    "Service",
                                    &format!("{ns}/s-{ns}-{}", pod.pod_name),
                                    e,
                                )
                            })?;
                    }
                }
            }
        }
        for (name, (ns, pod)) in &statefulsets {
            let replicas = world
                .pods
                .iter()
                .filter(|p| p.statefulset.as_deref() == Some(name))
                .count();
            let obj =
                objects::statefulset(name, pod, replicas as i32, image, sctp, &self.opts.run_id);
            let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), ns);
            api.create(&PostParams::default(), &obj)
                .await
                .map_err(|e| api_err("create", "StatefulSet", &format!("{ns}/{name}"), e))?;
        }
        let pods = self.wait_pods_ready(&namespaces, expected).await?;
        for model in world.pods.iter() {
            if model.external {
                if let Some(ip) = self.opts.external_ip {
                    realized.pods.insert(
                        model.model_name(),
                        RealizedPod {
                            model: model.model_name(),
                            namespace: String::new(),
                            name: "external-host".into(),
                            ip,
                            service_ip: None,
                            container: String::new(),
                            netns: None,
                        },
                    );
                }
                continue;
            }
            let ns = &realized.namespaces[&model.namespace];
            let pod = pods
                .iter()
                .find(|p| p.namespace().as_deref() == Some(ns) && p.name_any() == model.pod_name)
                .ok_or_else(|| BackendError::World {
                    world: world.kind.as_str().into(),
                    message: format!("pod {ns}/{} is missing", model.pod_name),
                })?;
            let ip: IpAddr = objects::pod_ip(pod).ok_or_else(|| BackendError::World {
                world: world.kind.as_str().into(),
                message: format!("pod {ns}/{} has no IP", model.pod_name),
            })?;
            let service_ip = if self.opts.services
                && world.kind == crate::world::WorldKind::Upstream
                && !model.ports.is_empty()
            {
                let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
                let svc = api
                    .get(&objects::service_name(ns, &model.pod_name))
                    .await
                    .map_err(|e| {
                        other(format!("reading the Service of {ns}/{}", model.pod_name), e)
                    })?;
                svc.spec
                    .and_then(|s| s.cluster_ip)
                    .and_then(|ip| ip.parse().ok())
            } else {
                None
            };
            realized.pods.insert(
                model.model_name(),
                RealizedPod {
                    model: model.model_name(),
                    namespace: ns.clone(),
                    name: model.pod_name.clone(),
                    ip,
                    service_ip,
                    container: objects::probe_container(model),
                    netns: pod.annotations().get(NETNS_ANNOTATION).cloned(),
                },
            );
        }
        Ok(realized)
    }

    async fn delete_and_wait_namespaces(&self, names: &[String]) -> Result<(), BackendError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        for name in names {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(api_err("delete", "Namespace", name, e)),
            }
        }
        let deadline = Instant::now() + self.opts.timeouts.delete;
        for name in names {
            loop {
                match api.get_opt(name).await {
                    Ok(None) => break,
                    Ok(Some(_)) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(300)).await
                    }
                    Ok(Some(_)) => {
                        return Err(BackendError::Other {
                            operation: format!("deleting namespace {name}"),
                            message: format!("still present after {:?}", self.opts.timeouts.delete),
                        });
                    }
                    Err(e) => return Err(other(format!("waiting for namespace {name} to go"), e)),
                }
            }
        }
        Ok(())
    }

    /// Deletes the trial's cluster-scoped policies and its NetworkPolicies (by its label).
    async fn delete_trial_objects(&self, realized: &RealizedWorld) -> Result<(), BackendError> {
        let selector = format!("{LABEL_TRIAL}={}", realized.suffix);
        for kind in [
            "AdminNetworkPolicy",
            "BaselineAdminNetworkPolicy",
            "ClusterNetworkPolicy",
        ] {
            if !self.caps.kinds.contains(kind) {
                continue;
            }
            let api = self.dynamic(kind, None)?;
            api.delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&selector),
            )
            .await
            .map_err(|e| other(format!("deleting the trial's {kind}s"), e))?;
        }
        for ns in realized.namespaces.values() {
            let api = self.dynamic("NetworkPolicy", Some(ns))?;
            match api
                .delete_collection(
                    &DeleteParams::default(),
                    &ListParams::default().labels(&selector),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(other(
                        format!("deleting the trial's NetworkPolicies in {ns}"),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Deletes what runs of this suite left behind (by label): one run's, the objects of runs
    /// that are gone (no live run lease), or everything. Waits until namespaces are gone.
    pub fn cleanup_leftovers(&self, which: Leftovers<'_>) -> Result<Vec<String>, BackendError> {
        self.rt.block_on(self.remove_runs(which, true))
    }

    async fn remove_runs(
        &self,
        which: Leftovers<'_>,
        wait: bool,
    ) -> Result<Vec<String>, BackendError> {
        let selectors: Vec<String> = match which {
            Leftovers::Run(id) => vec![format!("{LABEL_RUN}={id}")],
            Leftovers::All => vec![LABEL_RUN.to_string()],
            Leftovers::Dead => self
                .dead_runs()
                .await?
                .iter()
                .map(|id| format!("{LABEL_RUN}={id}"))
                .collect(),
        };
        let mut removed = Vec::new();
        for selector in &selectors {
            for kind in CLUSTER_SCOPED {
                if !self.caps.kinds.contains(kind) {
                    continue;
                }
                let api = self.dynamic(kind, None)?;
                let list = api
                    .list(&ListParams::default().labels(selector))
                    .await
                    .map_err(|e| other(format!("listing {kind}s"), e))?;
                for obj in list.items {
                    let name = obj.name_any();
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => removed.push(format!("{kind} {name}")),
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(api_err("delete", kind, &name, e)),
                    }
                }
            }
            let api: Api<Namespace> = Api::all(self.client.clone());
            let list = api
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| other("listing namespaces", e))?;
            let names: Vec<String> = list.items.iter().map(|n| n.name_any()).collect();
            if wait {
                self.delete_and_wait_namespaces(&names).await?;
            } else {
                for name in &names {
                    match api.delete(name, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(api_err("delete", "Namespace", name, e)),
                    }
                }
            }
            removed.extend(names.into_iter().map(|n| format!("Namespace {n}")));
        }
        if which != Leftovers::Run(&self.opts.run_id) {
            removed.extend(self.leases.prune_expired().await?);
        }
        Ok(removed)
    }

    /// Deletes the worlds shared by trials of this run and those left idle for reuse (end of
    /// run).
    pub fn delete_shared_worlds(&self) -> Result<(), BackendError> {
        let mut shared: Vec<RealizedWorld> =
            std::mem::take(&mut *self.shared.lock().expect("shared lock"))
                .into_values()
                .collect();
        shared.extend(
            std::mem::take(&mut *self.idle.lock().expect("idle lock"))
                .into_iter()
                .map(|(_, w)| w),
        );
        for world in shared {
            let names: Vec<String> = world.namespaces.values().cloned().collect();
            self.rt.block_on(self.delete_and_wait_namespaces(&names))?;
        }
        Ok(())
    }
}

impl Cluster for KubeCluster {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            prober: self.prober.used(),
            execs: self.prober.execs(),
            ..self.info.clone()
        }
    }

    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }

    fn create_world(&self, world: &World, suffix: &str) -> Result<RealizedWorld, BackendError> {
        let shared = world.is_shared();
        if !shared {
            let key = world_key(world);
            let reused = {
                let mut idle = self.idle.lock().expect("idle lock");
                idle.iter()
                    .position(|(k, _)| *k == key)
                    .map(|i| idle.swap_remove(i).1)
            };
            if let Some(w) = reused {
                tracing::debug!("trial {suffix} reuses the world of trial {}", w.suffix);
                return Ok(RealizedWorld {
                    suffix: suffix.to_string(),
                    ..w
                });
            }
            return self.create_world_or_remove_it(world, suffix);
        }
        let key = world.kind.as_str().to_string();
        let mut cache = self.shared.lock().expect("shared lock");
        let base = match cache.get(&key) {
            Some(w) => w.clone(),
            None => {
                let w = self.create_world_or_remove_it(world, &self.opts.run_id)?;
                cache.insert(key, w.clone());
                w
            }
        };
        Ok(RealizedWorld {
            suffix: suffix.to_string(),
            ..base
        })
    }

    fn create(&self, objects: &[Value]) -> Result<(), BackendError> {
        self.rt.block_on(async {
            for obj in objects {
                let obj = self.labelled(obj, None);
                let kind = obj["kind"].as_str().unwrap_or_default().to_string();
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
                let api = self.dynamic(&kind, ns.as_deref())?;
                let dynamic: DynamicObject = serde_json::from_value(obj.clone())
                    .map_err(|e| api_err("create", &kind, &name, e))?;
                api.create(&PostParams::default(), &dynamic)
                    .await
                    .map_err(|e| api_err("create", &kind, &name, e))?;
            }
            Ok(())
        })
    }

    fn update(&self, objects: &[Value]) -> Result<(), BackendError> {
        self.rt.block_on(async {
            for obj in objects {
                let kind = obj["kind"].as_str().unwrap_or_default().to_string();
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
                let api = self.dynamic(&kind, ns.as_deref())?;
                let current = api
                    .get(&name)
                    .await
                    .map_err(|e| api_err("update", &kind, &name, e))?;
                let mut obj = self.labelled(obj, None);
                for (k, v) in current.labels() {
                    if obj["metadata"]["labels"].get(k).is_none() {
                        obj["metadata"]["labels"][k] = json!(v);
                    }
                }
                obj["metadata"]["resourceVersion"] = json!(current.resource_version());
                let dynamic: DynamicObject =
                    serde_json::from_value(obj).map_err(|e| api_err("update", &kind, &name, e))?;
                api.replace(&name, &PostParams::default(), &dynamic)
                    .await
                    .map_err(|e| api_err("update", &kind, &name, e))?;
            }
            Ok(())
        })
    }

    fn patch(&self, target: &ObjectRef, ops: &[Value]) -> Result<(), BackendError> {
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec()))
            .map_err(|e| api_err("patch", &target.kind, &target.name, e))?;
        self.rt.block_on(async {
            let api = self.dynamic(&target.kind, target.namespace.as_deref())?;
            api.patch(
                &target.name,
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            )
            .await
            .map_err(|e| api_err("patch", &target.kind, &target.name, e))?;
            Ok(())
        })
    }

    fn delete(&self, targets: &[ObjectRef]) -> Result<(), BackendError> {
        self.rt.block_on(async {
            for t in targets {
                let api = self.dynamic(&t.kind, t.namespace.as_deref())?;
                match api.delete(&t.name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(api_err("delete", &t.kind, &t.name, e)),
                }
            }
            Ok(())
        })
    }

    fn delete_all_network_policies(&self, namespaces: &[String]) -> Result<(), BackendError> {
        self.rt.block_on(async {
            for ns in namespaces {
                let api = self.dynamic("NetworkPolicy", Some(ns))?;
                match api
                    .delete_collection(&DeleteParams::default(), &ListParams::default())
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(other(format!("deleting NetworkPolicies in {ns}"), e)),
                }
            }
            Ok(())
        })
    }

    fn label_namespace(
        &self,
        namespace: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), BackendError> {
        let patch = objects::label_patch(set, remove);
        self.rt.block_on(async {
            let api: Api<Namespace> = Api::all(self.client.clone());
            api.patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| api_err("label", "Namespace", namespace, e))?;
            Ok(())
        })
    }

    fn label_pod(
        &self,
        pod: &RealizedPod,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), BackendError> {
        let patch = objects::label_patch(set, remove);
        let name = format!("{}/{}", pod.namespace, pod.name);
        self.rt.block_on(async {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
            api.patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| api_err("label", "Pod", &name, e))?;
            // Upstream waits until the API shows the labels; a merge patch returns them at once,
            // but a watcher-based enforcer needs the event, which the readback orders after.
            let deadline = Instant::now() + self.opts.timeouts.label;
            loop {
                let now = api
                    .get(&pod.name)
                    .await
                    .map_err(|e| api_err("get", "Pod", &name, e))?;
                let labels = now.labels();
                let done = set.iter().all(|(k, v)| labels.get(k) == Some(v))
                    && remove.iter().all(|k| !labels.contains_key(k));
                if done {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(other(
                        format!("labelling pod {name}"),
                        "labels never appeared",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    fn recreate_pods(
        &self,
        world: &World,
        realized: &RealizedWorld,
        pods: &[String],
    ) -> Result<Vec<RealizedPod>, BackendError> {
        let sctp = self.caps.features.contains(&crate::case::Feature::Sctp);
        self.rt.block_on(async {
            let mut out = Vec::new();
            for model in pods {
                let spec = world
                    .pod(model)
                    .ok_or_else(|| other(format!("recreating {model}"), "not in the world"))?;
                let old = realized
                    .pods
                    .get(model)
                    .ok_or_else(|| other(format!("recreating {model}"), "not realized"))?;
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &old.namespace);
                self.delete_pod_and_wait(old).await?;
                api.create(
                    &PostParams::default(),
                    &objects::pod(spec, &self.opts.image, sctp, &self.opts.run_id),
                )
                .await
                .map_err(|e| api_err("create", "Pod", &old.name, e))?;
                let ready = self
                    .wait_pods_ready(std::slice::from_ref(&old.namespace), 0)
                    .await?;
                let pod = ready
                    .iter()
                    .find(|p| p.name_any() == old.name)
                    .ok_or_else(|| {
                        other(format!("recreating {model}"), "the pod did not come back")
                    })?;
                let ip = objects::pod_ip(pod)
                    .ok_or_else(|| other(format!("recreating {model}"), "the pod has no IP"))?;
                out.push(RealizedPod {
                    ip,
                    netns: pod.annotations().get(NETNS_ANNOTATION).cloned(),
                    ..old.clone()
                });
            }
            Ok(out)
        })
    }

    fn delete_pods(&self, realized: &RealizedWorld, pods: &[String]) -> Result<(), BackendError> {
        self.rt.block_on(async {
            for model in pods {
                let pod = realized
                    .pods
                    .get(model)
                    .ok_or_else(|| other(format!("deleting {model}"), "not realized"))?;
                self.delete_pod_and_wait(pod).await?;
            }
            Ok(())
        })
    }

    fn release_world(
        &self,
        world: &World,
        realized: &RealizedWorld,
        reusable: bool,
    ) -> Result<(), BackendError> {
        if !reusable || world.is_shared() {
            return self.delete_world(realized);
        }
        if let Err(e) = self.rt.block_on(self.delete_trial_objects(realized)) {
            // Not reusable after all; deleting it is still owed.
            let _ = self.delete_world(realized);
            return Err(e);
        }
        self.idle
            .lock()
            .expect("idle lock")
            .push((world_key(world), realized.clone()));
        Ok(())
    }

    fn delete_world(&self, realized: &RealizedWorld) -> Result<(), BackendError> {
        self.rt.block_on(async {
            self.delete_trial_objects(realized).await?;
            let shared = self
                .shared
                .lock()
                .expect("shared lock")
                .values()
                .any(|w| w.namespaces == realized.namespaces);
            if !shared {
                let names: Vec<String> = realized
                    .namespaces
                    .iter()
                    .filter(|(model, _)| {
                        !realized.pods.values().any(|p| {
                            p.namespace.is_empty() && p.model.starts_with(&format!("{model}/"))
                        })
                    })
                    .map(|(_, real)| real.clone())
                    .collect();
                self.delete_and_wait_namespaces(&names).await?;
            }
            Ok(())
        })
    }

    fn lock_cluster_scope(&self) -> Result<(), BackendError> {
        self.rt.block_on(async {
            let waiting = |who: &str| {
                eprintln!(
                    "netpol-conformance: waiting for the cluster lock, held by {who} \
                     (trials with cluster-scoped policies take turns across runs)"
                )
            };
            self.leases.lock(self.opts.wait_for_lock, &waiting).await?;
            // A run killed mid-trial leaves cluster-scoped policies that select every npa
            // world by its labels: remove what runs that are gone left behind.
            match self.remove_runs(Leftovers::Dead, false).await {
                Ok(removed) if !removed.is_empty() => eprintln!(
                    "netpol-conformance: removed what runs that are gone left behind: {}",
                    removed.join(", ")
                ),
                Ok(_) => {}
                Err(e) => {
                    let _ = self.leases.unlock().await;
                    return Err(e);
                }
            }
            Ok(())
        })
    }

    fn unlock_cluster_scope(&self) {
        if let Err(e) = self.rt.block_on(self.leases.unlock()) {
            tracing::warn!("{e}");
        }
    }

    fn probe(&self, jobs: &[ProbeJob]) -> Vec<Outcome> {
        self.prober.probe_all(jobs)
    }

    fn probe_calls(&self, jobs: &[ProbeJob]) -> usize {
        self.prober.calls(jobs)
    }
}

/// What makes two worlds interchangeable: their whole definition.
fn world_key(world: &World) -> String {
    serde_json::to_string(world).expect("a world serializes")
}

/// The local cluster's emulated nodes report this container runtime.
const EMULATED_RUNTIME: &str = "netpol-local://";

/// How the nodes run pods, from their `containerRuntimeVersion`: (`kubelet` or `emulated`,
/// the distinct runtime versions). A cluster that will not list its Nodes gives `unknown`.
async fn node_runtime(client: &Client) -> (String, String) {
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let nodes = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => return ("unknown".into(), format!("listing nodes: {e}")),
    };
    let versions: BTreeSet<String> = nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.node_info.as_ref())
        .map(|i| i.container_runtime_version.clone())
        .collect();
    let runtime = if versions.is_empty() {
        "unknown"
    } else if versions.iter().all(|v| v.starts_with(EMULATED_RUNTIME)) {
        "emulated"
    } else {
        "kubelet"
    };
    (
        runtime.into(),
        versions.into_iter().collect::<Vec<_>>().join(", "),
    )
}

/// `daemonset` when the cluster runs the bundled enforcer's DaemonSet (`enforcer/deploy/`,
/// found by its `app.kubernetes.io/name` label) with every pod ready, `daemonset (n/m ready)`
/// when not all are, else `unknown`: policy is then the CNI's own business.
async fn enforcer_daemonset(client: &Client) -> String {
    let api: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::all(client.clone());
    let params = ListParams::default().labels("app.kubernetes.io/name=netpol-enforcer");
    match api.list(&params).await {
        Ok(list) => match list.items.first().and_then(|d| d.status.as_ref()) {
            Some(s) if s.number_ready == s.desired_number_scheduled => "daemonset".into(),
            Some(s) => format!(
                "daemonset ({}/{} ready)",
                s.number_ready, s.desired_number_scheduled
            ),
            None => "unknown".into(),
        },
        Err(e) => format!("unknown (listing DaemonSets: {e})"),
    }
}

/// Reads a kubeconfig file into a client.
pub async fn client_from_kubeconfig(path: Option<&PathBuf>) -> Result<Client, BackendError> {
    let source = match path {
        Some(p) => KubeConfigSource::File(p.clone()),
        None => KubeConfigSource::InCluster,
    };
    client_for(&source, None).await
}

/// A client from a kubeconfig file, kubectl's default kubeconfig, or the in-cluster
/// configuration, with an optional context. The one place a client is built.
pub async fn client_for(
    source: &KubeConfigSource,
    context: Option<&str>,
) -> Result<Client, BackendError> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match source {
        KubeConfigSource::File(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| other(format!("reading kubeconfig {}", path.display()), e))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| other(format!("loading kubeconfig {}", path.display()), e))?
        }
        KubeConfigSource::Default => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| other("loading the kubeconfig ($KUBECONFIG or ~/.kube/config)", e))?,
        KubeConfigSource::InCluster => kube::Config::incluster()
            .map_err(|e| other("loading the in-cluster configuration", e))?,
    };
    Client::try_from(config).map_err(|e| other("building the Kubernetes client", e))
}
