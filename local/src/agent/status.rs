//! The pod status the agent reports: Running, the pod's IPs, the kubelet's conditions and
//! container statuses, so readiness waits and StatefulSets behave.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::records::PodRecord;

/// The status the agent writes for a realized pod (a JSON merge patch body).
///
/// `problems` maps a container name to why it is not ready (its servers that failed to
/// bind); a container without problems is ready, the pod is ready when all are.
pub fn pod_status(
    pod: &Pod,
    record: &PodRecord,
    node_ip: Ipv4Addr,
    problems: &BTreeMap<String, Vec<String>>,
    now: Timestamp,
) -> serde_json::Value {
    let ready = problems.values().all(Vec::is_empty);
    let time = serde_json::to_value(Time(now)).expect("Time serializes");
    let started = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .map(|t| serde_json::to_value(t).expect("Time serializes"))
        .unwrap_or_else(|| time.clone());
    let flag = |b: bool| if b { "True" } else { "False" };
    let not_ready: Vec<&String> = problems
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(name, _)| name)
        .collect();
    let message = problems
        .iter()
        .flat_map(|(name, p)| p.iter().map(move |why| format!("{name}: {why}")))
        .collect::<Vec<_>>()
        .join("; ");
    let condition = |kind: &str, ok: bool| {
        let mut c = json!({"type": kind, "status": flag(ok), "lastProbeTime": null, "lastTransitionTime": time});
        if !ok {
            c["reason"] = json!("ContainersNotReady");
            c["message"] = json!(format!(
                "containers with unready status: {not_ready:?}: {message}"
            ));
        }
        c
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let uid = &record.uid;
    // What every container status says; `extra` adds the ready flag and state of its kind.
    let status = |c: &k8s_openapi::api::core::v1::Container, extra: serde_json::Value| {
        let mut v = json!({
            "name": c.name,
            "image": c.image.clone().unwrap_or_default(),
            "imageID": "",
            "containerID": format!("netpol-local://{uid}/{}", c.name),
            "restartCount": 0,
        });
        if let (Some(v), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
            v.extend(extra);
        }
        v
    };
    let containers: Vec<serde_json::Value> = spec
        .containers
        .iter()
        .map(|c| {
            let ready = problems.get(&c.name).is_none_or(Vec::is_empty);
            status(
                c,
                json!({"ready": ready, "started": true, "state": {"running": {"startedAt": time}}}),
            )
        })
        .collect();
    let init_containers: Vec<serde_json::Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            let done = json!({"exitCode": 0, "reason": "Completed",
                              "startedAt": time, "finishedAt": time});
            status(c, json!({"ready": true, "state": {"terminated": done}}))
        })
        .collect();
    let ip = record.ip.to_string();
    json!({
        "status": {
            "phase": "Running",
            "hostIP": node_ip.to_string(),
            "hostIPs": [{"ip": node_ip.to_string()}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": started,
            "qosClass": "BestEffort",
            "conditions": [
                condition("PodReadyToStartContainers", true),
                condition("Initialized", true),
                condition("Ready", ready),
                condition("ContainersReady", ready),
                condition("PodScheduled", true),
            ],
            "containerStatuses": containers,
            "initContainerStatuses": init_containers,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};

    #[test]
    fn status_is_running_with_ips_conditions_and_container_statuses() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: ["cont-80-tcp", "cont-81-tcp"]
                    .map(|name| Container {
                        name: name.into(),
                        image: Some("agnhost".into()),
                        ..Default::default()
                    })
                    .to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let record = PodRecord {
            uid: "u".into(),
            namespace: "x".into(),
            name: "a".into(),
            netns: "/run/netns/npc-1".into(),
            host_link: None,
            ip: Ipv4Addr::new(10, 244, 0, 5),
            host_network: false,
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let none = BTreeMap::new();
        let v = pod_status(&pod, &record, Ipv4Addr::new(172, 31, 0, 1), &none, now);
        let status: PodStatus = serde_json::from_value(v["status"].clone()).unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.5"));
        assert_eq!(status.pod_ips.unwrap()[0].ip, "10.244.0.5");
        assert_eq!(status.host_ip.as_deref(), Some("172.31.0.1"));
        let conds = status.conditions.unwrap();
        for kind in ["Ready", "ContainersReady", "Initialized", "PodScheduled"] {
            let c = conds.iter().find(|c| c.type_ == kind).unwrap();
            assert_eq!(c.status, "True", "{kind}");
        }
        let cs = &status.container_statuses.unwrap()[0];
        assert!(cs.ready);
        assert!(cs.state.as_ref().unwrap().running.is_some());

        // One container's server could not bind: that container and the pod are not
        // ready, the other container is, and the condition says why.
        let problems = BTreeMap::from([(
            "cont-81-tcp".to_string(),
            vec!["binding 81/TCP failed: Address in use".to_string()],
        )]);
        let v = pod_status(&pod, &record, Ipv4Addr::new(172, 31, 0, 1), &problems, now);
        let status: PodStatus = serde_json::from_value(v["status"].clone()).unwrap();
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
        assert!(
            ready
                .message
                .unwrap()
                .contains("cont-81-tcp: binding 81/TCP failed")
        );
        let cs = status.container_statuses.unwrap();
        assert!(cs[0].ready);
        assert!(!cs[1].ready);
    }
}
