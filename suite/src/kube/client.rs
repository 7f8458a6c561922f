//! The one place a Kubernetes client is built from a kubeconfig or the in-cluster
//! configuration.

use std::path::PathBuf;

use kube::Client;

use super::other;
use crate::backend::BackendError;

/// Where the kube client's configuration comes from, in kubectl's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeConfigSource {
    /// `--kubeconfig FILE` (or `NETPOL_KUBECONFIG`).
    File(PathBuf),
    /// `$KUBECONFIG` (one or more files) or `~/.kube/config`, read as kubectl reads them.
    Default,
    /// The pod's service account (plugin mode, `--in-cluster`).
    InCluster,
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
