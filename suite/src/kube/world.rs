//! Worlds on the cluster: creating a world's namespaces, pods, Services and StatefulSets and
//! waiting until they are ready, the SCTP pre-flight world, and deleting worlds and what trials
//! created in them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use super::objects::NodeChoice;
use super::{
    KubeCluster, LABEL_RUN, LABEL_TRIAL, NETNS_ANNOTATION, api_err, is_not_found, objects, other,
};
use crate::backend::{BackendError, Cluster, Placement, ProbeJob, RealizedPod, RealizedWorld};
use crate::reachability::Outcome;
use crate::world::{ModelPod, Protocol, World};

impl KubeCluster {
    /// Creates a world; when that fails half-way, removes what was created, so a later trial
    /// (or the shared world's next attempt) starts from nothing rather than from leftovers.
    pub(super) fn create_world_or_remove_it(
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
    pub(super) async fn delete_pod_and_wait(&self, pod: &RealizedPod) -> Result<(), BackendError> {
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

    pub(super) async fn wait_pods_ready(
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
        let namespaces = self.create_namespaces(world, suffix, &mut realized).await?;
        let expected = self.create_workloads(world, &realized, sctp).await?;
        let pods = self.wait_pods_ready(&namespaces, expected).await?;
        self.realize_pods(world, &pods, &mut realized).await?;
        if self.opts.measure_path {
            self.measure_path(world, &pods, &realized).await;
        }
        Ok(realized)
    }

    /// Creates the world's namespaces (all but those of the external host), recording every
    /// model namespace's real name in `realized`; returns the names created.
    async fn create_namespaces(
        &self,
        world: &World,
        suffix: &str,
        realized: &mut RealizedWorld,
    ) -> Result<Vec<String>, BackendError> {
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
        Ok(namespaces)
    }

    /// Creates the world's pods (with their Services in upstream worlds) and StatefulSets;
    /// returns how many pods to wait for.
    async fn create_workloads(
        &self,
        world: &World,
        realized: &RealizedWorld,
        sctp: bool,
    ) -> Result<usize, BackendError> {
        let image = &self.opts.image;
        let mut statefulsets: BTreeMap<String, (String, &ModelPod)> = BTreeMap::new();
        let mut expected = 0;
        let mut standalone = 0;
        for pod in world.pods.iter().filter(|p| !p.external) {
            let ns = &realized.namespaces[&pod.namespace];
            expected += 1;
            match &pod.statefulset {
                Some(ss) => {
                    statefulsets.entry(ss.clone()).or_insert((ns.clone(), pod));
                }
                None => {
                    let node = self.node_for(standalone);
                    standalone += 1;
                    let obj = objects::pod(pod, image, sctp, &self.opts.run_id, &node);
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
            let node = self.nodes_for_statefulset(pod.host_network);
            let obj = objects::statefulset(
                name,
                pod,
                replicas as i32,
                image,
                sctp,
                &self.opts.run_id,
                &node,
            );
            let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), ns);
            api.create(&PostParams::default(), &obj)
                .await
                .map_err(|e| api_err("create", "StatefulSet", &format!("{ns}/{name}"), e))?;
        }
        Ok(expected)
    }

    /// Where the `i`th standalone pod of a world goes: alternating over the schedulable nodes
    /// (spread, cross-node), all on the first (same-node), or the scheduler's choice where
    /// there are fewer than two.
    fn node_for(&self, i: usize) -> NodeChoice {
        match (self.nodes.len(), self.opts.placement) {
            (0 | 1, _) => NodeChoice::Any,
            (_, Placement::SameNode) => NodeChoice::Node(self.nodes[0].clone()),
            (n, _) => NodeChoice::Node(self.nodes[i % n].clone()),
        }
    }

    /// Where a StatefulSet's replicas go: spread over the schedulable nodes, or all on the
    /// first (same-node) unless they share their node's network (they serve fixed host ports,
    /// so two cannot share a node).
    fn nodes_for_statefulset(&self, host_network: bool) -> NodeChoice {
        match (self.nodes.len(), self.opts.placement) {
            (0 | 1, _) => NodeChoice::Any,
            (_, Placement::SameNode) if !host_network => NodeChoice::Node(self.nodes[0].clone()),
            _ => NodeChoice::Spread(self.nodes.clone()),
        }
    }

    /// Times a connection from every pod of a new world to every other one's first TCP port,
    /// from inside the source pod's network namespace on this machine (the local cluster's real
    /// nodes): samples of the path the connect timeout follows, never a verdict.
    async fn measure_path(&self, world: &World, pods: &[Pod], realized: &RealizedWorld) {
        let netns = |model: &ModelPod| -> Option<String> {
            let ns = realized.namespaces.get(&model.namespace)?;
            let pod = pods
                .iter()
                .find(|p| p.namespace().as_deref() == Some(ns) && p.name_any() == model.pod_name)?;
            let node = pod.spec.as_ref()?.node_name.as_deref()?;
            let uid = pod.metadata.uid.as_deref()?;
            netpol_local::kubelet::host::pod_netns(node, uid).map(|p| p.display().to_string())
        };
        let mut jobs = Vec::new();
        for from in world.pods.iter().filter(|p| !p.external && !p.host_network) {
            let (Some(path), Some(src)) = (netns(from), realized.pods.get(&from.model_name()))
            else {
                continue;
            };
            for to in world
                .pods
                .iter()
                .filter(|p| p.model_name() != from.model_name())
            {
                let port = to.ports.iter().find(|p| p.protocol == Protocol::Tcp);
                let (Some(port), Some(dst)) = (port, realized.pods.get(&to.model_name())) else {
                    continue;
                };
                jobs.push(ProbeJob {
                    from: RealizedPod {
                        netns: Some(path.clone()),
                        ..src.clone()
                    },
                    to_model: to.model_name(),
                    to_ip: dst.ip,
                    port: port.port,
                    protocol: Protocol::Tcp,
                    timeout: Duration::from_secs(1),
                });
            }
        }
        self.path.measure(&jobs).await;
    }

    /// Records every model pod's realized pod (IP, Service IP, probe container, netns) from
    /// the ready pods; the external host, when the target has one, as a pod without namespace.
    async fn realize_pods(
        &self,
        world: &World,
        pods: &[Pod],
        realized: &mut RealizedWorld,
    ) -> Result<(), BackendError> {
        for model in &world.pods {
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
                            node: None,
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
                    node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                },
            );
        }
        Ok(())
    }

    pub(super) async fn delete_and_wait_namespaces(
        &self,
        names: &[String],
    ) -> Result<(), BackendError> {
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
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    Ok(Some(_)) => {
                        return Err(BackendError::Other {
                            operation: format!("deleting namespace {name}"),
                            cause: format!("still present after {:?}", self.opts.timeouts.delete)
                                .into(),
                        });
                    }
                    Err(e) => return Err(other(format!("waiting for namespace {name} to go"), e)),
                }
            }
        }
        Ok(())
    }

    /// Deletes the trial's cluster-scoped policies and its NetworkPolicies (by its label).
    pub(super) async fn delete_trial_objects(
        &self,
        realized: &RealizedWorld,
    ) -> Result<(), BackendError> {
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

    /// Deletes the worlds shared by trials of this run and those left idle for reuse (end of
    /// run).
    pub(super) fn delete_kept_worlds(&self) -> Result<(), BackendError> {
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

/// What makes two worlds interchangeable: their whole definition.
pub(super) fn world_key(world: &World) -> String {
    serde_json::to_string(world).expect("a world serializes")
}
