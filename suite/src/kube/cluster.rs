//! [`KubeCluster`] as the suite's [`Cluster`]: worlds (shared, reused or new), policy objects
//! applied through the dynamic API, label changes, pod faults, the cluster lock and probes.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::objects::object_ref;
use super::world::world_key;
use super::{
    KubeCluster, LABEL_RUN, LABEL_TRIAL, Leftovers, NETNS_ANNOTATION, api_err, is_not_found,
    objects, other,
};
use crate::backend::{
    BackendError, Capabilities, Cluster, LabelChange, ProbeJob, RealizedPod, RealizedWorld, Retry,
    Settling, TargetInfo, Wanted,
};
use crate::case::ObjectRef;
use crate::reachability::Outcome;
use crate::world::World;

impl KubeCluster {
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
}

impl Cluster for KubeCluster {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            prober: self.prober.used(),
            execs: self.prober.execs(),
            connect_p999: self.connect_quantile(0.999),
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
                let ObjectRef {
                    kind,
                    name,
                    namespace,
                } = object_ref(&obj);
                let api = self.dynamic(&kind, namespace.as_deref())?;
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
                let ObjectRef {
                    kind,
                    name,
                    namespace,
                } = object_ref(obj);
                let api = self.dynamic(&kind, namespace.as_deref())?;
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

    fn label_namespace(&self, ns: &str, change: LabelChange<'_>) -> Result<(), BackendError> {
        let patch = objects::label_patch(change.set, change.remove);
        self.rt.block_on(async {
            let api: Api<Namespace> = Api::all(self.client.clone());
            api.patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| api_err("label", "Namespace", ns, e))?;
            Ok(())
        })
    }

    fn label_pod(&self, pod: &RealizedPod, change: LabelChange<'_>) -> Result<(), BackendError> {
        let patch = objects::label_patch(change.set, change.remove);
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
                let done = change.set.iter().all(|(k, v)| labels.get(k) == Some(v))
                    && change.remove.iter().all(|k| !labels.contains_key(k));
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
                // Back on the node it left, so the world keeps its placement.
                let node = match &old.node {
                    Some(n) if !self.nodes.is_empty() => objects::NodeChoice::Node(n.clone()),
                    _ => objects::NodeChoice::Any,
                };
                api.create(
                    &PostParams::default(),
                    &objects::pod(spec, &self.opts.image, sctp, &self.opts.run_id, &node),
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
                    node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
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
                );
            };
            if !self.leases.lock(self.opts.wait_for_lock, &waiting).await? {
                // This run held the lock already, and cleaned up when it took it.
                return Ok(());
            }
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

    fn probe_until(&self, jobs: &[ProbeJob], wanted: &Wanted<'_>, retry: &Retry) -> Settling {
        self.prober.probe_until(jobs, wanted, retry)
    }

    fn connect_quantile(&self, q: f64) -> Option<(std::time::Duration, usize)> {
        match self.prober.connect_times() {
            Some(times) => times.quantile(q),
            None if self.opts.measure_path => self.path.times.quantile(q),
            None => None,
        }
    }

    fn delete_shared_worlds(&self) -> Result<(), BackendError> {
        self.delete_kept_worlds()
    }

    fn retire(&self) -> Result<(), BackendError> {
        self.retire_leases()
    }

    fn cleanup_leftovers(&self, which: Leftovers<'_>) -> Result<Vec<String>, BackendError> {
        self.remove_leftovers(which)
    }
}
