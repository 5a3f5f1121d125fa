//! NetworkPolicies read from the rendered manifests and worked out for a rehearsal's pods:
//! which pod may open a connection to which port of which other pod.
//!
//! The rules are Kubernetes' own (networking.k8s.io/v1), for the subset the manifests use:
//! - a pod selected by any policy whose `policyTypes` include `Ingress` is *isolated*: it
//!   accepts only what one of those policies' ingress rules allows (their union); a pod no
//!   policy selects accepts everything;
//! - a rule allows its `ports` (all ports when it lists none) from its `from` peers (anyone
//!   when it lists none);
//! - a peer with a `podSelector` alone means the pods of the policy's namespace with those
//!   labels; with a `namespaceSelector` alone, every pod of the namespaces with those labels;
//!   with both, the pods with those labels in those namespaces. An empty selector (`{}`)
//!   selects everything.
//!
//! What the rehearsal cannot enforce is refused with the field named, as `crate::k8s` does:
//! egress policies, `matchExpressions`, `ipBlock` peers, named ports, `endPort`, and any
//! protocol but TCP. Enforcing the result is [`crate::pods::PodLab`]'s (iptables in each
//! pod's network namespace).
//!
//! Traffic from the pod's own node (the kubelet's probes) is always allowed, as the
//! Kubernetes documentation says CNIs do, and is not modelled here.

use crate::k8s::Manifests;
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::collections::BTreeMap;

/// Labels, or a `matchLabels` selector (an empty one selects everything).
pub type Labels = BTreeMap<String, String>;

/// One NetworkPolicy, as far as ingress goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub name: String,
    /// Its namespace (`None`: the namespace it is applied to).
    pub namespace: Option<String>,
    pub pod_selector: Labels,
    /// The ingress rules; `None` when the policy does not isolate for ingress.
    pub ingress: Option<Vec<IngressRule>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressRule {
    /// TCP ports; `None`: every port.
    pub ports: Option<Vec<u16>>,
    /// `None`: from anywhere.
    pub from: Option<Vec<Peer>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pods: Option<Labels>,
    pub namespaces: Option<Labels>,
}

/// A pod as policies see it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub namespace: String,
    pub labels: Labels,
    /// The labels of its namespace (Kubernetes always sets `kubernetes.io/metadata.name`).
    pub namespace_labels: Labels,
}

/// What a pod accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingress {
    /// No policy selects it: everything.
    Open,
    /// Only these; nothing else.
    Only(Vec<Allow>),
}

/// Connections allowed to `ports` (`None`: every port) from `from` (pod names; `None`: any
/// source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub ports: Option<Vec<u16>>,
    pub from: Option<Vec<String>>,
}

impl NetworkPolicy {
    /// Every NetworkPolicy of the rendered manifests.
    pub fn all(m: &Manifests) -> Result<Vec<Self>> {
        m.of_kind("NetworkPolicy").map(Self::read).collect()
    }

    fn read(o: &Value) -> Result<Self> {
        let name = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?").to_string();
        let what = format!("NetworkPolicy {name}");
        let spec = &o["spec"];
        let types: Vec<&str> = match spec.get("policyTypes") {
            Some(t) => t
                .as_array()
                .with_context(|| format!("{what}: policyTypes"))?
                .iter()
                .map(|t| t.as_str().with_context(|| format!("{what}: policyTypes")))
                .collect::<Result<_>>()?,
            // Kubernetes' default: Ingress, and Egress when there are egress rules.
            None if spec.get("egress").is_some() => vec!["Ingress", "Egress"],
            None => vec!["Ingress"],
        };
        for t in &types {
            ensure!(*t == "Ingress", "{what}: policyType {t} is not enforced here");
        }
        let ingress = if types.contains(&"Ingress") {
            let rules = spec["ingress"].as_array().into_iter().flatten();
            Some(rules.map(|r| IngressRule::read(r, &what)).collect::<Result<_>>()?)
        } else {
            None
        };
        Ok(NetworkPolicy {
            namespace: o.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string),
            pod_selector: selector(&spec["podSelector"], &format!("{what}: podSelector"))?,
            ingress,
            name,
        })
    }

    fn selects(&self, pod: &Endpoint) -> bool {
        self.namespace.as_ref().is_none_or(|ns| *ns == pod.namespace)
            && matches(&self.pod_selector, &pod.labels)
    }
}

