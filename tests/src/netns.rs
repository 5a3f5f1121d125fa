//! A network lab: each node of a test cluster in its own Linux network namespace with its own
//! IP address, so that faults can be injected into the network between them.
//!
//! Layout: one Linux bridge in the root namespace holds `10.A.B.1/24`; node `i` lives in
//! namespace `ringkv-<pid>-<seq>-n<i>` behind a veth pair whose inner end is `eth0` with
//! `10.A.B.(10+i)`. The harness, the router and clients stay in the root namespace and reach
//! every node over the bridge; nodes reach each other the same way.
//!
//! Faults are installed *inside* the node namespaces, never in the host's tables:
//! - a partition is a "grudge": for each node, the peers whose packets it drops (iptables
//!   `INPUT -s peer -j DROP`). Both sides hold the grudge, so links are cut both ways, while
//!   the router (on the bridge address) still reaches every node, as clients do in Jepsen;
//! - packet loss is `iptables -m statistic --mode random` on every node's input;
//! - latency is `tc netem` when the kernel has it. Some kernels (the Firecracker kernel this
//!   project is developed on) are built without `sch_netem`; [`NetLab::netem_available`] says
//!   so and callers fall back to loss and a bandwidth cap (`tc tbf`).
//!
//! Needs root and iproute2/iptables. Everything is removed on drop; namespaces and bridges
//! left by a crashed run (named after a pid that no longer exists) are removed by the next
//! [`NetLab::create`].

use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// For each node, the nodes whose packets it drops.
pub type Grudge = BTreeMap<u64, BTreeSet<u64>>;

/// Labs created by this process (so parallel tests in one process get distinct names).
static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

/// Nodes per lab: addresses are `.11` up to `.(10 + NODES_MAX)`.
pub const NODES_MAX: u64 = 200;

