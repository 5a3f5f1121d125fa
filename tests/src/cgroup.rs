//! A pod's cgroup: its container's CPU and memory requests and limits, applied as the kubelet
//! applies them, so a rehearsal's pod runs inside what its manifest gives it.
//!
//! The kubelet's mapping (cgroup v1, and v2 where the machine has it):
//! - `requests.cpu` → `cpu.shares` = millicores × 1024 / 1000 (v2: the same converted to
//!   `cpu.weight`): the pod's share of CPU when cores are contended;
//! - `limits.cpu` → a CFS quota of millicores × 100 µs per 100 ms period (`cpu.max`);
//! - `limits.memory` → `memory.limit_in_bytes` (`memory.max`): above it the kernel reclaims
//!   the group's page cache, and when nothing is left to reclaim its OOM killer ends the
//!   process, which is what Kubernetes reports as `OOMKilled`.
//!   `requests.memory` only guides scheduling, which a rehearsal does not do.
//!
//! The process joins its groups before it runs anything: [`PodCgroup::wrap`] puts a shell in
//! front of the pod's command that writes its own pid into each group and then `exec`s the
//! command (the same pid), so every thread and child of the container is inside from its
//! first instruction.
//!
//! [`PodCgroup::oom_kills`] and [`PodCgroup::memory_peak_bytes`] let a test assert that the
//! container lived within its limit. Groups are removed on drop (any process left in them is
//! killed first); groups left by a crashed run (named after a pid that no longer exists) are
//! removed by the next [`PodCgroup::create`].

use crate::k8s::Resources;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const ROOT: &str = "/sys/fs/cgroup";

/// Every group made here starts with this, then `<pid>-<seq>-`.
const PREFIX: &str = "ringkv-pod-";

/// The CFS period the kubelet uses.
const CFS_PERIOD_US: u64 = 100_000;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Where the groups of one pod live.
#[derive(Debug)]
enum Groups {
    /// cgroup v1: one directory per controller.
    V1 { memory: PathBuf, cpu: PathBuf },
    /// cgroup v2: one directory for both.
    V2 { dir: PathBuf },
}

/// One pod's cgroup (or, with cgroup v1, its memory and CPU groups).
#[derive(Debug)]
pub struct PodCgroup {
    groups: Groups,
    /// The limits, as written.
    pub resources: Resources,
}

/// The hierarchy this machine offers for pods, or why none.
fn hierarchy() -> Result<bool, String> {
    let v1 = Path::new(ROOT).join("memory/memory.limit_in_bytes").exists()
        && Path::new(ROOT).join("cpu/cpu.shares").exists();
    if v1 {
        return Ok(false);
    }
    let controllers =
        std::fs::read_to_string(Path::new(ROOT).join("cgroup.controllers")).map_err(|_| {
            format!("no cgroup v1 memory and cpu controllers, nor cgroup v2, at {ROOT}")
        })?;
    for c in ["memory", "cpu"] {
        if !controllers.split_whitespace().any(|x| x == c) {
            return Err(format!("cgroup v2 at {ROOT} lacks the {c} controller"));
        }
    }
    Ok(true)
}

