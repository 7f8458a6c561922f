//! The pod status the agent reports: Running, the pod's IPs, the kubelet's conditions and
//! container statuses, so readiness waits and StatefulSets behave.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::records::PodRecord;

/// The status the agent writes for a realized pod (a JSON merge patch body).
pub fn pod_status(
    pod: &Pod,
    record: &PodRecord,
    node_ip: Ipv4Addr,
    ready: bool,
    now: Timestamp,
) -> serde_json::Value {
    let time = serde_json::to_value(Time(now)).expect("Time serializes");
    let started = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .map(|t| serde_json::to_value(t).expect("Time serializes"))
        .unwrap_or_else(|| time.clone());
    let flag = |b: bool| if b { "True" } else { "False" };
    let condition = |kind: &str, ok: bool| json!({"type": kind, "status": flag(ok), "lastProbeTime": null, "lastTransitionTime": time});
    let spec = pod.spec.clone().unwrap_or_default();
    let uid = &record.uid;
    let containers: Vec<serde_json::Value> = spec
        .containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "containerID": format!("netpol-local://{uid}/{}", c.name),
                "ready": ready,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": time}},
            })
        })
        .collect();
    let init_containers: Vec<serde_json::Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "containerID": format!("netpol-local://{uid}/{}", c.name),
                "ready": true,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                    "startedAt": time, "finishedAt": time}},
            })
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
                containers: vec![Container {
                    name: "cont-80-tcp".into(),
                    image: Some("agnhost".into()),
                    ..Default::default()
                }],
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
        let v = pod_status(&pod, &record, Ipv4Addr::new(172, 31, 0, 1), true, now);
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

        let v = pod_status(&pod, &record, Ipv4Addr::new(172, 31, 0, 1), false, now);
        let status: PodStatus = serde_json::from_value(v["status"].clone()).unwrap();
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
    }
}
