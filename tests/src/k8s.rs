//! The rendered Kubernetes manifests, read the way the StatefulSet controller and the kubelet
//! read them, so a test can run what `deploy/k8s` says instead of what a test thinks it says.
//!
//! [`Manifests::render`] runs kustomize on an overlay (the same command as
//! `deploy/k8s/validate.sh`), parses every document, and hands out the parts a rehearsal
//! needs: a StatefulSet's replicas, pod management policy, service name and claim templates;
//! a Deployment's replicas; and a pod template's first container (command, environment,
//! named ports, probes, volume mounts) with the pod's security context and grace period.
//!
//! Only what the rehearsal acts on is read, and what it knows it cannot honour is an error,
//! not a silent default: an environment variable from a source other than a literal or the
//! pod's own name or namespace, `$(VAR)` in the command or its arguments, a probe that is not
//! a plain-HTTP GET on a named or numbered port, a volume that is neither an emptyDir nor a
//! claim template, a read-only or `subPath` mount. A manifest change that the rehearsal would
//! misread therefore fails the test that uses it, with the field named. Fields it never looks
//! at (affinity, tolerations, the image) have no effect on a rehearsal.
//!
//! A template's labels and its container's CPU and memory requests and limits are read too
//! (the rehearsal gives each pod a cgroup with them, `crate::cgroup`), and so are the
//! NetworkPolicies (`crate::netpol`), which the rehearsal enforces between its pods.
//!
//! Environment values are expanded as the kubelet does: `$(NAME)` becomes the value of a
//! variable defined earlier in the list, `$$` is a literal `$`, and a reference to anything
//! else is left as written.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The Kubernetes default when a pod spec sets no grace period.
const GRACE_PERIOD_DEFAULT: Duration = Duration::from_secs(30);

/// Every document of a rendered overlay.
#[derive(Debug, Clone)]
pub struct Manifests {
    docs: Vec<Value>,
}

/// Where the manifests live: `deploy/k8s` of the workspace.
pub fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

impl Manifests {
    /// Renders `deploy/k8s/overlays/<overlay>` with `kubectl kustomize` (or `kustomize
    /// build`) and parses it.
    pub fn render(overlay: &str) -> Result<Self> {
        Self::render_dir(&k8s_dir().join("overlays").join(overlay))
    }

    /// Renders the kustomization in `dir` and parses it.
    pub fn render_dir(dir: &Path) -> Result<Self> {
        let overlay = dir.display();
        ensure!(dir.is_dir(), "no kustomization at {overlay}");
        let mut tried = Vec::new();
        for (program, args) in [("kubectl", ["kustomize"]), ("kustomize", ["build"])] {
            match Command::new(program).args(args).arg(dir).output() {
                Ok(out) if out.status.success() => {
                    let text = String::from_utf8(out.stdout).context("kustomize output")?;
                    return Self::parse(&text)
                        .with_context(|| format!("reading the rendered overlay {overlay}"));
                }
                Ok(out) => bail!(
                    "{program} could not render {}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => tried.push(format!("{program}: {e}")),
            }
        }
        bail!(
            "rendering the manifests needs kubectl or kustomize on the PATH ({})",
            tried.join("; ")
        )
    }

    /// Parses a multi-document YAML stream.
    pub fn parse(text: &str) -> Result<Self> {
        let docs = yaml_rust2::YamlLoader::load_from_str(text).context("parsing YAML")?;
        let docs = docs.iter().map(to_json).collect::<Result<Vec<_>>>()?;
        Ok(Manifests { docs: docs.into_iter().filter(|d| !d.is_null()).collect() })
    }

    /// The object of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> Result<&Value> {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .with_context(|| format!("no {kind} named {name} in the manifests"))
    }

