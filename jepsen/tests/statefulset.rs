//! The StatefulSet rehearsal: the rendered dev overlay's pods, run on this machine, taken
//! through what the StatefulSet controller and an operator do to them, under the chaos
//! register workload, with the history checked at the end.
//!
//! Nothing here restates the manifests: the pods' commands, environment, ports, probes,
//! volumes, security context, grace period, replica counts and pod management policy are read
//! from `kubectl kustomize deploy/k8s/overlays/dev` (`ringkv_tests::k8s`), and each pod runs
//! in its own network and mount namespaces as its non-root user with a read-only root
//! filesystem, named `ringkv-N.ringkv` (`ringkv_tests::pods`). The router Deployment's pod
//! runs the same way, and the clients reach it as they would through its Service.
//!
//! The steps, each waiting for what a careful operator would wait for:
//! 1. start the StatefulSet's pods as its pod management policy says (Parallel: all at once)
//!    and the router; wait for every pod's readiness probe;
//! 2. scale 3 → 5 (`kubectl scale`: two more pods, nothing else): they join, replicas move to
//!    them, the placement settles;
//! 3. scale 5 → 3 as docs/kubernetes.md says: `ringkv node drain` for the two highest
//!    ordinals (run inside `ringkv-0`, as `kubectl exec` would), wait for no replicas on
//!    them, `ringkv node remove`, then stop the pods (SIGTERM, grace period) and delete their
//!    claims;
//! 4. a rolling restart: from the highest ordinal down, stop a pod, start it on the same
//!    claim with a new IP address (as a recreated pod gets one; its old address goes dark),
//!    and wait for its readiness probe before the next;
//! 5. a pod comes back with an empty volume (its claim deleted): it joins as a new identity,
//!    the old one is retired and its replicas re-created, the placement settles at RF;
//! 6. a pod hangs (SIGSTOP): its liveness probe fails on the kubelet's schedule while every
//!    other pod's passes, the kubelet kills it after the grace period and starts it again,
//!    and it becomes ready on its claim.
//!
//! Throughout, every pod runs in a cgroup with its container's CPU and memory requests and
//! limits, and the manifests' NetworkPolicies are enforced between the pods: the cluster must
//! work through every step under them, and at the start the test checks that they bite (the
//! router reaches the nodes' client port but not their Raft or metrics ports, nodes reach each
//! other's Raft port, and an address no pod holds reaches nothing). At the end no pod may have
//! been killed for its memory limit.
//!
//! Every stop must end within the grace period by the node's own hand-off (never SIGKILL) and
//! exit cleanly, and clients must see no error during the rolling restart and while a pod
//! comes back empty. At the end the register history (linearizable reads, writes and CAS,
//! including the final reads of every key) must be valid: nothing acknowledged was lost
//! through any step. The figures of each step (how long it took, operations ok / failed /
//! unknown meanwhile) are printed; docs/kubernetes.md quotes them.

use anyhow::{Context, Result, ensure};
use ringkv_jepsen::checker::Outcome;
use ringkv_jepsen::clients::Clients;
use ringkv_jepsen::history::{Event, Kind};
use ringkv_jepsen::runner::{RunOptions, check, write_history};
use ringkv_jepsen::workload::{ReadMode, Workload};
use ringkv_proto::v1::ListNodesResponse;
use ringkv_tests::k8s::{Manifests, StatefulSet};
use ringkv_tests::netpol::{Ingress, NetworkPolicy};
use ringkv_tests::pods::{Pod, PodLab, Reach};
use ringkv_tests::{list_nodes_at, settled, wait_for};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Pods the StatefulSet may have at most during the rehearsal.
const ORDINALS_MAX: u32 = 5;

/// How long the placement may take to settle after a change (moves of every shard on a
/// loaded 2-core machine, debug build).
const SETTLE: Duration = Duration::from_secs(240);

/// What a pod may take to become ready: the startup probe's allowance, at most.
const READY_MAX: Duration = Duration::from_secs(120);

/// The Kubernetes namespace the rehearsal's pods pretend to live in.
const NAMESPACE: &str = "default";

struct Rehearsal {
    sts: StatefulSet,
    lab: PodLab,
    pods: BTreeMap<u32, Pod>,
    clients: Clients,
    /// (step, start, end) on the history's clock.
    steps: Vec<(String, u64, u64)>,
}

