//! Leftovers: what runs of this suite left on the cluster, found by label, and removing it.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};

use super::{CLUSTER_SCOPED, KubeCluster, LABEL_RUN, Leftovers, api_err, is_not_found, other};
use crate::backend::BackendError;

impl KubeCluster {
    /// The objects of `kind`, one of [`CLUSTER_SCOPED`], labelled `selector`, with the API that
    /// serves them; `None` where the cluster does not serve the kind.
    async fn labelled_objects(
        &self,
        kind: &str,
        selector: &str,
    ) -> Result<Option<(Api<DynamicObject>, Vec<DynamicObject>)>, BackendError> {
        if !self.caps.kinds.contains(kind) {
            return Ok(None);
        }
        let api = self.dynamic(kind, None)?;
        let list = api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| other(format!("listing {kind}s"), e))?;
        Ok(Some((api, list.items)))
    }

    /// The namespaces labelled `selector`.
    async fn labelled_namespaces(&self, selector: &str) -> Result<Vec<Namespace>, BackendError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| other("listing namespaces", e))?;
        Ok(list.items)
    }

    /// The run ids whose objects exist on the cluster but whose run lease is gone or expired.
    async fn dead_runs(&self) -> Result<BTreeSet<String>, BackendError> {
        let live = self.leases.live_runs().await?;
        let mut runs = BTreeSet::new();
        for kind in CLUSTER_SCOPED {
            if let Some((_, objects)) = self.labelled_objects(kind, LABEL_RUN).await? {
                runs.extend(objects.iter().filter_map(run_of));
            }
        }
        let namespaces = self.labelled_namespaces(LABEL_RUN).await?;
        runs.extend(namespaces.iter().filter_map(run_of));
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
                let Some((api, objects)) = self.labelled_objects(kind, selector).await? else {
                    continue;
                };
                for obj in objects {
                    let name = obj.name_any();
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => removed.push(format!("{kind} {name}")),
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(api_err("delete", kind, &name, e)),
                    }
                }
            }
            let namespaces = self.labelled_namespaces(selector).await?;
            let names: Vec<String> = namespaces.iter().map(|n| n.name_any()).collect();
            if wait {
                self.delete_and_wait_namespaces(&names).await?;
            } else {
                let api: Api<Namespace> = Api::all(self.client.clone());
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

/// The run an object of the suite's belongs to: its run label.
fn run_of(object: &impl ResourceExt) -> Option<String> {
    object.labels().get(LABEL_RUN).cloned()
}
