//! Pods without Kubernetes: a rendered pod template's container started the way a kubelet
//! would start it, on this machine, so a test can rehearse what a StatefulSet does without a
//! cluster.
//!
//! Each pod gets:
//! - its own network namespace and IP address (a [`NetLab`] slot), and an `/etc/hosts` there
//!   that resolves every pod of the rehearsal as the cluster DNS of a headless service would:
//!   `ringkv-3.ringkv` and `ringkv-3.ringkv.<namespace>.svc.cluster.local`, and the bare
//!   `ringkv-3` only inside `ringkv-3` itself (its hostname), as in Kubernetes;
//! - its own mount namespace holding the image's layout: the workspace's built binaries
//!   bind-mounted at `/usr/local/bin` (where `deploy/Dockerfile` puts them), each volume mount
//!   of the template at its `mountPath` (a claim is a directory that outlives the pod, an
//!   emptyDir a fresh tmpfs of its `sizeLimit` on every start), and, with
//!   `readOnlyRootFilesystem`, the root mount read-only (host mounts below it, such as
//!   `/dev/shm`, stay as the host has them);
//! - the security context's user and group (`setpriv`), the fsGroup as a supplementary group
//!   and as the group owner of each claim (`fsGroupChangePolicy: OnRootMismatch`, as the
//!   kubelet applies it), no capabilities when the container drops `ALL`, and no new
//!   privileges;
//! - exactly the container's environment, expanded (`$(POD_NAME)`), plus `PATH` and
//!   `HOSTNAME`; nothing leaks in from the test's own environment but `RUST_LOG` and
//!   `RUST_BACKTRACE`, when set, for debugging.
//!
//! A mount path the host lacks (the image creates `/var/lib/ringkv`; this machine need not
//! have it) is made by mounting a private tmpfs over its parent inside the pod's mount
//! namespace, so the rehearsal never changes the host's filesystem.
//!
//! A pod that is started again may get a new IP address ([`PodLab::new_address`]), as pods
//! recreated by a StatefulSet do: every pod's `/etc/hosts` then names the new one, and the
//! old one stops answering (its interface down: connections to it time out, as to a deleted
//! pod's address, rather than being refused).
//!
//! - the container's CPU and memory requests and limits, in a cgroup of its own
//!   ([`crate::cgroup`]), which it joins before its first instruction;
//! - once [`PodLab::enforce`] is called, the NetworkPolicies of the manifests
//!   ([`crate::netpol`]) as iptables rules in its network namespace: an isolated pod accepts
//!   connections only on the ports and from the pods a policy allows (by their current
//!   addresses, rewritten when one changes), besides its own loopback, replies to its own
//!   connections, and this machine's address on the lab's bridge, which stands for the pod's
//!   node (the kubelet's probes come from there, and CNIs let them through). The test's own
//!   clients also connect from there, so they pass as the node would; what the policies say
//!   about other pods is what is enforced. [`PodLab::reach`] tells whether a connection from
//!   one pod (or from an address no pod holds) to another's port gets through.
//!
//! What it does not do: image pulls, or restarts by the liveness probe; the caller probes
//! and acts, as the test of what an operator does.
//!
//! Stopping follows the kubelet: SIGTERM, then SIGKILL after the template's
//! `terminationGracePeriodSeconds`; [`Pod::terminate`] says which one ended it.
//! `kubectl exec` is [`PodLab::exec`]: the command runs in the pod's namespaces as its user.

use crate::cgroup::PodCgroup;
use crate::k8s::{HttpProbe, PodTemplate, Volume};
use crate::netpol::{Endpoint, Ingress, Labels, NetworkPolicy};
use crate::{NetLab, binary, http_status, wait_for};
use anyhow::{Context, Result, bail, ensure};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the image keeps its binaries (deploy/Dockerfile).
const IMAGE_BIN_DIR: &str = "/usr/local/bin";

/// The binaries of the image.
const IMAGE_BINARIES: [&str; 3] = ["ringkv-node", "ringkv-router", "ringkv"];

/// How long a command run in a pod may take (`ringkv node drain` answers at once; the drain
/// itself runs in the cluster).
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a stopping pod is checked for having exited.
const EXIT_POLL: Duration = Duration::from_millis(50);

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The iptables chain, in each pod's namespace, that holds the NetworkPolicies' rules.
const POLICY_CHAIN: &str = "RINGKV-NETPOL";