impl IngressRule {
    fn read(r: &Value, what: &str) -> Result<Self> {
        let ports = match r.get("ports") {
            None => None,
            Some(ps) => {
                let ps = ps.as_array().with_context(|| format!("{what}: ports"))?;
                let mut out = Vec::new();
                for p in ps {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    ensure!(proto == "TCP", "{what}: protocol {proto} is not enforced here");
                    ensure!(p.get("endPort").is_none(), "{what}: endPort is not enforced here");
                    let port = match &p["port"] {
                        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                        Value::String(s) => bail!("{what}: named port {s} is not resolved here"),
                        _ => None,
                    };
                    out.push(port.with_context(|| format!("{what}: a port {}", p["port"]))?);
                }
                // `ports: []` means every port, as no `ports` does.
                (!out.is_empty()).then_some(out)
            }
        };
        let from = match r.get("from") {
            None => None,
            Some(f) => {
                let f = f.as_array().with_context(|| format!("{what}: from"))?;
                let peers: Vec<Peer> =
                    f.iter().map(|p| Peer::read(p, what)).collect::<Result<_>>()?;
                (!peers.is_empty()).then_some(peers)
            }
        };
        Ok(IngressRule { ports, from })
    }
}

impl Peer {
    fn read(p: &Value, what: &str) -> Result<Self> {
        ensure!(p.get("ipBlock").is_none(), "{what}: ipBlock peers are not enforced here");
        let get = |field: &str| -> Result<Option<Labels>> {
            p.get(field).map(|s| selector(s, &format!("{what}: {field}"))).transpose()
        };
        let peer = Peer { pods: get("podSelector")?, namespaces: get("namespaceSelector")? };
        ensure!(peer.pods.is_some() || peer.namespaces.is_some(), "{what}: an empty peer");
        Ok(peer)
    }

    fn admits(&self, policy_namespace: &str, source: &Endpoint) -> bool {
        let namespace_ok = match &self.namespaces {
            Some(sel) => matches(sel, &source.namespace_labels),
            None => source.namespace == policy_namespace,
        };
        namespace_ok && self.pods.as_ref().is_none_or(|sel| matches(sel, &source.labels))
    }
}

fn selector(s: &Value, what: &str) -> Result<Labels> {
    if s.is_null() {
        return Ok(Labels::new());
    }
    let o = s.as_object().with_context(|| format!("{what}: not a selector"))?;
    for k in o.keys() {
        ensure!(k == "matchLabels", "{what}: {k} is not evaluated here (only matchLabels)");
    }
    let mut out = Labels::new();
    for (k, v) in o.get("matchLabels").and_then(Value::as_object).into_iter().flatten() {
        let v = v.as_str().with_context(|| format!("{what}: label {k}"))?;
        out.insert(k.clone(), v.to_string());
    }
    Ok(out)
}

fn matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// What `target` accepts under `policies`, with sources named among `pods`.
pub fn ingress(policies: &[NetworkPolicy], target: &Endpoint, pods: &[Endpoint]) -> Ingress {
    let mut allows = Vec::new();
    let mut isolated = false;
    for p in policies.iter().filter(|p| p.selects(target)) {
        let Some(rules) = &p.ingress else { continue };
        isolated = true;
        let ns = p.namespace.as_deref().unwrap_or(&target.namespace);
        for r in rules {
            let from = r.from.as_ref().map(|peers| {
                pods.iter()
                    .filter(|s| peers.iter().any(|peer| peer.admits(ns, s)))
                    .map(|s| s.name.clone())
                    .collect()
            });
            allows.push(Allow { ports: r.ports.clone(), from });
        }
    }
    if isolated { Ingress::Only(allows) } else { Ingress::Open }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, ns: &str, labels: &[(&str, &str)]) -> Endpoint {
        let l =
            |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Endpoint {
            name: name.into(),
            namespace: ns.into(),
            labels: l(labels),
            namespace_labels: l(&[("kubernetes.io/metadata.name", ns)]),
        }
    }

    const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: db }
