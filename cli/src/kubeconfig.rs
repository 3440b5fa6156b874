//! Which cluster a command talks to, picked as kubectl picks it: `--kubeconfig`,
//! else `KUBECONFIG` or `~/.kube/config`, else the pod's service account;
//! `--context` names a context other than the current one.

use std::path::Path;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

pub async fn load(kubeconfig: Option<&Path>, context: Option<&str>) -> anyhow::Result<kube::Config> {
    let options = KubeConfigOptions { context: context.map(str::to_string), ..Default::default() };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("cannot use the kubeconfig {}", path.display()))?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .context("cannot use the kubeconfig (KUBECONFIG or ~/.kube/config)")?,
        (None, None) => kube::Config::infer()
            .await
            .context("no kubeconfig found (KUBECONFIG, ~/.kube/config) and not running in a pod")?,
    };
    Ok(config)
}
