//! An in-memory cluster for the harness's own tests: it records what it is asked to do and
//! answers probes from a function the test supplies.

use std::sync::Mutex;

use super::*;

/// Decides a probe's outcome from the job and the policies "in the cluster".
pub type Oracle = dyn Fn(&ProbeJob, &[Value]) -> Outcome + Send + Sync;

/// The double.
pub struct FakeCluster {
    /// Capabilities reported.
    pub caps: Capabilities,
    /// Policies currently present.
    pub objects: Mutex<Vec<Value>>,
    /// Every call, in order (`create_world x`, `create NetworkPolicy deny-all`, …).
    pub log: Mutex<Vec<String>>,
    /// How probes answer.
    pub oracle: Box<Oracle>,
    /// Make `create_world` fail.
    pub fail_world: bool,
}

impl FakeCluster {
    /// A double whose probes answer with `oracle`.
    pub fn new(oracle: Box<Oracle>) -> Self {
        FakeCluster {
            caps: Capabilities {
                features: Feature::ALL.into_iter().collect(),
                missing: BTreeMap::new(),
                kinds: crate::case::POLICY_KINDS
                    .iter()
                    .map(|(k, _)| k.to_string())
                    .collect(),
            },
            objects: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            oracle,
            fail_world: false,
        }
    }

    fn note(&self, s: String) {
        self.log.lock().expect("log lock").push(s);
    }
}

fn name_of(o: &Value) -> String {
    format!(
        "{} {}",
        o["kind"].as_str().unwrap_or("?"),
        o["metadata"]["name"].as_str().unwrap_or("?")
    )
}

impl Cluster for FakeCluster {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            target: "fake".into(),
            kubernetes_version: "v0.0.0-fake".into(),
            implementation: "oracle".into(),
            ..Default::default()
        }
    }
    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }
    fn create_world(&self, world: &World, suffix: &str) -> Result<RealizedWorld, BackendError> {
        self.note(format!("create_world {} {suffix}", world.kind.as_str()));
        if self.fail_world {
            return Err(BackendError::World {
                world: world.kind.as_str().into(),
                message: "pod x/a never became Ready (condition Ready=False)".into(),
            });
        }
        let mut realized = RealizedWorld {
            suffix: suffix.into(),
            ..Default::default()
        };
        for ns in &world.namespaces {
            realized
                .namespaces
                .insert(ns.name.clone(), world.realized_namespace(&ns.name, suffix));
        }
        for (i, pod) in world.pods.iter().enumerate() {
            realized.pods.insert(
                pod.model_name(),
                RealizedPod {
                    model: pod.model_name(),
                    namespace: realized.namespaces[&pod.namespace].clone(),
                    name: pod.pod_name.clone(),
                    ip: IpAddr::from([10, 0, 0, i as u8 + 1]),
                    service_ip: None,
                    container: "agnhost".into(),
                    netns: None,
                    // Two nodes, pods alternating as `--placement spread` puts them.
                    node: Some(format!("fake-node-{}", i % 2)),
                },
            );
        }
        realized.node_ips = vec![IpAddr::from([192, 0, 2, 1])];
        realized.external_ip = Some(IpAddr::from([192, 0, 2, 100]));
        Ok(realized)
    }
    fn create(&self, objects: &[Value]) -> Result<(), BackendError> {
        for o in objects {
            self.note(format!("create {}", name_of(o)));
            self.objects.lock().expect("objects lock").push(o.clone());
        }
        Ok(())
    }
    fn update(&self, objects: &[Value]) -> Result<(), BackendError> {
        let mut present = self.objects.lock().expect("objects lock");
        for o in objects {
            self.note(format!("update {}", name_of(o)));
            present.retain(|p| name_of(p) != name_of(o));
            present.push(o.clone());
        }
        Ok(())
    }
    fn patch(&self, target: &ObjectRef, ops: &[Value]) -> Result<(), BackendError> {
        self.note(format!("patch {} {}", target.kind, target.name));
        let mut present = self.objects.lock().expect("objects lock");
        let key = format!("{} {}", target.kind, target.name);
        let obj = present
            .iter_mut()
            .find(|p| name_of(p) == key)
            .ok_or_else(|| BackendError::Object {
                operation: "patch".into(),
                kind: target.kind.clone(),
                name: target.name.clone(),
                cause: "not found".into(),
            })?;
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(ops.to_vec())).map_err(|e| {
                BackendError::Other {
                    operation: "patch".into(),
                    cause: e.into(),
                }
            })?;
        json_patch::patch(obj, &patch).map_err(|e| BackendError::Object {
            operation: "patch".into(),
            kind: target.kind.clone(),
            name: target.name.clone(),
            cause: e.into(),
        })
    }
    fn delete(&self, targets: &[ObjectRef]) -> Result<(), BackendError> {
        let mut present = self.objects.lock().expect("objects lock");
        for t in targets {
            self.note(format!("delete {} {}", t.kind, t.name));
            present.retain(|p| name_of(p) != format!("{} {}", t.kind, t.name));
        }
        Ok(())
    }
    fn delete_all_network_policies(&self, namespaces: &[String]) -> Result<(), BackendError> {
        self.note(format!(
            "delete_all_network_policies {}",
            namespaces.join(",")
        ));
        self.objects
            .lock()
            .expect("objects lock")
            .retain(|p| p["kind"] != "NetworkPolicy");
        Ok(())
    }
    fn label_namespace(&self, ns: &str, change: LabelChange<'_>) -> Result<(), BackendError> {
        let LabelChange { set, remove } = change;
        self.note(format!("label_namespace {ns} {set:?} -{remove:?}"));
        Ok(())
    }
    fn label_pod(&self, pod: &RealizedPod, change: LabelChange<'_>) -> Result<(), BackendError> {
        let LabelChange { set, remove } = change;
        self.note(format!("label_pod {} {set:?} -{remove:?}", pod.model));
        Ok(())
    }
    fn recreate_pods(
        &self,
        _world: &World,
        realized: &RealizedWorld,
        pods: &[String],
    ) -> Result<Vec<RealizedPod>, BackendError> {
        self.note(format!("recreate_pods {}", pods.join(",")));
        Ok(pods
            .iter()
            .filter_map(|p| realized.pods.get(p).cloned())
            .collect())
    }
    fn delete_pods(&self, _realized: &RealizedWorld, pods: &[String]) -> Result<(), BackendError> {
        self.note(format!("delete_pods {}", pods.join(",")));
        Ok(())
    }
    fn delete_world(&self, realized: &RealizedWorld) -> Result<(), BackendError> {
        self.note(format!("delete_world {}", realized.suffix));
        self.objects.lock().expect("objects lock").clear();
        Ok(())
    }
    fn probe(&self, jobs: &[ProbeJob]) -> Vec<Outcome> {
        let present = self.objects.lock().expect("objects lock").clone();
        jobs.iter().map(|j| (self.oracle)(j, &present)).collect()
    }
}