pub struct NetLab {
    prefix: String,
    bridge: String,
    tag: String,
    subnet: [u8; 3],
    nodes: Vec<u64>,
    forward_rule: bool,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl NetLab {
    /// Why a lab cannot be made here, if it cannot (not root, no `ip netns`).
    pub fn unavailable_reason() -> Option<String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Some("not running as root".into());
        }
        for tool in ["ip", "iptables"] {
            if Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
            {
                return Some(format!("{tool} not found (install iproute2 and iptables)"));
            }
        }
        match ip(&["netns", "list"]) {
            Ok(_) => None,
            Err(e) => Some(format!("ip netns unusable: {e}")),
        }
    }

    /// Creates a namespace, veth and address per node, joined by a fresh bridge.
    pub fn create(nodes: &[u64]) -> Result<NetLab> {
        if let Some(why) = Self::unavailable_reason() {
            bail!("cannot create network namespaces: {why}");
        }
        if let Some(&n) = nodes.iter().find(|&&n| n == 0 || n > NODES_MAX) {
            bail!("node id {n} outside 1..={NODES_MAX}");
        }
        Self::remove_stale();
        let pid = std::process::id();
        let seq = LAB_SEQ.fetch_add(1, Ordering::Relaxed);
        // Interface names are limited to 15 bytes: a compact hex tag of pid and sequence.
        let tag = format!("{:x}", (u64::from(pid) << 6) | u64::from(seq % 64));
        let used = ip(&["-4", "-o", "addr"])?;
        let subnet = (0u32..)
            .take(4096)
            .map(|i| {
                let h = (u64::from(pid) * 31 + u64::from(seq) * 7 + u64::from(i)) % (100 * 256);
                [10u8, 100 + (h / 256) as u8, (h % 256) as u8]
            })
            .find(|s| !used.contains(&format!("{}.{}.{}.", s[0], s[1], s[2])))
            .context("no free 10.x.y.0/24 subnet")?;
        let mut lab = NetLab {
            prefix: format!("ringkv-{pid}-{seq}"),
            bridge: format!("rk{tag}b"),
            tag,
            subnet,
            nodes: nodes.to_vec(),
            forward_rule: false,
        };
        lab.build().inspect_err(|_| lab.teardown())?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let br = self.bridge.clone();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", self.gateway()), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        // With br_netfilter loaded, bridged frames traverse the host's FORWARD chain; a DROP
        // policy there (Docker sets one) would cut the lab off from itself.
        let forward = run(Command::new("iptables").args(["-S", "FORWARD"])).unwrap_or_default();
        if forward.contains("-P FORWARD DROP") {
            run(Command::new("iptables").args(["-I", "FORWARD", "-i", &br, "-j", "ACCEPT"]))?;
            self.forward_rule = true;
        }
        for &n in &self.nodes.clone() {
            let ns = self.netns(n);
            let veth = format!("rk{}v{n}", self.tag);
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &veth, "master", &br, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.ip(n)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Removes namespaces and bridges whose creating process is gone.
    fn remove_stale() {
        let Ok(list) = ip(&["netns", "list"]) else { return };
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(rest) = name.strip_prefix("ringkv-") else { continue };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !pid_alive(pid) {
                let _ = ip(&["netns", "del", name]);
            }
        }
        for entry in std::fs::read_dir("/etc/netns").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("ringkv-").and_then(|r| r.split('-').next());
            if pid.and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| !pid_alive(p)) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let Ok(links) = ip(&["-o", "link", "show", "type", "bridge"]) else { return };
        for name in links.lines().filter_map(|l| l.split(':').nth(1)).map(str::trim) {
            let Some(hex) = name.strip_prefix("rk").and_then(|s| s.strip_suffix('b')) else {
                continue;
            };
            let Ok(tag) = u64::from_str_radix(hex, 16) else { continue };
            if !pid_alive(u32::try_from(tag >> 6).unwrap_or(0)) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// Whether the lab has a namespace for node `id`.
    pub fn has_node(&self, id: u64) -> bool {
        self.nodes.contains(&id)
    }

    /// Node `id`'s address.
    pub fn ip(&self, id: u64) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 10 + u8::try_from(id).unwrap_or(0))
    }

    pub fn netns(&self, id: u64) -> String {
        format!("{}-n{id}", self.prefix)
    }

    /// `cmd`, to be run inside node `id`'s namespace (`ip netns exec` execs the program, so
    /// the child's pid is the program's: signals reach it directly).
    pub fn wrap(&self, id: u64, cmd: &Command) -> Command {
        let mut w = Command::new("ip");
        w.args(["netns", "exec", &self.netns(id)]).arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => w.env(k, v),
                None => w.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            w.current_dir(dir);
        }
        w
    }

    /// Takes node `id`'s interface down or up. Down, its address answers nothing (no ARP
    /// reply: connections to it time out rather than being refused), as the address of a pod
    /// that Kubernetes deleted.
    pub fn set_link(&self, id: u64, up: bool) -> Result<()> {
        ip(&["-n", &self.netns(id), "link", "set", "eth0", if up { "up" } else { "down" }])
            .map(|_| ())
    }

    /// Gives node `id`'s namespace its own `/etc/hosts` (for names a test wants resolvable
    /// there, as a cluster's DNS would): `ip netns exec` mounts `/etc/netns/<ns>/hosts` over
    /// `/etc/hosts` for the programs it starts. Written in place, so programs already running
    /// see later versions too.
    pub fn set_hosts(&self, id: u64, text: &str) -> Result<()> {
        let dir = self.etc_dir(id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("hosts");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    fn etc_dir(&self, id: u64) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(self.netns(id))
    }

    fn in_ns(&self, id: u64, program: &str, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["netns", "exec", &self.netns(id), program]).args(args))
    }

    /// Installs `grudge` (after clearing any earlier one).
    pub fn partition(&self, grudge: &Grudge) -> Result<()> {
        self.heal_partition()?;
        for (&node, enemies) in grudge {
            for &enemy in enemies {
                let src = self.ip(enemy).to_string();
                self.in_ns(node, "iptables", &["-A", "INPUT", "-s", &src, "-j", "DROP"])?;
            }
        }
        Ok(())
    }

    /// Drops `percent` of every node's incoming packets at random.
    pub fn loss(&self, percent: u32) -> Result<()> {
        let p = format!("{:.3}", f64::from(percent.min(100)) / 100.0);
        for &n in &self.nodes {
            self.in_ns(
                n,
                "iptables",
                &[
                    "-A",
                    "INPUT",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Whether this kernel has `tc netem` (tried on the first node's loopback).
    pub fn netem_available(&self) -> bool {
        let Some(&n) = self.nodes.first() else { return false };
        let ok =
            self.in_ns(n, "tc", &["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]);
        let _ = self.in_ns(n, "tc", &["qdisc", "del", "dev", "lo", "root"]);
        ok.is_ok()
    }

    /// Delays every node's outgoing packets by `delay_ms` ± `jitter_ms` (needs netem).
    pub fn delay(&self, delay_ms: u32, jitter_ms: u32) -> Result<()> {
        let (d, j) = (format!("{delay_ms}ms"), format!("{jitter_ms}ms"));
        for &n in &self.nodes {
            self.in_ns(
                n,
                "tc",
                &["qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &d, &j],
            )?;
        }
        Ok(())
    }

    /// Caps every node's outgoing bandwidth (a slow link: queueing delay under load).
    pub fn slow(&self, kbit: u32) -> Result<()> {
        let rate = format!("{kbit}kbit");
        for &n in &self.nodes {
            self.in_ns(
                n,
                "tc",
                &[
                    "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst",
                    "16kb", "latency", "400ms",
                ],
            )?;
        }
        Ok(())
    }

    fn heal_partition(&self) -> Result<()> {
        for &n in &self.nodes {
            self.in_ns(n, "iptables", &["-F", "INPUT"])?;
        }
        Ok(())
    }

    /// Removes every fault: iptables rules and queueing disciplines.
    pub fn heal(&self) -> Result<()> {
        self.heal_partition()?;
        for &n in &self.nodes {
            // Fails when no qdisc was added; the default is what we want either way.
            let _ = self.in_ns(n, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
        }
        Ok(())
    }

    fn teardown(&self) {
        for &n in &self.nodes {
            let _ = ip(&["netns", "del", &self.netns(n)]);
            let _ = std::fs::remove_dir_all(self.etc_dir(n));
        }
        let _ = ip(&["link", "del", &self.bridge]);
        if self.forward_rule {
            let _ = run(Command::new("iptables").args([
                "-D",
                "FORWARD",
                "-i",
                &self.bridge,
                "-j",
                "ACCEPT",
            ]));
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Grudges for the classic partitions. `nodes` in any order; randomness comes from `pick`.
pub mod partitions {
    use super::Grudge;
    use std::collections::BTreeSet;

    /// Every node of `a` drops every node of `b` and vice versa.
    pub fn split(a: &[u64], b: &[u64]) -> Grudge {
        let mut g = Grudge::new();
        for &x in a {
            g.entry(x).or_default().extend(b.iter().copied());
        }
        for &y in b {
            g.entry(y).or_default().extend(a.iter().copied());
        }
        g
    }

    /// A minority (the first ⌊n/2⌋ of `shuffled`) cut off from the majority.
    pub fn halves(shuffled: &[u64]) -> Grudge {
        let (minority, majority) = shuffled.split_at(shuffled.len() / 2);
        split(minority, majority)
    }

    /// Each of `isolated` alone; the other nodes together.
    pub fn isolate(nodes: &[u64], isolated: &[u64]) -> Grudge {
        let mut g = Grudge::new();
        for &x in isolated {
            for &y in nodes.iter().filter(|&&y| y != x) {
                g.entry(x).or_default().insert(y);
                g.entry(y).or_default().insert(x);
            }
        }
        g
    }

    /// Two halves that cannot see each other, and one node (the middle of `shuffled`) that
    /// sees both: a non-transitive partition where both sides may think they have a majority.
    pub fn bridge(shuffled: &[u64]) -> Grudge {
        let mid = shuffled.len() / 2;
        split(&shuffled[..mid], &shuffled[mid + 1..])
    }

    /// Nodes in a ring, each seeing only its two neighbours (a partition only from 4 nodes on).
    pub fn ring(shuffled: &[u64]) -> Grudge {
        let n = shuffled.len();
        let mut g = Grudge::new();
        for (i, &x) in shuffled.iter().enumerate() {
            let friends: BTreeSet<u64> =
                [shuffled[(i + 1) % n], shuffled[(i + n - 1) % n]].into_iter().collect();
            let enemies: BTreeSet<u64> =
                shuffled.iter().copied().filter(|y| *y != x && !friends.contains(y)).collect();
            if !enemies.is_empty() {
                g.insert(x, enemies);
            }
        }
        g
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn symmetric(g: &Grudge) -> bool {
            g.iter().all(|(x, es)| es.iter().all(|y| g.get(y).is_some_and(|s| s.contains(x))))
        }

        #[test]
        fn shapes() {
            let h = halves(&[3, 1, 2]);
            assert_eq!(h[&3], BTreeSet::from([1, 2]));
            assert_eq!(h[&1], BTreeSet::from([3]));
            assert!(symmetric(&h));
            let b = bridge(&[1, 2, 3, 4, 5]);
            assert!(!b.contains_key(&3), "the bridge node sees everyone");
            assert_eq!(b[&1], BTreeSet::from([4, 5]));
            assert!(symmetric(&b));
            let r = ring(&[1, 2, 3, 4, 5]);
            assert_eq!(r[&1], BTreeSet::from([3, 4]));
            assert!(symmetric(&r));
            assert!(ring(&[1, 2, 3]).is_empty(), "three nodes in a ring all see each other");
            let i = isolate(&[1, 2, 3], &[2]);
            assert_eq!(i[&2], BTreeSet::from([1, 3]));
            assert_eq!(i[&1], BTreeSet::from([2]));
        }
    }
}
