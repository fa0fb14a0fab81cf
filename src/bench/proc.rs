//! A process's CPU time and peak memory, read from Linux's /proc (no unsafe code; `None`
//! where /proc is missing).

/// Clock ticks per second of /proc/PID/stat times (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds of process `pid` (all its threads), or of this process.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: skip past it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Peak resident set (VmHWM) of process `pid`, or of this process, in bytes.
pub fn peak_rss_bytes(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let start = cpu_seconds(None).unwrap();
        let mut x = 0u64;
        // Spin until this process has used 50 ms of CPU (a loaded machine gives it less
        // than the wall time), or 10 s have passed.
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(10)
            && cpu_seconds(None).is_some_and(|now| now < start + 0.06)
        {
            for _ in 0..100_000 {
                x = x.wrapping_mul(31).wrapping_add(7);
            }
            std::hint::black_box(x);
        }
        std::hint::black_box(x);
        let end = cpu_seconds(None).unwrap();
        assert!(end >= start + 0.05, "{start} -> {end}");
        assert!(peak_rss_bytes(None).unwrap() > 1 << 20);
        assert!(cpu_seconds(Some(std::process::id())).is_some());
    }
}