    /// Every object of `kind`.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs.iter().filter(move |d| d["kind"] == kind)
    }

    pub fn stateful_set(&self, name: &str) -> Result<StatefulSet> {
        let o = self.get("StatefulSet", name)?;
        let spec = &o["spec"];
        let what = format!("StatefulSet {name}");
        let claims = spec["volumeClaimTemplates"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| str_at(c, "/metadata/name", &what).map(str::to_string))
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?
            .unwrap_or_default();
        let policy = spec["podManagementPolicy"].as_str().unwrap_or("OrderedReady");
        ensure!(
            matches!(policy, "OrderedReady" | "Parallel"),
            "{what}: unknown podManagementPolicy {policy:?}"
        );
        Ok(StatefulSet {
            name: name.to_string(),
            service_name: str_at(o, "/spec/serviceName", &what)?.to_string(),
            replicas: u32_at(o, "/spec/replicas", &what).unwrap_or(1),
            parallel: policy == "Parallel",
            template: PodTemplate::read(&spec["template"], &claims, &what)?,
            claims,
        })
    }

    pub fn deployment(&self, name: &str) -> Result<Deployment> {
        let o = self.get("Deployment", name)?;
        let what = format!("Deployment {name}");
        Ok(Deployment {
            name: name.to_string(),
            replicas: u32_at(o, "/spec/replicas", &what).unwrap_or(1),
            template: PodTemplate::read(&o["spec"]["template"], &[], &what)?,
        })
    }
}

/// What the StatefulSet controller needs to know.
#[derive(Debug, Clone)]
pub struct StatefulSet {
    pub name: String,
    /// The headless service that gives pods their names (`<pod>.<service>`).
    pub service_name: String,
    pub replicas: u32,
    /// `podManagementPolicy: Parallel`: pods start and stop without waiting for each other.
    pub parallel: bool,
    pub template: PodTemplate,
    /// Names of the volume claim templates (one PersistentVolumeClaim per pod each).
    pub claims: Vec<String>,
}

impl StatefulSet {
    /// The name of the pod with `ordinal`.
    pub fn pod_name(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.name)
    }
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub name: String,
    pub replicas: u32,
    pub template: PodTemplate,
}

/// A pod template: its first container and the pod-level settings the rehearsal honours.
#[derive(Debug, Clone)]
pub struct PodTemplate {
    pub container: Container,
    pub grace_period: Duration,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub fs_group: Option<u32>,
    /// Volumes by name.
    pub volumes: BTreeMap<String, Volume>,
    /// The pod's labels (`metadata.labels` of the template), which NetworkPolicies select.
    pub labels: BTreeMap<String, String>,
}

/// A container's `resources`, as the kubelet turns them into cgroup settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// `requests.cpu` in thousandths of a core: the container's share of contended CPU.
    pub cpu_request_millis: Option<u64>,
    /// `limits.cpu` in thousandths of a core: a hard quota per period.
    pub cpu_limit_millis: Option<u64>,
    pub memory_request_bytes: Option<u64>,
    /// `limits.memory`: above it, the kernel's OOM killer ends the container.
    pub memory_limit_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Volume {
    /// A fresh, empty directory for each start of the pod, at most this many bytes.
    EmptyDir { size_limit_bytes: Option<u64> },
    /// The pod's own PersistentVolumeClaim from the template of this name: it outlives the
    /// pod.
    Claim,
}

#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    /// `command` followed by `args`.
    pub argv: Vec<String>,
    pub env: Vec<(String, EnvValue)>,
    /// Container ports by name.
    pub ports: BTreeMap<String, u16>,
    pub startup: Option<HttpProbe>,
    pub liveness: Option<HttpProbe>,
    pub readiness: Option<HttpProbe>,
    /// (volume name, mount path), in the order of the manifest.
    pub mounts: Vec<(String, String)>,
    pub read_only_root: bool,
    /// The capabilities the container keeps (`drop: [ALL]` keeps none).
    pub drops_all_capabilities: bool,
    pub resources: Resources,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Literal(String),
    PodName,
    PodNamespace,
}

/// An HTTP GET probe.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    pub path: String,
    pub port: u16,
    pub period: Duration,
    /// An answer later than this is a failure (`timeoutSeconds`, 1 s by default).
    pub timeout: Duration,
    pub failure_threshold: u32,
}

impl HttpProbe {
    /// How long the probe lets a container fail before it acts (period × threshold).
    pub fn patience(&self) -> Duration {
        self.period * self.failure_threshold
    }
}