/// How long a connection attempt may take before [`PodLab::reach`] calls it dropped: far
/// more than a handshake between namespaces of one machine takes.
const REACH_TIMEOUT_S: u32 = 2;

/// Whether a connection got through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Connected,
    /// Refused: nothing listens there (the policies let it through).
    Refused,
    /// No answer: dropped on the way, as a NetworkPolicy drops what it does not allow.
    Dropped,
}

/// The NetworkPolicies a lab enforces, and the pods they are evaluated against.
struct Policies {
    policies: Vec<NetworkPolicy>,
    /// Pod name → labels.
    labels: BTreeMap<String, Labels>,
}

/// The network and the volumes of a rehearsal's pods.
pub struct PodLab {
    lab: NetLab,
    /// Pod name → lab slot (its address), and the slots no pod uses, oldest first.
    slots: Mutex<Slots>,
    /// Pod name → its subdomain (the StatefulSet's service), for the hosts files.
    subdomains: Vec<(String, Option<String>)>,
    dir: PathBuf,
    namespace: String,
    /// Binary name → the built file.
    binaries: BTreeMap<String, PathBuf>,
    /// Pod name → its cgroup, made at its first start and kept across restarts.
    cgroups: Mutex<BTreeMap<String, Arc<PodCgroup>>>,
    policies: Mutex<Option<Policies>>,
}

#[derive(Default)]
struct Slots {
    by_pod: BTreeMap<String, u64>,
    free: std::collections::VecDeque<u64>,
}

/// A running (or stopped) pod.
pub struct Pod {
    pub name: String,
    template: PodTemplate,
    child: Child,
    pid: u32,
}

/// How a pod stopped.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    /// From SIGTERM to exit.
    pub took: Duration,
    /// Whether the grace period ran out and SIGKILL ended it.
    pub killed: bool,
}

impl PodLab {
    /// A lab for the pods named `pods`, each `(name, subdomain)`: a pod with a subdomain (a
    /// StatefulSet's service name) is also known as `name.subdomain` and by its FQDN in
    /// `namespace`. `dir` holds the volumes and the logs.
    pub fn create(pods: &[(String, Option<String>)], namespace: &str, dir: &Path) -> Result<Self> {
        if let Some(why) = NetLab::unavailable_reason() {
            bail!("pods need network namespaces, and this machine cannot make them: {why}");
        }
        crate::cgroup::require()?;
        for tool in ["unshare", "nsenter", "setpriv", "iptables-restore", "timeout", "bash"] {
            ensure!(
                Command::new(tool).arg("--version").stdout(Stdio::null()).status().is_ok(),
                "pods need {tool} (from util-linux, iptables, coreutils or bash)"
            );
        }
        // Twice the slots: each pod can move to a new address while its old one stays dark.
        let by_pod: BTreeMap<String, u64> =
            pods.iter().zip(1u64..).map(|((name, _), slot)| (name.clone(), slot)).collect();
        let all: Vec<u64> = (1..=2 * pods.len() as u64).collect();
        let free = all[pods.len()..].iter().copied().collect();
        let lab = NetLab::create(&all)?;
        let mut binaries = BTreeMap::new();
        for b in IMAGE_BINARIES {
            binaries.insert(b.to_string(), binary(b)?);
        }
        std::fs::create_dir_all(dir.join("logs"))?;
        let pods = PodLab {
            lab,
            slots: Mutex::new(Slots { by_pod, free }),
            subdomains: pods.to_vec(),
            dir: dir.to_path_buf(),
            namespace: namespace.into(),
            binaries,
            cgroups: Mutex::new(BTreeMap::new()),
            policies: Mutex::new(None),
        };
        pods.write_hosts()?;
        Ok(pods)
    }

