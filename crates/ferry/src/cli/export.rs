//! `ferry export --k8s APP --env ENV --version V`: the Kubernetes objects of a release, as
//! multi-document YAML on stdout, for review or a GitOps repository. Offline: the manifest
//! is read from `-f FILE`; secrets are named with `--secret NAME` (their values are never
//! needed nor printed: the pods read them from the environment's Secret).

use std::path::PathBuf;

use clap::Args;

use super::{Failure, exit};

#[derive(Debug, Args)]
#[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
pub struct ExportArgs {
    /// Print the Kubernetes objects of APP (as named in the manifest).
    #[arg(long = "k8s", value_name = "APP")]
    pub app: String,
    /// The environment (it must say `runtime: kubernetes`).
    #[arg(long, value_name = "ENV")]
    pub env: String,
    /// The version to deploy (substituted for ${VERSION}).
    #[arg(long, value_name = "VERSION")]
    pub version: String,
    /// The manifest.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        default_value = "ferry.yaml"
    )]
    pub file: PathBuf,
    /// A secret of the environment, by name (repeat; `ferry secrets list APP --env ENV` lists
    /// them): its variable is read from the environment's Secret (secretKeyRef).
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
}

#[cfg(feature = "kubernetes")]
pub fn run(args: &ExportArgs) -> anyhow::Result<()> {
    use ferry_core::manifest::RuntimeKind;

    let (_, manifest) = super::commands::parse_manifest_file(&args.file, "nothing was printed")?;
    let invalid = |message: String| Failure::new(exit::INVALID, message);
    if manifest.app != args.app {
        return Err(invalid(format!(
            "{} describes app {}, not {}",
            args.file.display(),
            manifest.app,
            args.app
        ))
        .into());
    }
    let Some(environment) = manifest.environments.get(&args.env) else {
        return Err(invalid(format!(
            "{} has no environment {} (it has: {})",
            args.file.display(),
            args.env,
            manifest.environments.keys().collect::<Vec<_>>().join(", ")
        ))
        .into());
    };
    if environment.runtime != RuntimeKind::Kubernetes {
        return Err(invalid(format!(
            "environment {} does not say `runtime: kubernetes` (see docs/kubernetes.md)",
            args.env
        ))
        .into());
    }
    let version = args.version.as_str();
    if version.is_empty()
        || version.len() > ferry_core::config::MAX_PLACEHOLDER_BYTES
        || version.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(invalid(format!(
            "--version {version:?} must be 1 to {} characters without spaces",
            ferry_core::config::MAX_PLACEHOLDER_BYTES
        ))
        .into());
    }
    for name in &args.secrets {
        let valid = name.len() <= 253
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(invalid(format!(
                "--secret {name:?} is not a variable name (letters, digits and `_`, not starting with a digit)"
            ))
            .into());
        }
    }
    let release = ferry_k8s::Release {
        manifest: &manifest,
        env: &args.env,
        version,
        secrets: &args.secrets,
    };
    let objects = ferry_k8s::objects(&release).map_err(|e| invalid(e.to_string()))?;
    let namespace = ferry_k8s::objects::namespace_name(&manifest, &args.env);
    let mut out = format!(
        "# ferry export --k8s {} --env {} --version {} (from {})\n",
        args.app,
        args.env,
        version,
        args.file.display()
    );
    if !args.secrets.is_empty() {
        out.push_str(&format!(
            "# The pods read {} from the Secret {}/{}, which is not printed: create it with the values.\n",
            args.secrets.join(", "),
            namespace,
            ferry_k8s::names::secret(&manifest.app, &args.env)
        ));
    }
    let mut values = objects.to_values();
    // `traffic: proxy`: Ferry's proxy pods. Their route table (a ConfigMap) and admin token
    // (a Secret) are the server's to write: without them the pods start with no routes.
    if ferry_core::manifest::kubernetes::Kubernetes::proxy_fleet_of(&manifest, &args.env).is_some()
    {
        let fleet = ferry_k8s::proxy::proxy_objects(
            &manifest,
            &args.env,
            &ferry_k8s::proxy::default_image(),
            ferry_k8s::proxy::DEFAULT_SERVER_NAMESPACE,
        )
        .map_err(|e| invalid(e.to_string()))?;
        out.push_str(&format!(
            "# Ferry's proxy pods read their admin token from the Secret {namespace}/{} and their routes from the ConfigMap {namespace}/{}, which the Ferry server writes (not printed).\n",
            ferry_k8s::proxy::ADMIN_SECRET,
            ferry_k8s::proxy::ROUTES_CONFIG_MAP,
        ));
        values.extend(fleet.to_values());
    }
    out.push_str(&ferry_k8s::to_yaml(&values));
    print!("{out}");
    Ok(())
}

#[cfg(not(feature = "kubernetes"))]
pub fn run(_: &ExportArgs) -> anyhow::Result<()> {
    Err(Failure::new(
        exit::INVALID,
        "this ferry was built without the `kubernetes` cargo feature (the default): `ferry export --k8s` is not available",
    )
    .into())
}