impl Rehearsal {
    fn node_addrs(&self) -> Result<Vec<String>> {
        let port = self.sts.template.container.port("grpc")?;
        self.pods.values().map(|p| self.lab.addr(&p.name, port)).collect()
    }

    async fn list_nodes(&self) -> Result<ListNodesResponse> {
        list_nodes_at(&self.node_addrs()?).await
    }

    /// Waits until the placement settled with exactly the running pods' names up.
    async fn wait_settled(&self, what: &str) -> Result<ListNodesResponse> {
        let names: Vec<String> = self.pods.values().map(|p| p.name.clone()).collect();
        let r = wait_for(SETTLE, &format!("{what}: the placement to settle"), || async {
            let l = self.list_nodes().await.ok()?;
            (settled(&l) && up_names(&l) == names).then_some(l)
        })
        .await;
        match r {
            Ok(l) => Ok(l),
            Err(e) => Err(e.context(format!("last membership: {:?}", self.list_nodes().await))),
        }
    }

    /// `kubectl exec ringkv-0 -- ringkv --endpoint 127.0.0.1:<grpc> <args>`, as
    /// docs/kubernetes.md tells an operator.
    async fn ringkv_in_pod0(&self, args: &[&str]) -> Result<String> {
        let pod0 = self.pods.get(&0).context("ringkv-0 is not running")?;
        let endpoint = format!("127.0.0.1:{}", self.sts.template.container.port("grpc")?);
        let mut argv = vec!["ringkv", "--endpoint", &endpoint];
        argv.extend_from_slice(args);
        self.lab.exec(pod0, &argv).await
    }

    fn start_pod(&mut self, ordinal: u32) -> Result<()> {
        let name = self.sts.pod_name(ordinal);
        let pod = self.lab.start(&name, &self.sts.template)?;
        self.pods.insert(ordinal, pod);
        Ok(())
    }

    async fn wait_ready(&self, ordinal: u32) -> Result<()> {
        let pod = self.pods.get(&ordinal).context("no such pod")?;
        self.lab.wait_ready(pod, READY_MAX).await
    }

    /// Stops a pod as the kubelet does; it must stop by itself within its grace period and
    /// exit cleanly.
    async fn stop_pod(&mut self, ordinal: u32) -> Result<Duration> {
        let mut pod = self.pods.remove(&ordinal).context("no such pod")?;
        let stopped = pod.terminate().await?;
        let name = pod.name.clone();
        ensure!(
            !stopped.killed,
            "{name} was still running after its grace period ({:?}) and was killed; log tail:\n{}",
            self.sts.template.grace_period,
            self.lab.log_tail(&name, 30)
        );
        ensure!(
            stopped.status.success(),
            "{name} exited with {} on SIGTERM; log tail:\n{}",
            stopped.status,
            self.lab.log_tail(&name, 30)
        );
        Ok(stopped.took)
    }

    fn step(&mut self, what: String, start_ns: u64) {
        let end = self.clients.now_ns();
        println!("step: {what} ({:.1} s)", (end - start_ns) as f64 / 1e9);
        self.steps.push((what, start_ns, end));
    }

    /// The node id that pod `name` holds now.
    async fn id_of(&self, name: &str) -> Result<u64> {
        let l = self.list_nodes().await?;
        l.nodes
            .iter()
            .find(|n| n.name == name && n.state != "removed")
            .map(|n| n.id)
            .with_context(|| format!("{name} is not a member: {l:?}"))
    }
}

