//! Who this process is, so that files and locks it leaves can be told apart from those of live
//! processes: the host, the boot, the PID namespace and the process's start time (a reused pid
//! has another). Only Linux can tell a process is gone; elsewhere callers fall back on ages.

/// The machine's host name.
pub fn host_name() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
        .or_else(|| read_trimmed("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// `/proc/sys/kernel/random/boot_id`: tells a reboot (or another machine of the same name).
pub fn boot_id() -> Option<String> {
    read_trimmed("/proc/sys/kernel/random/boot_id")
}

/// The PID namespace (`/proc/self/ns/pid`): pids are compared only within one.
pub fn pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The start time (clock ticks since boot) of the live, non-zombie process `pid` in this PID
/// namespace; `None` when there is none.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the command name (which may hold spaces and parentheses): state is field 3,
    // starttime field 22
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    match fields.first() {
        Some(&"Z") | Some(&"X") | None => None,
        Some(_) => fields.get(19)?.parse().ok(),
    }
}

/// A short tag for (host, boot, PID namespace): two processes with the same tag can look each
/// other up by pid. Empty where the boot or namespace is unknown (never "this machine").
pub fn machine_tag() -> String {
    match (boot_id(), pid_namespace()) {
        (Some(boot), Some(ns)) => {
            let identity = format!("{}\n{boot}\n{ns}", host_name());
            let digest = <sha2::Sha256 as sha2::Digest>::digest(identity.as_bytes());
            crate::hash::hex(&digest[..6])
        }
        _ => String::new(),
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