impl PodTemplate {
    fn read(t: &Value, claims: &[String], what: &str) -> Result<Self> {
        let spec = &t["spec"];
        let containers = spec["containers"].as_array().filter(|c| !c.is_empty());
        let c =
            containers.and_then(|c| c.first()).with_context(|| format!("{what}: no container"))?;
        let sc = &spec["securityContext"];
        let mut volumes = BTreeMap::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let name = str_at(v, "/name", what)?.to_string();
            let vol = if let Some(e) = v.get("emptyDir") {
                let size_limit_bytes = match e.get("sizeLimit") {
                    None => None,
                    Some(q) => Some(quantity_bytes(
                        q.as_str().with_context(|| format!("{what}: volume {name}: sizeLimit"))?,
                    )?),
                };
                Volume::EmptyDir { size_limit_bytes }
            } else {
                bail!("{what}: volume {name} is neither an emptyDir nor a claim template")
            };
            volumes.insert(name, vol);
        }
        for claim in claims {
            volumes.insert(claim.clone(), Volume::Claim);
        }
        let grace_period = spec["terminationGracePeriodSeconds"]
            .as_u64()
            .map_or(GRACE_PERIOD_DEFAULT, Duration::from_secs);
        let mut labels = BTreeMap::new();
        for (k, v) in t.pointer("/metadata/labels").and_then(Value::as_object).into_iter().flatten()
        {
            let v = v.as_str().with_context(|| format!("{what}: label {k} is not a string"))?;
            labels.insert(k.clone(), v.to_string());
        }
        // The container's own settings override the pod's.
        let csc = &c["securityContext"];
        Ok(PodTemplate {
            container: Container::read(c, &volumes, what)?,
            grace_period,
            run_as_user: id_at(csc, "runAsUser", what)?.or(id_at(sc, "runAsUser", what)?),
            run_as_group: id_at(csc, "runAsGroup", what)?.or(id_at(sc, "runAsGroup", what)?),
            fs_group: id_at(sc, "fsGroup", what)?,
            volumes,
            labels,
        })
    }
}

impl Container {
    fn read(c: &Value, volumes: &BTreeMap<String, Volume>, what: &str) -> Result<Self> {
        let name = str_at(c, "/name", what)?.to_string();
        let what = format!("{what}, container {name}");
        let strings = |field: &str| -> Result<Vec<String>> {
            c[field]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| s.as_str().map(str::to_string).with_context(|| format!("{what}: {field}")))
                .collect()
        };
        let mut argv = strings("command")?;
        ensure!(!argv.is_empty(), "{what}: no command (the image's default is not known here)");
        argv.extend(strings("args")?);
        ensure!(
            !argv.iter().any(|a| a.contains("$(")),
            "{what}: $(VAR) in the command or its arguments is not expanded here"
        );
        let mut env = Vec::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let var = str_at(e, "/name", &what)?.to_string();
            let value = if let Some(v) = e.get("value") {
                EnvValue::Literal(v.as_str().with_context(|| format!("{what}: env {var}"))?.into())
            } else {
                match e.pointer("/valueFrom/fieldRef/fieldPath").and_then(Value::as_str) {
                    Some("metadata.name") => EnvValue::PodName,
                    Some("metadata.namespace") => EnvValue::PodNamespace,
                    _ => bail!(
                        "{what}: env {var}: only literal values and the pod's name or namespace are known here"
                    ),
                }
            };
            env.push((var, value));
        }
        let mut ports = BTreeMap::new();
        for p in c["ports"].as_array().into_iter().flatten() {
            let port = u16::try_from(p["containerPort"].as_u64().unwrap_or(0))
                .ok()
                .filter(|&p| p > 0)
                .with_context(|| format!("{what}: a containerPort"))?;
            if let Some(n) = p["name"].as_str() {
                ports.insert(n.to_string(), port);
            }
        }
        let probe = |field: &str| -> Result<Option<HttpProbe>> {
            let Some(p) = c.get(field) else { return Ok(None) };
            let get =
                p.get("httpGet").with_context(|| format!("{what}: {field} is not an httpGet"))?;
            let scheme = get["scheme"].as_str().unwrap_or("HTTP");
            ensure!(scheme == "HTTP", "{what}: {field}: scheme {scheme} is not probed here");
            let port = match &get["port"] {
                Value::String(n) => {
                    *ports.get(n).with_context(|| format!("{what}: {field}: no port named {n}"))?
                }
                Value::Number(n) => n
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .with_context(|| format!("{what}: {field}: port {n}"))?,
                other => bail!("{what}: {field}: port {other}"),
            };
            Ok(Some(HttpProbe {
                path: get["path"].as_str().unwrap_or("/").to_string(),
                port,
                period: Duration::from_secs(p["periodSeconds"].as_u64().unwrap_or(10)),
                timeout: Duration::from_secs(p["timeoutSeconds"].as_u64().unwrap_or(1)),
                failure_threshold: u32::try_from(p["failureThreshold"].as_u64().unwrap_or(3))
                    .with_context(|| format!("{what}: {field}: failureThreshold"))?,
            }))
        };
        let mut mounts = Vec::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let vol = str_at(m, "/name", &what)?.to_string();
            let path = str_at(m, "/mountPath", &what)?.to_string();
            ensure!(volumes.contains_key(&vol), "{what}: mounts unknown volume {vol}");
            ensure!(path.starts_with('/'), "{what}: mount path {path} is not absolute");
            ensure!(
                m.get("subPath").is_none() && m["readOnly"].as_bool() != Some(true),
                "{what}: mount {vol} at {path}: subPath and readOnly mounts are not made here"
            );
            mounts.push((vol, path));
        }
        let resources = Resources::read(&c["resources"], &what)?;
        let sc = &c["securityContext"];
        let drops = sc.pointer("/capabilities/drop").and_then(Value::as_array);
        Ok(Container {
            name,
            argv,
            env,
            startup: probe("startupProbe")?,
            liveness: probe("livenessProbe")?,
            readiness: probe("readinessProbe")?,
            ports,
            mounts,
            read_only_root: sc["readOnlyRootFilesystem"].as_bool().unwrap_or(false),
            drops_all_capabilities: drops.is_some_and(|d| d.iter().any(|c| c == "ALL")),
            resources,
        })
    }

    /// The container's environment in pod `pod` of `namespace`, expanded as the kubelet
    /// expands it.
    pub fn env_for(&self, pod: &str, namespace: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (name, v) in &self.env {
            let value = match v {
                EnvValue::Literal(s) => expand(s, &out),
                EnvValue::PodName => pod.to_string(),
                EnvValue::PodNamespace => namespace.to_string(),
            };
            out.retain(|(n, _)| n != name);
            out.push((name.clone(), value));
        }
        out
    }

    /// The port named `name`.
    pub fn port(&self, name: &str) -> Result<u16> {
        self.ports
            .get(name)
            .copied()
            .with_context(|| format!("container {} has no port {name}", self.name))
    }
}

