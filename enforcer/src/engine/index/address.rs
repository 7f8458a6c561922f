//! Phase 1: place namespaces, pods and nodes in the snapshot, and index their addresses.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;

use super::{
    Endpoint, NamedPort, NamespaceEntry, PORT_NAME_UNINTERNED, PodEntry, Snapshot, Sources,
};
use crate::engine::selector::Labels;

/// A snapshot with its namespaces, pods, nodes, address index and pod ranges in place, and what
/// the later phases need from placing them.
pub(super) struct Placed {
    /// The snapshot so far (no policies yet).
    pub(super) snap: Snapshot,
    /// Per namespace: its pods that can be a policy's subject or peer (not host-networked, not
    /// finished).
    pub(super) ns_pods: Vec<Vec<u32>>,
    /// Interned container port names (ids from 1).
    pub(super) port_names: HashMap<Box<str>, u16>,
}

/// Places everything but the policies.
pub(super) fn place(sources: Sources<'_>, generation: u64) -> Placed {
    let mut placed = Placed {
        snap: Snapshot {
            generation,
            ..Default::default()
        },
        ns_pods: Vec::new(),
        port_names: HashMap::new(),
    };
    placed.namespaces(sources.namespaces);
    placed.pods(sources.pods);
    placed.nodes(sources);
    placed
}

impl Placed {
    /// The namespaces the writer has seen, in its order.
    fn namespaces(&mut self, namespaces: &[(&str, &Labels)]) {
        let snap = &mut self.snap;
        for (name, labels) in namespaces {
            let name: Arc<str> = (*name).into();
            snap.ns_by_name
                .insert(name.clone(), snap.namespaces.len() as u32);
            snap.namespaces.push(NamespaceEntry {
                name,
                labels: (*labels).clone(),
            });
        }
        self.ns_pods = vec![Vec::new(); snap.namespaces.len()];
    }

    /// The pods, with placeholders for namespaces only pods mention; their addresses and named
    /// ports.
    fn pods(&mut self, pods: &[&Arc<super::PodRecord>]) {
        for record in pods {
            let snap = &mut self.snap;
            let ns = match snap.ns_by_name.get(&record.namespace) {
                Some(i) => *i,
                None => {
                    let i = snap.namespaces.len() as u32;
                    snap.ns_by_name.insert(record.namespace.clone(), i);
                    snap.namespaces.push(NamespaceEntry {
                        name: record.namespace.clone(),
                        labels: Labels::new(),
                    });
                    self.ns_pods.push(Vec::new());
                    i
                }
            };
            let idx = snap.pods.len() as u32;
            snap.pod_by_name
                .insert((record.namespace.clone(), record.name.clone()), idx);
            if !record.host_network && !record.finished {
                self.ns_pods[ns as usize].push(idx);
                for ip in &record.ips {
                    snap.by_ip.insert(*ip, Endpoint::Pod(idx));
                }
            }
            let port_names = &mut self.port_names;
            let named_ports = record
                .ports
                .iter()
                .filter_map(|p| {
                    let name = p.name.as_deref()?;
                    let id = match port_names.get(name) {
                        Some(id) => *id,
                        None => {
                            let next = port_names.len() + 1;
                            let id = u16::try_from(next)
                                .ok()
                                .filter(|id| *id != PORT_NAME_UNINTERNED)?;
                            port_names.insert(name.into(), id);
                            id
                        }
                    };
                    Some(NamedPort {
                        name: id,
                        port: p.port,
                        protocol: p.protocol,
                    })
                })
                .collect();
            snap.pods.push(PodEntry {
                record: (*record).clone(),
                namespace: ns,
                named_ports,
            });
        }
    }

    /// The nodes and their addresses (after the pods: a pod address wins), and the pod ranges.
    fn nodes(&mut self, sources: Sources<'_>) {
        let snap = &mut self.snap;
        for node in sources.nodes {
            let idx = snap.nodes.len() as u32;
            for ip in &node.addresses {
                // A pod IP wins over a node address (they never legitimately coincide).
                snap.by_ip.entry(*ip).or_insert(Endpoint::Node(idx));
            }
            snap.nodes.push((***node).clone());
        }
        let ranges: Vec<IpNet> = sources
            .pod_ranges
            .iter()
            .chain(sources.nodes.iter().flat_map(|n| &n.pod_cidrs))
            .map(IpNet::trunc)
            .collect();
        snap.pod_ranges = IpNet::aggregate(&ranges);
    }
}