impl PodCgroup {
    /// Why pods cannot get cgroups here, if they cannot (not root, no cgroup filesystem with
    /// the memory and cpu controllers).
    pub fn unavailable_reason() -> Option<String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Some("not running as root".into());
        }
        hierarchy().err()
    }

    /// Makes the groups for pod `pod` with `r`.
    pub fn create(pod: &str, r: &Resources) -> Result<Self> {
        let v2 = hierarchy().map_err(anyhow::Error::msg)?;
        remove_stale(v2);
        let name =
            format!("{PREFIX}{}-{}-{pod}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let groups = if v2 {
            // Children of the root get the controllers only when the root hands them down.
            let control = Path::new(ROOT).join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).unwrap_or_default();
            if !["memory", "cpu"].iter().all(|c| enabled.split_whitespace().any(|x| x == *c)) {
                std::fs::write(&control, "+memory +cpu").with_context(|| {
                    format!("enabling the memory and cpu controllers in {}", control.display())
                })?;
            }
            Groups::V2 { dir: Path::new(ROOT).join(&name) }
        } else {
            Groups::V1 {
                memory: Path::new(ROOT).join("memory").join(&name),
                cpu: Path::new(ROOT).join("cpu").join(&name),
            }
        };
        let cg = PodCgroup { groups, resources: r.clone() };
        for d in cg.dirs() {
            std::fs::create_dir(d).with_context(|| format!("creating cgroup {}", d.display()))?;
        }
        cg.apply().inspect_err(|_| cg.remove())?;
        Ok(cg)
    }

    fn dirs(&self) -> Vec<&Path> {
        match &self.groups {
            Groups::V1 { memory, cpu } => vec![memory, cpu],
            Groups::V2 { dir } => vec![dir],
        }
    }

    fn apply(&self) -> Result<()> {
        let r = &self.resources;
        // The kubelet's minimum share, for a container that requests (almost) nothing.
        let shares = r.cpu_request_millis.map_or(2, |m| (m * 1024 / 1000).max(2));
        let quota_us = r.cpu_limit_millis.map(|m| (m * CFS_PERIOD_US / 1000).max(1000));
        match &self.groups {
            Groups::V1 { memory, cpu } => {
                write(cpu, "cpu.shares", &shares.to_string())?;
                if let Some(q) = quota_us {
                    write(cpu, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
                    write(cpu, "cpu.cfs_quota_us", &q.to_string())?;
                }
                if let Some(b) = r.memory_limit_bytes {
                    write(memory, "memory.limit_in_bytes", &b.to_string())?;
                }
            }
            Groups::V2 { dir } => {
                // The kubelet's conversion of shares (2..262144) to weight (1..10000).
                let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
                write(dir, "cpu.weight", &weight.to_string())?;
                if let Some(q) = quota_us {
                    write(dir, "cpu.max", &format!("{q} {CFS_PERIOD_US}"))?;
                }
                if let Some(b) = r.memory_limit_bytes {
                    write(dir, "memory.max", &b.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// `cmd` run inside the groups from its first instruction: a shell that moves itself in
    /// and then becomes `cmd` (same pid, same environment). Standard input and output are
    /// not carried over (`Command` does not expose them): set them on the result.
    pub fn wrap(&self, cmd: &Command) -> Command {
        let joins: Vec<String> = self
            .dirs()
            .iter()
            .map(|d| format!("echo $$ > '{}'", d.join("cgroup.procs").display()))
            .collect();
        let mut w = Command::new("/bin/sh");
        w.arg("-c").arg(format!("{} && exec \"$0\" \"$@\"", joins.join(" && ")));
        w.arg(cmd.get_program()).args(cmd.get_args());
        w.env_clear();
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                w.env(k, v);
            }
        }
        if let Some(dir) = cmd.get_current_dir() {
            w.current_dir(dir);
        }
        w
    }

    fn memory_dir(&self) -> &Path {
        match &self.groups {
            Groups::V1 { memory, .. } => memory,
            Groups::V2 { dir } => dir,
        }
    }

    /// The memory controller's file named `v1` or `v2` after this machine's hierarchy.
    fn memory_file(&self, v1: &str, v2: &str) -> PathBuf {
        let file = match self.groups {
            Groups::V1 { .. } => v1,
            Groups::V2 { .. } => v2,
        };
        self.memory_dir().join(file)
    }

    fn read_memory_file(&self, v1: &str, v2: &str) -> Result<(PathBuf, String)> {
        let path = self.memory_file(v1, v2);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok((path, text))
    }

    /// How many times the kernel's OOM killer killed a process of this pod for its memory
    /// limit, since the groups were made (every start of the pod uses the same groups).
    pub fn oom_kills(&self) -> Result<u64> {
        let (path, text) = self.read_memory_file("memory.oom_control", "memory.events")?;
        let line = text.lines().find_map(|l| l.strip_prefix("oom_kill "));
        line.context("this kernel does not count OOM kills per cgroup")?
            .trim()
            .parse()
            .with_context(|| format!("{}: oom_kill", path.display()))
    }

    /// The most memory the pod's processes used at once (page cache included, as the limit
    /// counts it); `None` where the kernel does not keep it (cgroup v2 before Linux 5.19).
    pub fn memory_peak_bytes(&self) -> Result<Option<u64>> {
        let path = self.memory_file("memory.max_usage_in_bytes", "memory.peak");
        if !path.exists() {
            return Ok(None);
        }
        let (path, text) = self.read_memory_file("memory.max_usage_in_bytes", "memory.peak")?;
        Ok(Some(text.trim().parse().with_context(|| format!("{}", path.display()))?))
    }

    /// The memory limit the kernel enforces, read back (`None`: unlimited).
    pub fn memory_limit_bytes(&self) -> Result<Option<u64>> {
        let (path, text) = self.read_memory_file("memory.limit_in_bytes", "memory.max")?;
        let text = text.trim();
        if text == "max" {
            return Ok(None);
        }
        let n: u64 = text.parse().with_context(|| format!("{}: {text}", path.display()))?;
        // cgroup v1 says "unlimited" with the largest page-aligned number.
        Ok((n < (1 << 62)).then_some(n))
    }

    /// The pids in the pod's groups.
    pub fn pids(&self) -> Vec<i32> {
        let procs = std::fs::read_to_string(self.memory_dir().join("cgroup.procs"));
        procs.unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    fn remove(&self) {
        for d in self.dirs() {
            remove_group(d);
        }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))
}

/// Kills whatever still runs in the group, then removes it (a group with processes cannot
/// be removed). A killed process leaves the group only once the kernel has torn it down, and
/// this runs in `Drop` (no runtime to await on), so it polls that condition: the removal
/// itself, every 50 ms. Bounded: a process that does not die within a second is left, with
/// its group.
fn remove_group(d: &Path) {
    for _ in 0..20 {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if std::fs::remove_dir(d).is_ok() || !d.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the groups of runs whose process is gone.
fn remove_stale(v2: bool) {
    let parents: Vec<PathBuf> = if v2 {
        vec![PathBuf::from(ROOT)]
    } else {
        vec![Path::new(ROOT).join("memory"), Path::new(ROOT).join("cpu")]
    };
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(&parent) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(PREFIX) else { continue };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                remove_group(&e.path());
            }
        }
    }
}

/// Fails with the reason when pods cannot get cgroups here.
pub fn require() -> Result<()> {
    match PodCgroup::unavailable_reason() {
        None => Ok(()),
        Some(why) => bail!("pods need cgroups for their CPU and memory limits: {why}"),
    }
}