spec:
  podSelector: { matchLabels: { app: db } }
  policyTypes: [Ingress]
  ingress:
    - ports: [{ port: 8001 }]
      from: [{ podSelector: { matchLabels: { app: db } } }]
    - ports: [{ port: 7001, protocol: TCP }]
      from:
        - podSelector: { matchLabels: { client: "yes" } }
        - namespaceSelector: { matchLabels: { kubernetes.io/metadata.name: apps } }
"#;

    #[test]
    fn a_selected_pod_accepts_only_what_a_rule_allows() {
        let p = NetworkPolicy::all(&Manifests::parse(POLICY).unwrap()).unwrap();
        let pods = vec![
            endpoint("db-0", "default", &[("app", "db")]),
            endpoint("db-1", "default", &[("app", "db")]),
            endpoint("web", "default", &[("client", "yes")]),
            endpoint("other", "default", &[]),
            endpoint("app", "apps", &[]),
            endpoint("web2", "elsewhere", &[("client", "yes")]),
        ];
        let i = ingress(&p, &pods[0], &pods);
        let Ingress::Only(allows) = i else { panic!("db-0 is not isolated") };
        assert_eq!(allows[0].ports, Some(vec![8001]));
        assert_eq!(allows[0].from, Some(vec!["db-0".to_string(), "db-1".to_string()]));
        assert_eq!(allows[1].ports, Some(vec![7001]));
        // A podSelector alone looks in the policy's namespace only.
        assert_eq!(allows[1].from, Some(vec!["web".to_string(), "app".to_string()]));
        assert_eq!(ingress(&p, &pods[2], &pods), Ingress::Open, "web is not selected");
    }

    #[test]
    fn what_cannot_be_enforced_is_refused() {
        for (from, to, field) in [
            ("policyTypes: [Ingress]", "policyTypes: [Ingress, Egress]", "Egress"),
            ("{ port: 8001 }", "{ port: grpc }", "named port"),
            ("{ port: 8001 }", "{ port: 8001, protocol: UDP }", "UDP"),
            (
                "{ matchLabels: { app: db } } }]",
                "{ matchLabels: { app: db } } }, { ipBlock: { cidr: 10.0.0.0/8 } }]",
                "ipBlock",
            ),
            (
                "podSelector: { matchLabels: { app: db } }\n  policyTypes",
                "podSelector: { matchExpressions: [] }\n  policyTypes",
                "matchExpressions",
            ),
        ] {
            assert!(POLICY.contains(from), "{from}");
            let m = Manifests::parse(&POLICY.replacen(from, to, 1)).unwrap();
            let e = NetworkPolicy::all(&m).unwrap_err();
            assert!(format!("{e:#}").contains(field), "{field}: {e:#}");
        }
    }

    #[test]
    fn rules_without_ports_or_peers_allow_everything_they_leave_out() {
        let text = r#"
kind: NetworkPolicy
metadata: { name: open }
spec:
  podSelector: {}
  ingress:
    - from: [{ podSelector: {} }]
    - ports: [{ port: 9 }]
"#;
        let p = NetworkPolicy::all(&Manifests::parse(text).unwrap()).unwrap();
        let pods = vec![endpoint("a", "default", &[]), endpoint("b", "other", &[])];
        let Ingress::Only(allows) = ingress(&p, &pods[0], &pods) else { panic!() };
        assert_eq!(allows[0], Allow { ports: None, from: Some(vec!["a".into()]) });
        assert_eq!(allows[1], Allow { ports: Some(vec![9]), from: None });
        // A policy with no ingress rules at all isolates: nothing is allowed.
        let deny = "kind: NetworkPolicy\nmetadata: { name: deny }\nspec: { podSelector: {} }\n";
        let p = NetworkPolicy::all(&Manifests::parse(deny).unwrap()).unwrap();
        assert_eq!(ingress(&p, &pods[0], &pods), Ingress::Only(vec![]));
    }
}