impl Resources {
    fn read(r: &Value, what: &str) -> Result<Self> {
        for section in ["requests", "limits"] {
            for key in r[section].as_object().into_iter().flatten().map(|(k, _)| k) {
                ensure!(
                    key == "cpu" || key == "memory",
                    "{what}: resources.{section}.{key} is not applied here (only cpu and memory)"
                );
            }
        }
        let text = |section: &str, key: &str| -> Result<Option<String>> {
            match &r[section][key] {
                Value::Null => Ok(None),
                Value::String(s) => Ok(Some(s.clone())),
                Value::Number(n) => Ok(Some(n.to_string())),
                other => bail!("{what}: resources.{section}.{key} = {other}"),
            }
        };
        let cpu = |section: &str| -> Result<Option<u64>> {
            text(section, "cpu")?
                .map(|q| cpu_millis(&q).with_context(|| format!("{what}: resources.{section}.cpu")))
                .transpose()
        };
        let memory = |section: &str| -> Result<Option<u64>> {
            text(section, "memory")?
                .map(|q| {
                    quantity_bytes(&q)
                        .with_context(|| format!("{what}: resources.{section}.memory"))
                })
                .transpose()
        };
        Ok(Resources {
            cpu_request_millis: cpu("requests")?,
            cpu_limit_millis: cpu("limits")?,
            memory_request_bytes: memory("requests")?,
            memory_limit_bytes: memory("limits")?,
        })
    }
}

/// A Kubernetes CPU quantity in thousandths of a core: `1` → 1000, `500m` → 500, `0.25` → 250.
pub fn cpu_millis(q: &str) -> Result<u64> {
    let bad = || format!("CPU quantity {q:?}: cores (`2`, `0.5`) or millicores (`500m`)");
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().with_context(bad);
    }
    let (whole, frac) = q.split_once('.').unwrap_or((q, ""));
    ensure!(frac.len() <= 3 && frac.bytes().all(|b| b.is_ascii_digit()), "{}", bad());
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().with_context(bad)? };
    let frac: u64 =
        if frac.is_empty() { 0 } else { format!("{frac:0<3}").parse().with_context(bad)? };
    whole.checked_mul(1000).and_then(|w| w.checked_add(frac)).with_context(bad)
}