/// The NetworkPolicies bite: each connection below gets through or is dropped as the
/// manifests say (the rest of the rehearsal shows that they let the cluster work).
async fn check_policies(
    lab: &PodLab,
    sts: &StatefulSet,
    router: &ringkv_tests::k8s::Deployment,
    router_pod: &str,
) -> Result<()> {
    let node = &sts.template.container;
    let (grpc, raft, http) = (node.port("grpc")?, node.port("raft")?, node.port("http")?);
    let router_grpc = router.template.container.port("grpc")?;
    let (n0, n1) = (sts.pod_name(0), sts.pod_name(1));
    let expected = [
        (Some(router_pod), n0.as_str(), grpc, Reach::Connected, "router → node client port"),
        (Some(router_pod), &n0, raft, Reach::Dropped, "router → node Raft port"),
        (Some(router_pod), &n0, http, Reach::Dropped, "router → node metrics port"),
        (Some(&n1), &n0, raft, Reach::Connected, "node → node Raft port"),
        (Some(&n1), &n0, grpc, Reach::Connected, "node → node client port"),
        (Some(&n1), &n0, http, Reach::Dropped, "node → node metrics port"),
        (Some(&n0), router_pod, router_grpc, Reach::Dropped, "node → router (not a client)"),
        (None, &n0, grpc, Reach::Dropped, "unlabelled pod → node client port"),
        (None, &n0, raft, Reach::Dropped, "unlabelled pod → node Raft port"),
        (None, router_pod, router_grpc, Reach::Dropped, "unlabelled pod → router"),
    ];
    for (from, to, port, want, what) in expected {
        let got = lab.reach(from, to, port).await?;
        println!("policy: {what} ({} → {to}:{port}): {got:?}", from.unwrap_or("unlabelled"));
        ensure!(got == want, "{what}: {got:?}, the NetworkPolicies say {want:?}");
    }
    Ok(())
}

/// The names of the members that are up, sorted.
fn up_names(l: &ListNodesResponse) -> Vec<String> {
    let mut up: Vec<String> =
        l.nodes.iter().filter(|n| n.state == "up").map(|n| n.name.clone()).collect();
    up.sort();
    up
}

/// The owners of the files below `dir` (not `dir` itself).
fn owners(dir: &std::path::Path) -> Result<Vec<u32>> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let meta = e.metadata()?;
            seen.insert(meta.uid());
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(seen.into_iter().collect())
}

/// Operations that completed inside a step, by outcome.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    /// Certainly not applied: a CAS whose condition did not hold, or an error.
    fail: usize,
    /// Outcome unknown (a timeout or a lost connection).
    unknown: usize,
    /// Operations that ended in an error the client saw (after its retries), any outcome.
    errors: usize,
}

