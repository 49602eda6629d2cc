//! Linux `/proc` readings for the benchmark tools (`load`, `record_bench`,
//! `restream_bench`): a process's CPU time, per thread and in all, its
//! memory and I/O, and the whole machine's CPU, sampled at both ends of a
//! measurement window. Every reader is best effort: a figure that cannot be
//! read is `None` or 0, never an error.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

unsafe extern "C" {
    fn sysconf(name: std::ffi::c_int) -> std::ffi::c_long;
}

/// Clock ticks per second of /proc's CPU times.
pub fn clk_tck() -> f64 {
    const SC_CLK_TCK: std::ffi::c_int = 2; // Linux (glibc and musl)
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { sysconf(SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The fields of a /proc `stat` file after the command name (which may
/// contain spaces), starting with field 3, the state.
fn stat_fields(text: &str) -> Option<&str> {
    text.get(text.rfind(')')? + 2..)
}

/// utime + stime in clock ticks, from a /proc `stat` file.
pub fn cpu_ticks(stat_path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    let f: Vec<&str> = stat_fields(&text)?.split_whitespace().collect();
    // f[0] is field 3 (state); utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// utime + stime of a process, clock ticks (None: no such process).
pub fn proc_cpu(pid: u32) -> Option<u64> {
    cpu_ticks(Path::new(&format!("/proc/{pid}/stat")))
}

/// The state letter of /proc/<pid>/stat (None: no such process).
pub fn proc_state(pid: u32) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&text)?.chars().next()
}

/// Whether the process exists and is neither a zombie nor dead.
pub fn alive(pid: u32) -> bool {
    proc_state(pid).is_some_and(|s| !matches!(s, 'Z' | 'X'))
}

/// Per thread id: (name, ticks).
pub fn thread_ticks(pid: u32) -> BTreeMap<u32, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let path = t.path();
        let name = std::fs::read_to_string(path.join("comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        if let Some(ticks) = cpu_ticks(&path.join("stat")) {
            out.insert(tid, (name, ticks));
        }
    }
    out
}

/// Ticks per thread name (threads with the same name summed).
pub fn thread_ticks_by_name(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (name, ticks) in thread_ticks(pid).into_values() {
        *out.entry(name).or_insert(0) += ticks;
    }
    out
}

/// (VmRSS, VmHWM) of /proc/<pid>/status in KiB, read at once (0 when
/// unreadable).
pub fn rss_hwm_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A field of /proc/<pid>/io (e.g. `wchar`, `write_bytes`).
pub fn io_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The machine's `cpu` line of /proc/stat: (busy, total) ticks, where idle
/// and iowait count as not busy.
pub fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice;
    // guest time is already part of user.
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// CPU figures at one end of a window: the measured process, its threads,
/// this process and the machine.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub at: Instant,
    /// The measured process's ticks.
    pub process: u64,
    /// Its threads: id → (name, ticks).
    pub threads: BTreeMap<u32, (String, u64)>,
    /// This process's own ticks.
    pub own: u64,
    /// [`machine_ticks`].
    pub machine: (u64, u64),
}

impl Snapshot {
    /// Samples process `pid`; `None` when its stat cannot be read.
    pub fn take(pid: u32) -> Option<Self> {
        let at = Instant::now();
        let process = proc_cpu(pid)?;
        Some(Self::rest(at, pid, process))
    }

    /// As [`Snapshot::take`], but a process whose stat cannot be read
    /// counts as 0 ticks.
    pub fn take_lenient(pid: u32) -> Self {
        let at = Instant::now();
        let process = proc_cpu(pid).unwrap_or(0);
        Self::rest(at, pid, process)
    }

    fn rest(at: Instant, pid: u32, process: u64) -> Self {
        Self {
            at,
            process,
            threads: thread_ticks(pid),
            own: proc_cpu(std::process::id()).unwrap_or(0),
            machine: machine_ticks(),
        }
    }
}

/// CPU over the window between two [`Snapshot`]s, in CPU-s/s.
#[derive(Clone, Debug)]
pub struct Rates {
    /// The window, seconds.
    pub window: f64,
    /// The measured process.
    pub process: f64,
    /// By thread name; CPU of threads that exited in the window is under
    /// "(exited)".
    pub threads: BTreeMap<String, f64>,
    /// This process.
    pub own: f64,
    /// Busy cores of the whole machine (0..=cores).
    pub machine: f64,
}

impl Rates {
    /// Rates over the window [s0, s1].
    pub fn between(s0: &Snapshot, s1: &Snapshot) -> Self {
        let tck = clk_tck();
        let window = s1.at.duration_since(s0.at).as_secs_f64().max(1e-3);
        let rate = |ticks: u64| ticks as f64 / tck / window;
        let mut threads: BTreeMap<String, f64> = BTreeMap::new();
        let mut counted = 0;
        for (tid, (name, ticks)) in &s1.threads {
            let before = s0.threads.get(tid).map_or(0, |(_, t)| *t);
            let used = ticks.saturating_sub(before);
            counted += used;
            *threads.entry(name.clone()).or_insert(0.0) += rate(used);
        }
        let used = s1.process.saturating_sub(s0.process);
        if used > counted {
            threads.insert("(exited)".into(), rate(used - counted));
        }
        let busy = s1.machine.0.saturating_sub(s0.machine.0) as f64;
        let total = s1.machine.1.saturating_sub(s0.machine.1).max(1) as f64;
        Self {
            window,
            process: rate(used),
            threads,
            own: rate(s1.own.saturating_sub(s0.own)),
            machine: busy / total * cores() as f64,
        }
    }

    /// Busy cores that were neither the measured process nor this one.
    pub fn others(&self) -> f64 {
        (self.machine - self.process - self.own).max(0.0)
    }

    /// The busiest threads, e.g. `whipcord-media 0.085, (exited) 0.005`:
    /// by CPU, highest first, those under 0.0005 CPU-s/s left out.
    pub fn thread_list(&self) -> String {
        let mut by_cpu: Vec<(&String, &f64)> = self.threads.iter().collect();
        by_cpu.sort_by(|a, b| b.1.total_cmp(a.1));
        by_cpu
            .iter()
            .filter(|(_, v)| **v >= 0.0005)
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