    /// Every pod's `/etc/hosts`, naming every pod at its current address.
    fn write_hosts(&self) -> Result<()> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let namespace = &self.namespace;
        for (me, &my_slot) in &slots.by_pod {
            let mut hosts = String::from("127.0.0.1\tlocalhost\n");
            for (name, sub) in &self.subdomains {
                let ip = self.lab.ip(slots.by_pod[name]);
                // A pod's bare name is its own hostname; other pods are reached through
                // their service (a pod without one only by its own name, as the test's
                // stand-in for a Service in front of it).
                let bare = if name == me || sub.is_none() { name.as_str() } else { "" };
                let names = match sub {
                    Some(sub) => {
                        format!("{name}.{sub}.{namespace}.svc.cluster.local {name}.{sub} {bare}")
                    }
                    None => bare.to_string(),
                };
                hosts.push_str(&format!("{ip}\t{}\n", names.trim_end()));
            }
            self.lab.set_hosts(my_slot, &hosts)?;
        }
        Ok(())
    }

    /// Gives stopped pod `name` a new IP address for its next start, as a recreated pod
    /// gets: its old address goes dark and every pod's hosts file names the new one.
    /// Returns (old, new).
    pub fn new_address(&self, name: &str) -> Result<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
        let (old, new) = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let old = *slots.by_pod.get(name).with_context(|| format!("no pod {name}"))?;
            let new = slots.free.pop_front().context("no free address in the lab")?;
            slots.by_pod.insert(name.to_string(), new);
            slots.free.push_back(old);
            (old, new)
        };
        self.lab.set_link(old, false)?;
        self.lab.set_link(new, true)?;
        self.write_hosts()?;
        // The policies name sources by address: every pod's rules change with this one's.
        self.write_policies()?;
        Ok((self.lab.ip(old), self.lab.ip(new)))
    }

    /// Enforces `policies` on every pod of the lab from now on; `labels` gives each pod's
    /// labels (a pod without an entry has none). All pods live in the lab's namespace, whose
    /// only label is the one Kubernetes sets (`kubernetes.io/metadata.name`).
    pub fn enforce(
        &self,
        policies: Vec<NetworkPolicy>,
        labels: BTreeMap<String, Labels>,
    ) -> Result<()> {
        *self.policies.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Policies { policies, labels });
        self.write_policies()
    }

    /// What `pod` accepts under the enforced policies (`None`: none are).
    pub fn ingress(&self, pod: &str) -> Option<Ingress> {
        let policies = self.policies.lock().unwrap_or_else(|p| p.into_inner());
        let p = policies.as_ref()?;
        let endpoints = self.endpoints(p);
        let target = endpoints.iter().find(|e| e.name == pod)?;
        Some(crate::netpol::ingress(&p.policies, target, &endpoints))
    }

    fn endpoints(&self, p: &Policies) -> Vec<Endpoint> {
        let ns_labels: Labels =
            [("kubernetes.io/metadata.name".to_string(), self.namespace.clone())].into();
        self.subdomains
            .iter()
            .map(|(name, _)| Endpoint {
                name: name.clone(),
                namespace: self.namespace.clone(),
                labels: p.labels.get(name).cloned().unwrap_or_default(),
                namespace_labels: ns_labels.clone(),
            })
            .collect()
    }

    /// Rewrites every pod's policy chain from the policies and the pods' current addresses
    /// (one `iptables-restore` per pod: the chain is replaced whole).
    fn write_policies(&self) -> Result<()> {
        let policies = self.policies.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = policies.as_ref() else { return Ok(()) };
        let endpoints = self.endpoints(p);
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner()).by_pod.clone();
        let gateway = self.lab.gateway();
        for target in &endpoints {
            let slot = slots[&target.name];
            let mut rules = vec![
                "*filter".to_string(),
                format!(":{POLICY_CHAIN} - [0:0]"),
                format!("-A {POLICY_CHAIN} -i lo -j ACCEPT"),
                format!("-A {POLICY_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"),
                // The pod's node: the kubelet's probes (and the test's own clients).
                format!("-A {POLICY_CHAIN} -s {gateway}/32 -j ACCEPT"),
            ];
            if let Ingress::Only(allows) = crate::netpol::ingress(&p.policies, target, &endpoints) {
                for a in &allows {
                    let ports: Vec<String> = match &a.ports {
                        Some(ports) => ports.iter().map(|p| format!(" --dport {p}")).collect(),
                        None => vec![String::new()],
                    };
                    let sources: Vec<String> = match &a.from {
                        Some(pods) => pods
                            .iter()
                            .map(|s| format!(" -s {}/32", self.lab.ip(slots[s])))
                            .collect(),
                        None => vec![String::new()],
                    };
                    for port in &ports {
                        for src in &sources {
                            rules.push(format!("-A {POLICY_CHAIN} -p tcp{port}{src} -j ACCEPT"));
                        }
                    }
                }
                rules.push(format!("-A {POLICY_CHAIN} -j DROP"));
            }
            rules.push("COMMIT\n".into());
            let ns = self.lab.netns(slot);
            let mut restore = Command::new("ip");
            restore
                .args(["netns", "exec", &ns, "iptables-restore", "--noflush"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = restore.spawn().context("iptables-restore")?;
            {
                use std::io::Write;
                let mut stdin = child.stdin.take().context("iptables-restore's stdin")?;
                stdin.write_all(rules.join("\n").as_bytes())?;
            }
            let out = child.wait_with_output()?;
            ensure!(
                out.status.success(),
                "{}'s NetworkPolicy rules: iptables-restore: {}",
                target.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            let jump = |op: &str| {
                Command::new("ip")
                    .args(["netns", "exec", &ns, "iptables", op, "INPUT"])
                    .args(if op == "-I" { vec!["1"] } else { vec![] })
                    .args(["-j", POLICY_CHAIN])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
            };
            if !jump("-C")?.success() {
                ensure!(jump("-I")?.success(), "{}: jumping to {POLICY_CHAIN}", target.name);
            }
        }
        Ok(())
    }

    /// Whether a connection from pod `from` (`None`: from an address of the lab's network that
    /// no pod holds, as an unlabelled pod's) to `to`'s `port` gets through.
    pub async fn reach(&self, from: Option<&str>, to: &str, port: u16) -> Result<Reach> {
        let slot = match from {
            Some(pod) => self.slot(pod)?,
            None => {
                let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                *slots.free.front().context("no free address in the lab")?
            }
        };
        let to_ip = self.lab.ip(self.slot(to)?);
        let status = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.lab.netns(slot), "timeout", &REACH_TIMEOUT_S.to_string()])
            .args(["bash", "-c", &format!("exec 3<>/dev/tcp/{to_ip}/{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .context("bash's /dev/tcp")?;
        Ok(match status.code() {
            Some(0) => Reach::Connected,
            // timeout(1)'s status when the command ran out of time.
            Some(124) => Reach::Dropped,
            _ => Reach::Refused,
        })
    }

    /// `pod`'s cgroup, once it has started.
    pub fn cgroup(&self, pod: &str) -> Option<Arc<PodCgroup>> {
        self.cgroups.lock().unwrap_or_else(|p| p.into_inner()).get(pod).cloned()
    }

    fn slot(&self, pod: &str) -> Result<u64> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.by_pod.get(pod).copied().with_context(|| format!("no pod {pod} in this lab"))
    }

    /// `pod`'s address with `port`, as the harness (outside every pod) reaches it.
    pub fn addr(&self, pod: &str, port: u16) -> Result<String> {
        Ok(format!("{}:{port}", self.lab.ip(self.slot(pod)?)))
    }

    /// The directory of `pod`'s claim `claim` (`<claim>-<pod>`, as Kubernetes names the PVC).
    pub fn claim_dir(&self, claim: &str, pod: &str) -> PathBuf {
        self.dir.join("claims").join(format!("{claim}-{pod}"))
    }

    /// Deletes `pod`'s claim `claim` (`kubectl delete pvc`): its next start is empty.
    pub fn delete_claim(&self, claim: &str, pod: &str) -> Result<()> {
        let d = self.claim_dir(claim, pod);
        if d.exists() {
            std::fs::remove_dir_all(&d).with_context(|| format!("deleting {}", d.display()))?;
        }
        Ok(())
    }

    /// `pod`'s log (every start appends to it).
    pub fn log_path(&self, pod: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{pod}.log"))
    }

    /// The last `lines` lines of `pod`'s log.
    pub fn log_tail(&self, pod: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(pod)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts pod `name` from `t`.
    pub fn start(&self, name: &str, t: &PodTemplate) -> Result<Pod> {
        let slot = self.slot(name)?;
        let c = &t.container;
        let program = c.argv[0].as_str();
        let in_image = program
            .strip_prefix(IMAGE_BIN_DIR)
            .and_then(|p| p.strip_prefix('/'))
            .is_some_and(|b| self.binaries.contains_key(b));
        ensure!(in_image, "pod {name}: {program} is not one of the image's binaries");

        let mut script = vec!["set -e".to_string(), format!("hostname {}", quote(name))];
        script.push(format!("mount -t tmpfs -o size=1m,mode=755 tmpfs {IMAGE_BIN_DIR}"));
        for (b, host) in &self.binaries {
            let at = format!("{IMAGE_BIN_DIR}/{b}");
            script.push(format!(": > {0}; mount --bind {1} {0}", quote(&at), quote_path(host)));
        }
        let mut covered: BTreeSet<PathBuf> = BTreeSet::new();
        for (vol, path) in &c.mounts {
            let p = Path::new(path);
            if !p.exists() {
                let parent = p.parent().filter(|d| *d != Path::new("/") && d.is_dir());
                let parent = parent.with_context(|| {
                    format!("pod {name}: mount path {path}: neither it nor its parent exists here")
                })?;
                if covered.insert(parent.to_path_buf()) {
                    script.push(format!("mount -t tmpfs -o mode=755 tmpfs {}", quote_path(parent)));
                }
                script.push(format!("mkdir -p {}", quote(path)));
            }
            match &t.volumes[vol] {
                Volume::Claim => {
                    let dir = self.claim_dir(vol, name);
                    prepare_claim(&dir, t.fs_group)?;
                    script.push(format!("mount --bind {} {}", quote_path(&dir), quote(path)));
                }
                Volume::EmptyDir { size_limit_bytes } => {
                    let size = size_limit_bytes.map(|b| format!("size={b},")).unwrap_or_default();
                    script.push(format!("mount -t tmpfs -o {size}mode=1777 tmpfs {}", quote(path)));
                }
            }
        }
        if c.read_only_root {
            script.push("mount -o remount,bind,ro /".into());
        }
        let mut exec = vec!["exec".to_string()];
        exec.extend(setpriv(t));
        exec.extend(c.argv.iter().map(|a| quote(a)));
        script.push(exec.join(" "));

        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .context("opening the pod's log")?;
        let cgroup = {
            let mut groups = self.cgroups.lock().unwrap_or_else(|p| p.into_inner());
            match groups.get(name) {
                Some(g) => g.clone(),
                None => {
                    let g = Arc::new(PodCgroup::create(name, &c.resources)?);
                    groups.insert(name.to_string(), g.clone());
                    g
                }
            }
        };
        // A shell joins the cgroup and execs `ip netns exec`, which execs unshare, which
        // execs sh, which execs setpriv, which execs the container's program: the child's pid
        // is the program's, so signals reach it.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.netns(slot)])
            .args(["unshare", "--mount", "--uts", "--propagation", "private", "--", "sh", "-c"])
            .arg(script.join("\n"))
            .env_clear()
            .envs(container_env(t, name, &self.namespace));
        let mut cmd = cgroup.wrap(&cmd);
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting pod {name}"))?;
        let pid = child.id();
        Ok(Pod { name: name.to_string(), template: t.clone(), child, pid })
    }

    /// Runs `argv` in `pod`'s network and mount namespaces as the container's user
    /// (`kubectl exec <pod> -- argv`); its standard output, or an error with its standard
    /// error.
    pub async fn exec(&self, pod: &Pod, argv: &[&str]) -> Result<String> {
        let mut cmd = tokio::process::Command::new("nsenter");
        cmd.args(["--target", &pod.pid.to_string(), "--net", "--mount", "--uts", "--"])
            .args(setpriv(&pod.template))
            .args(argv)
            .env_clear()
            .env("PATH", PATH)
            .env("HOSTNAME", &pod.name)
            .stdin(Stdio::null());
        cmd.kill_on_drop(true);
        let out = tokio::time::timeout(EXEC_TIMEOUT, cmd.output())
            .await
            .with_context(|| {
                format!("`{}` in pod {} took over {EXEC_TIMEOUT:?}", argv.join(" "), pod.name)
            })?
            .with_context(|| format!("exec in {}", pod.name))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "`{}` in pod {} failed ({}): {}{}",
            argv.join(" "),
            pod.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.trim()
        );
        Ok(stdout)
    }

    /// One probe of `pod`: the status code and the body.
    pub async fn probe(&self, pod: &str, probe: &HttpProbe) -> Result<(u16, String)> {
        http_status(&self.addr(pod, probe.port)?, &probe.path).await
    }

    /// One probe of `pod` as the kubelet judges it: passed when it answers 200 within the
    /// probe's timeout.
    pub async fn probe_passes(&self, pod: &str, probe: &HttpProbe) -> bool {
        matches!(
            tokio::time::timeout(probe.timeout, self.probe(pod, probe)).await,
            Ok(Ok((200, _)))
        )
    }

    /// Waits until `pod` answers its readiness probe with 200 (a pod without one is ready
    /// once it runs). It probes far more often than the probe's period, so a rehearsal moves
    /// on as soon as a pod is ready, where a kubelet would notice within one period.
    pub async fn wait_ready(&self, pod: &Pod, timeout: Duration) -> Result<()> {
        let Some(probe) = pod.template.container.readiness.clone() else { return Ok(()) };
        let last = std::sync::Mutex::new(String::new());
        let r = wait_for(timeout, &format!("pod {} to be ready", pod.name), || async {
            if pod.exited() {
                // A kubelet would restart it, crash-looping; a rehearsal stops here.
                *last.lock().unwrap_or_else(|p| p.into_inner()) = "the container exited".into();
                return Some(Err(()));
            }
            match self.probe(&pod.name, &probe).await {
                Ok((200, _)) => Some(Ok(())),
                Ok((code, body)) => {
                    *last.lock().unwrap_or_else(|p| p.into_inner()) = format!("{code} {body}");
                    None
                }
                Err(e) => {
                    *last.lock().unwrap_or_else(|p| p.into_inner()) = format!("{e:#}");
                    None
                }
            }
        })
        .await;
        let why = || {
            format!(
                "pod {}: last answer: {}; log tail:\n{}",
                pod.name,
                last.lock().unwrap_or_else(|p| p.into_inner()),
                self.log_tail(&pod.name, 30)
            )
        };
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(())) => Err(anyhow::anyhow!(why())),
            Err(e) => Err(e.context(why())),
        }
    }
}