/// `$(NAME)` → the value of an earlier variable; `$$` → `$`; anything else as written.
fn expand(s: &str, defined: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
            && let Some((_, v)) = defined.iter().rev().find(|(n, _)| n == &body[..end])
        {
            out.push_str(v);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A Kubernetes quantity of bytes: `64Mi`, `1Gi`, `500M`, `1024`.
pub fn quantity_bytes(q: &str) -> Result<u64> {
    const UNITS: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (digits, unit) =
        UNITS.iter().find_map(|(u, m)| q.strip_suffix(u).map(|d| (d, *m))).unwrap_or((q, 1));
    let n: u64 =
        digits.parse().with_context(|| format!("quantity {q:?}: not a whole number of bytes"))?;
    n.checked_mul(unit).with_context(|| format!("quantity {q:?} overflows"))
}

fn str_at<'a>(v: &'a Value, pointer: &str, what: &str) -> Result<&'a str> {
    v.pointer(pointer).and_then(Value::as_str).with_context(|| format!("{what}: no {pointer}"))
}

fn u32_at(v: &Value, pointer: &str, what: &str) -> Result<u32> {
    let n = v
        .pointer(pointer)
        .and_then(Value::as_u64)
        .with_context(|| format!("{what}: no {pointer}"))?;
    u32::try_from(n).with_context(|| format!("{what}: {pointer} = {n}"))
}

fn id_at(sc: &Value, field: &str, what: &str) -> Result<Option<u32>> {
    sc.get(field)
        .map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .with_context(|| format!("{what}: securityContext.{field}"))
        })
        .transpose()
}

