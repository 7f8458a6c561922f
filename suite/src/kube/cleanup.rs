//! Leftovers: what runs of this suite left on the cluster, found by label, and removing it.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};

use super::{CLUSTER_SCOPED, KubeCluster, LABEL_RUN, Leftovers, api_err, is_not_found, other};
use crate::backend::BackendError;

impl KubeCluster {
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

    /// Deletes what runs of this suite left behind (by label): one run's, the objects of runs
    /// that are gone (no live run lease), or everything. Waits until namespaces are gone.
    pub(super) fn remove_leftovers(
        &self,
        which: Leftovers<'_>,
    ) -> Result<Vec<String>, BackendError> {
        self.rt.block_on(self.remove_runs(which, true))
    }

    pub(super) async fn remove_runs(
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
}