impl Pod {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the container has exited (a zombie not yet reaped counts as exited).
    pub fn exited(&self) -> bool {
        // The state is the field after the parenthesised command name.
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => {
                stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            }
            Err(_) => true,
        }
    }

    /// Stops the pod as the kubelet does: SIGTERM, and SIGKILL once the grace period is over.
    pub async fn terminate(&mut self) -> Result<Stopped> {
        use nix::sys::signal::{Signal, kill};
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid)?);
        let t0 = Instant::now();
        if let Some(status) = self.child.try_wait()? {
            return Ok(Stopped { status, took: Duration::ZERO, killed: false });
        }
        kill(pid, Signal::SIGTERM).context("SIGTERM")?;
        while t0.elapsed() < self.template.grace_period {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Stopped { status, took: t0.elapsed(), killed: false });
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
        let _ = kill(pid, Signal::SIGKILL);
        let status = self.child.wait()?;
        Ok(Stopped { status, took: t0.elapsed(), killed: true })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The claim's directory, made and owned as the kubelet leaves a volume for an fsGroup: group
/// `fs_group`, setgid, group-writable (changed only when the root does not match already).
fn prepare_claim(dir: &Path, fs_group: Option<u32>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let Some(g) = fs_group else { return Ok(()) };
    let meta = std::fs::metadata(dir)?;
    const MODE: u32 = 0o2775;
    if meta.gid() != g || meta.mode() & MODE != MODE {
        std::os::unix::fs::chown(dir, None, Some(g))
            .with_context(|| format!("chown {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(MODE))?;
    }
    Ok(())
}

/// `setpriv` switching to the template's user (numbers and flags only: no quoting needed, in
/// a script or as arguments).
fn setpriv(t: &PodTemplate) -> Vec<String> {
    let mut a = vec!["setpriv".to_string()];
    if let Some(u) = t.run_as_user {
        a.push(format!("--reuid={u}"));
    }
    let group = t.run_as_group.or(t.run_as_user);
    if let Some(g) = group {
        a.push(format!("--regid={g}"));
    }
    let groups: BTreeSet<u32> = group.into_iter().chain(t.fs_group).collect();
    if groups.is_empty() {
        a.push("--clear-groups".into());
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        a.push(format!("--groups={}", list.join(",")));
    }
    if t.container.drops_all_capabilities {
        a.extend(["--inh-caps=-all".into(), "--bounding-set=-all".into()]);
    }
    a.push("--no-new-privs".into());
    a.push("--".into());
    a
}

fn container_env(t: &PodTemplate, pod: &str, namespace: &str) -> Vec<(String, String)> {
    let mut env = vec![("PATH".to_string(), PATH.to_string()), ("HOSTNAME".into(), pod.into())];
    for debug in ["RUST_LOG", "RUST_BACKTRACE"] {
        if let Ok(v) = std::env::var(debug) {
            env.push((debug.into(), v));
        }
    }
    env.extend(t.container.env_for(pod, namespace));
    env
}

/// `s` quoted for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}