fn tally(events: &[Event], (a, b): (u64, u64)) -> Tally {
    let mut t = Tally::default();
    for e in events.iter().filter(|e| (a..=b).contains(&e.time_ns)) {
        match e.kind {
            Kind::Ok => t.ok += 1,
            Kind::Fail => t.fail += 1,
            Kind::Info => t.unknown += 1,
            Kind::Invoke => continue,
        }
        if e.error.is_some() {
            t.errors += 1;
        }
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rendered_statefulset_scales_restarts_and_heals_under_load() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("ringkv-rehearsal").tempdir_in("/var/tmp")?;
    let r = rehearse(dir.path()).await;
    if r.is_err() {
        let kept = dir.keep();
        return r.with_context(|| {
            format!("pod logs (and the history, if any) kept in {}", kept.display())
        });
    }
    r
}

async fn rehearse(dir: &std::path::Path) -> Result<()> {
    let m = Manifests::render("dev")?;
    let sts = m.stateful_set("ringkv")?;
    let router = m.deployment("ringkv-router")?;
    ensure!(
        sts.replicas == 3,
        "the rehearsal scales 3 → 5 → 3; the dev overlay has {}",
        sts.replicas
    );
    let claim = sts.claims.first().context("the StatefulSet has no volume claim")?.clone();

    let mut names: Vec<(String, Option<String>)> =
        (0..ORDINALS_MAX).map(|i| (sts.pod_name(i), Some(sts.service_name.clone()))).collect();
    let router_pods: Vec<String> =
        (0..router.replicas).map(|i| format!("{}-{i}", router.name)).collect();
    names.extend(router_pods.iter().map(|r| (r.clone(), None)));
    let lab = PodLab::create(&names, NAMESPACE, dir)?;
    let mut labels = BTreeMap::new();
    for (name, _) in &names {
        let t = if router_pods.contains(name) { &router.template } else { &sts.template };
        labels.insert(name.clone(), t.labels.clone());
    }
    lab.enforce(NetworkPolicy::all(&m)?, labels)?;
    for pod in [sts.pod_name(0), router_pods[0].clone()] {
        ensure!(
            matches!(lab.ingress(&pod), Some(Ingress::Only(_))),
            "no NetworkPolicy isolates {pod}: {:?}",
            lab.ingress(&pod)
        );
    }

    // 1. Start: the router Deployment and the StatefulSet together, as `kubectl apply` does.
    let t0 = Instant::now();
    let mut routers = Vec::new();
    for r in &router_pods {
        routers.push(lab.start(r, &router.template)?);
    }
    let mut pods = BTreeMap::new();
    if sts.parallel {
        for i in 0..sts.replicas {
            pods.insert(i, lab.start(&sts.pod_name(i), &sts.template)?);
        }
    } else {
        // OrderedReady: each pod only after the previous one is ready.
        for i in 0..sts.replicas {
            let pod = lab.start(&sts.pod_name(i), &sts.template)?;
            lab.wait_ready(&pod, READY_MAX).await?;
            pods.insert(i, pod);
        }
    }
    for pod in pods.values() {
        lab.wait_ready(pod, READY_MAX).await.with_context(|| format!("starting {}", pod.name))?;
    }
    for pod in &routers {
        lab.wait_ready(pod, READY_MAX).await?;
    }
    println!(
        "step: {} pods and {} router(s) ready in {:.1} s",
        pods.len(),
        routers.len(),
        t0.elapsed().as_secs_f64()
    );
    check_policies(&lab, &sts, &router, &router_pods[0]).await?;

    let opts = RunOptions {
        time: Duration::from_secs(600),
        workloads: vec![Workload::Register],
        reads: ReadMode::default(),
        nemeses: Vec::new(),
        interval: Duration::from_secs(3),
        hold: Duration::from_secs(2),
        cycle_faults: true,
        clients: 4,
        keys: 3,
        key_lifetime: Duration::from_secs(10),
        nodes: u64::from(sts.replicas),
        spare_nodes: 0,
        shards: 0,
        rf: 3,
        op_timeout: Duration::from_secs(3),
        net: true,
        tls: false,
        out: dir.join("run"),
    };
    std::fs::create_dir_all(&opts.out)?;
    let router_port = router.template.container.port("grpc")?;
    let router_addr = lab
        .addr(router_pods.first().context("the router Deployment has no replicas")?, router_port)?;
    // The securityContext took: the node wrote its data as the manifest's user, on a volume
    // the fsGroup made writable for it, with the rest of the root filesystem read-only.
    if let Some(uid) = sts.template.run_as_user {
        let data = lab.claim_dir(&claim, &sts.pod_name(0));
        let owners = owners(&data)?;
        ensure!(owners == [uid], "files in {} owned by {owners:?}, not {uid}", data.display());
    }
    if sts.template.container.read_only_root {
        // /var/tmp is writable by anyone on the host: only a read-only root refuses it.
        let pod0 = pods.get(&0).context("ringkv-0 is not running")?;
        let denied = lab.exec(pod0, &["touch", "/var/tmp/ringkv-rehearsal-ro-check"]).await;
        ensure!(
            denied.as_ref().is_err_and(|e| format!("{e:#}").contains("Read-only file system")),
            "a write outside the volumes was not refused as read-only: {denied:?}"
        );
        lab.exec(pod0, &["touch", "/tmp/emptydir-is-writable"]).await?;
    }
    let mut r = Rehearsal {
        sts,
        lab,
        pods,
        clients: Clients::start(&opts, &router_addr, ringkv_tls::Dialer::plaintext()).await?,
        steps: Vec::new(),
    };
    let start_ns = r.clients.now_ns();
    wait_for(Duration::from_secs(60), "operations through the router", || async {
        (r.clients.ok_events().await > 100).then_some(())
    })
    .await?;
    r.step("start: first 100 operations through the router".into(), start_ns);

    // 2. kubectl scale --replicas 5: the new ordinals join by themselves.
    let t = r.clients.now_ns();
    for i in r.sts.replicas..ORDINALS_MAX {
        r.start_pod(i)?;
    }
    for i in r.sts.replicas..ORDINALS_MAX {
        r.wait_ready(i).await?;
    }
    let grown = r.wait_settled("scale 3 → 5").await?;
    for i in r.sts.replicas..ORDINALS_MAX {
        let name = r.sts.pod_name(i);
        let n = grown.nodes.iter().find(|n| n.name == name && n.state == "up");
        ensure!(
            n.is_some_and(|n| n.replicas > 0),
            "{name} holds no replicas after scaling up: {grown:?}"
        );
    }
    r.step("scale 3 → 5".into(), t);

    // 3. Scale down as documented: drain the highest ordinals, remove them, then scale.
    let t = r.clients.now_ns();
    let mut drained = Vec::new();
    for i in (r.sts.replicas..ORDINALS_MAX).rev() {
        let id = r.id_of(&r.sts.pod_name(i)).await?;
        r.ringkv_in_pod0(&["node", "drain", &id.to_string()]).await?;
        drained.push((i, id));
    }
    // The drained pods still run until the placement settles without them.
    let names_left: Vec<String> = (0..r.sts.replicas).map(|i| r.sts.pod_name(i)).collect();
    let l = wait_for(SETTLE, "drained nodes to hold no replicas", || async {
        let l = r.list_nodes().await.ok()?;
        let empty =
            drained.iter().all(|(_, id)| l.nodes.iter().any(|n| n.id == *id && n.replicas == 0));
        (empty && settled(&l) && up_names(&l) == names_left).then_some(l)
    })
    .await
    .with_context(|| "scale 5 → 3: draining")?;
    for (_, id) in &drained {
        let n = l.nodes.iter().find(|n| n.id == *id).context("a drained node vanished")?;
        ensure!(n.state == "draining", "drained node {id} is {}", n.state);
    }
    for (i, id) in &drained {
        r.ringkv_in_pod0(&["node", "remove", &id.to_string()]).await?;
        // kubectl scale --replicas 3, then kubectl delete pvc: safe once removed.
        r.stop_pod(*i).await?;
        r.lab.delete_claim(&claim, &r.sts.pod_name(*i))?;
    }
    r.wait_settled("scale 5 → 3").await?;
    r.step("drain and scale 5 → 3".into(), t);

    // 4. Rolling restart, highest ordinal first, each pod ready before the next.
    let t = r.clients.now_ns();
    let mut stops = Vec::new();
    for i in (0..r.sts.replicas).rev() {
        stops.push(r.stop_pod(i).await?);
        let (old_ip, new_ip) = r.lab.new_address(&r.sts.pod_name(i))?;
        println!("{}: {old_ip} → {new_ip}", r.sts.pod_name(i));
        r.start_pod(i)?;
        r.wait_ready(i)
            .await
            .with_context(|| format!("rolling restart of {}", r.sts.pod_name(i)))?;
    }
    r.step(format!("rolling restart, every pod at a new address (stops took {stops:.1?})"), t);

    // 5. A pod whose claim is lost comes back empty, as a new identity.
    let t = r.clients.now_ns();
    let victim = r.sts.pod_name(1);
    let old = r.id_of(&victim).await?;
    r.stop_pod(1).await?;
    r.lab.delete_claim(&claim, &victim)?;
    r.start_pod(1)?;
    let l = wait_for(SETTLE, "the empty pod to replace its old identity", || async {
        let l = r.list_nodes().await.ok()?;
        let retired =
            l.nodes.iter().any(|n| n.id == old && n.state == "removed" && n.replicas == 0);
        let renewed = l.nodes.iter().any(|n| n.name == victim && n.id != old && n.state == "up");
        (retired && renewed).then_some(l)
    })
    .await?;
    let new = l.nodes.iter().find(|n| n.name == victim && n.state == "up").map(|n| n.id);
    r.wait_settled("empty volume").await?;
    r.wait_ready(1).await?;
    r.step(format!("{victim} with an empty volume: node {old} replaced by {new:?}"), t);

    // 6. A hung container (SIGSTOP: it answers nothing, as a deadlocked process). The
    //    kubelet's liveness probe, on its own schedule, fails `failureThreshold` times in a
    //    row; the kubelet then stops the container (SIGTERM, then SIGKILL when the grace
    //    period runs out: a hung process handles nothing) and starts it again on its claim,
    //    where it must become ready. The other pods' liveness probes must pass all along:
    //    a peer that hangs is no reason to restart the rest.
    let t = r.clients.now_ns();
    let hung = 2;
    let name = r.sts.pod_name(hung);
    let liveness = r.sts.template.container.liveness.clone().context("no liveness probe")?;
    let pid = r.pods.get(&hung).context("no such pod")?.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGSTOP,
    )?;
    let hung_at = Instant::now();
    // The kubelet's schedule: one probe per period, however long the last one took.
    let mut schedule =
        tokio::time::interval_at(tokio::time::Instant::now() + liveness.period, liveness.period);
    let mut failed_in_a_row = 0;
    while failed_in_a_row < liveness.failure_threshold {
        schedule.tick().await;
        if r.lab.probe_passes(&name, &liveness).await {
            failed_in_a_row = 0;
        } else {
            failed_in_a_row += 1;
        }
        for other in r.pods.values().filter(|p| p.name != name) {
            ensure!(
                r.lab.probe_passes(&other.name, &liveness).await,
                "{}'s liveness probe failed while {name} hung",
                other.name
            );
        }
        ensure!(
            hung_at.elapsed() <= liveness.patience() + liveness.period + liveness.timeout,
            "{name} hung for {:?} and its liveness probe still passed",
            hung_at.elapsed()
        );
    }
    let detected = hung_at.elapsed();
    let mut pod = r.pods.remove(&hung).context("no such pod")?;
    let stopped = pod.terminate().await?;
    ensure!(stopped.killed, "a stopped process ended on SIGTERM: {stopped:?}");
    r.start_pod(hung)?;
    r.wait_ready(hung).await.with_context(|| format!("{name} after its liveness restart"))?;
    r.wait_settled("liveness restart").await?;
    r.step(
        format!(
            "{name} hung: liveness failed after {:.0?}, killed after the {:?} grace period, ready again",
            detected, r.sts.template.grace_period
        ),
        t,
    );

    // Every pod lived within its memory limit: none was killed for it (a kill would also have
    // failed a step, but as a crash, not named as what it was).
    for name in (0..ORDINALS_MAX).map(|i| r.sts.pod_name(i)).chain(router_pods.iter().cloned()) {
        let group = r.lab.cgroup(&name).with_context(|| format!("{name} never started"))?;
        let limit = group.memory_limit_bytes()?;
        ensure!(
            limit == group.resources.memory_limit_bytes,
            "{name}: memory limit {limit:?} in force, the manifest says {:?}",
            group.resources.memory_limit_bytes
        );
        let kills = group.oom_kills()?;
        println!(
            "{name}: memory peak {} MiB of a {} MiB limit, {kills} OOM kills",
            group.memory_peak_bytes()?.map_or("?".into(), |b| (b >> 20).to_string()),
            limit.map_or("unlimited".into(), |b| (b >> 20).to_string()),
        );
        ensure!(kills == 0, "{name} was killed {kills} times for its memory limit");
    }

    // The end: final reads of every key, then the checkers.
    let Rehearsal { clients, steps, .. } = r;
    let restart = steps.iter().find(|s| s.0.starts_with("rolling restart")).map(|s| (s.1, s.2));
    let emptied = steps.iter().find(|s| s.0.contains("empty volume")).map(|s| (s.1, s.2));
    let events = clients.finish().await?;
    write_history(&opts, &events, &[])?;
    let verdicts = check(&events, &opts)?;
    for (what, a, b) in &steps {
        let t = tally(&events, (*a, *b));
        println!("{what}: {:.1} s, {t:?}", (b - a) as f64 / 1e9);
        for e in events.iter().filter(|e| (*a..=*b).contains(&e.time_ns)) {
            if let Some(err) = &e.error {
                println!("  error: {:?} {err}", e.op);
            }
        }
    }
    for v in &verdicts {
        println!("{}: {} ops={} {:?}", v.checker, v.outcome(), v.ops, v.counterexamples);
    }
    ensure!(verdicts.iter().all(|v| v.ops > 200), "too few operations to mean anything");
    // Each stopping node hands its leaderships off first: clients see retries at most.
    let t = tally(&events, restart.context("no rolling restart step")?);
    ensure!(t.errors == 0, "clients saw errors during the rolling restart: {t:?}");
    // The pod stopped by its hand-off before it came back empty: its new identity answers at
    // the old address while the map still lists the old one, and clients must steer around
    // it (`tests/tests/replaced_node.rs`), not fail.
    let t = tally(&events, emptied.context("no empty-volume step")?);
    ensure!(t.errors == 0, "clients saw errors while a pod came back empty: {t:?}");
    ensure!(
        Outcome::of(&verdicts) == Outcome::Valid,
        "the history through the rehearsal is not valid"
    );
    Ok(())
}