/// A YAML node as JSON (the manifests use nothing JSON cannot hold).
fn to_json(y: &yaml_rust2::Yaml) -> Result<Value> {
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null | Yaml::BadValue => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(r) => {
            let f: f64 = r.parse().with_context(|| format!("YAML number {r}"))?;
            serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect::<Result<_>>()?),
        Yaml::Hash(h) => {
            let mut m = serde_json::Map::new();
            for (k, v) in h {
                let k = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => bail!("a YAML mapping key that is not a scalar: {other:?}"),
                };
                m.insert(k, to_json(v)?);
            }
            Value::Object(m)
        }
        Yaml::Alias(_) => bail!("YAML aliases are not used in the manifests"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expands_earlier_variables_only() {
        let defined = vec![("POD_NAME".to_string(), "ringkv-2".to_string())];
        assert_eq!(expand("$(POD_NAME).ringkv:7001", &defined), "ringkv-2.ringkv:7001");
        assert_eq!(expand("$(LATER)x", &defined), "$(LATER)x");
        assert_eq!(expand("$$(POD_NAME)", &defined), "$(POD_NAME)");
        assert_eq!(expand("a$b$(", &defined), "a$b$(");
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("64Mi").unwrap(), 64 << 20);
        assert_eq!(quantity_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(quantity_bytes("4096").unwrap(), 4096);
        assert!(quantity_bytes("1.5Gi").is_err());
        assert!(quantity_bytes("99999999999Ti").is_err());
    }

    /// A Deployment `x` (labelled `app: x`) whose one container `c` runs `/bin/x` with
    /// `container` (more of its fields, indented as a container's) added.
    fn deployment_x(container: &str) -> String {
        format!(
            "
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: x }}
spec:
  template:
    metadata: {{ labels: {{ app: x }} }}
    spec:
      containers:
        - name: c
          command: [/bin/x]{container}"
        )
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(cpu_millis("1").unwrap(), 1000);
        assert_eq!(cpu_millis("500m").unwrap(), 500);
        assert_eq!(cpu_millis("0.25").unwrap(), 250);
        assert_eq!(cpu_millis("2.5").unwrap(), 2500);
        assert!(cpu_millis("0.0001").is_err(), "finer than a millicore");
        assert!(cpu_millis("one").is_err());
    }

    #[test]
    fn a_template_with_a_resource_it_cannot_apply_is_refused() {
        let text = deployment_x(
            "
          resources:
            requests: { cpu: 250m, memory: 64Mi }
            limits: { cpu: \"1\", memory: 128Mi, nvidia.com/gpu: 1 }
",
        );
        let text = text.as_str();
        let e = Manifests::parse(text).unwrap().deployment("x").unwrap_err();
        assert!(format!("{e:#}").contains("nvidia.com/gpu"), "{e:#}");
        let m = Manifests::parse(&text.replace(", nvidia.com/gpu: 1", "")).unwrap();
        let t = m.deployment("x").unwrap().template;
        assert_eq!(
            t.container.resources,
            Resources {
                cpu_request_millis: Some(250),
                cpu_limit_millis: Some(1000),
                memory_request_bytes: Some(64 << 20),
                memory_limit_bytes: Some(128 << 20),
            }
        );
        assert_eq!(t.labels["app"], "x");
    }

    #[test]
    fn a_template_with_an_unknown_env_source_is_refused() {
        let text = deployment_x(
            "
          env:
            - name: NODE
              valueFrom: { fieldRef: { fieldPath: spec.nodeName } }
",
        );
        let m = Manifests::parse(&text).unwrap();
        let e = m.deployment("x").unwrap_err();
        assert!(format!("{e:#}").contains("env NODE"), "{e:#}");
    }

    /// The dev overlay as the rehearsal reads it: if this drifts, the rehearsal reads
    /// something else than what is deployed.
    #[test]
    fn the_dev_overlay_reads_as_the_rehearsal_needs() {
        let m = match Manifests::render("dev") {
            Ok(m) => m,
            // kubectl is installed by the test command's environment; say so when absent.
            Err(e) => panic!("{e:#}"),
        };
        let sts = m.stateful_set("ringkv").unwrap();
        assert_eq!(sts.service_name, "ringkv");
        assert_eq!(sts.claims, vec!["data".to_string()]);
        let c = &sts.template.container;
        let env: BTreeMap<_, _> = c.env_for("ringkv-4", "default").into_iter().collect();
        assert_eq!(env["RINGKV_NODE_ID"], "ringkv-4");
        assert_eq!(env["RINGKV_ADVERTISE_ADDR"], "ringkv-4.ringkv:7001");
        assert!(c.readiness.as_ref().is_some_and(|p| p.path == "/readyz"));
        assert!(c.mounts.iter().any(|(v, _)| v == "data"));
        assert!(c.resources.memory_limit_bytes.is_some(), "the dev overlay limits memory");
        assert_eq!(sts.template.labels["app.kubernetes.io/name"], "ringkv-node");
        assert_eq!(sts.template.volumes["data"], Volume::Claim);
        let router = m.deployment("ringkv-router").unwrap();
        assert!(router.template.container.port("grpc").is_ok());
    }

    /// The access-policy example: nodes and routers read the policy from the mounted Secret
    /// (as a directory, so updates reach them), with TLS on (a policy without TLS is refused
    /// at start), and the router's pod can read its Secret files (root-owned, mode 0400:
    /// readable through the fsGroup only).
    #[test]
    fn the_access_policy_example_mounts_the_policy_everywhere_with_tls() {
        let dir = k8s_dir().join("examples/access-policy");
        let m = Manifests::render_dir(&dir).unwrap_or_else(|e| panic!("{e:#}"));
        for (kind, name, policy_env, tls_env) in [
            ("StatefulSet", "ringkv", "RINGKV_AUTH_POLICY", "RINGKV_TLS_DIR"),
            ("Deployment", "ringkv-router", "RINGKV_ROUTER_AUTH_POLICY", "RINGKV_ROUTER_TLS_DIR"),
        ] {
            let pod = &m.get(kind, name).unwrap()["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            let env = |n: &str| {
                c["env"].as_array().unwrap().iter().find(|e| e["name"] == n).map(|e| &e["value"])
            };
            let path = env(policy_env).and_then(|v| v.as_str()).expect(policy_env);
            assert!(env(tls_env).is_some(), "{name}: the policy needs {tls_env}");
            let mount = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| path.starts_with(v["mountPath"].as_str().unwrap_or("-")))
                .unwrap_or_else(|| panic!("{name}: nothing mounted at {path}"));
            assert!(mount.get("subPath").is_none(), "{name}: a subPath mount is never updated");
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("{name}: no volume {}", mount["name"]));
            assert_eq!(volume["secret"]["secretName"], "ringkv-access-policy", "{name}");
            let file = &path[mount["mountPath"].as_str().unwrap().len()..];
            assert_eq!(file, "/policy.toml", "{name}: the Secret's key is policy.toml");
            assert_eq!(pod["securityContext"]["fsGroup"], 10001, "{name}: Secret unreadable");
        }
    }
}
