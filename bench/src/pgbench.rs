//! The pgbench reference: the runtime's statement, prepared (`-M prepared`), from a C client.

use crate::harness::Measurement;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// An installed pgbench.
#[derive(Debug, Clone)]
pub struct Pgbench {
    bin: PathBuf,
    /// `pgbench --version`.
    pub version: String,
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy)]
pub enum Length {
    /// `-T secs`.
    Seconds(u32),
    /// `-t n` per client.
    Transactions(u32),
}

impl Pgbench {
    /// `$PGBENCH`, then `pgbench` on the PATH, then `$PG_BIN_DIR/pgbench`, then `/usr/bin/pgbench`.
    pub fn find() -> Result<Pgbench, String> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(explicit) = std::env::var_os("PGBENCH") {
            candidates.push(explicit.into());
        }
        candidates.push("pgbench".into());
        if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
            candidates.push(Path::new(&dir).join("pgbench"));
        }
        candidates.push("/usr/bin/pgbench".into());
        for bin in candidates {
            if let Ok(output) = Command::new(&bin).arg("--version").output() {
                if output.status.success() {
                    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
                    return Ok(Pgbench { bin, version });
                }
            }
        }
        Err("pgbench is not installed (set PGBENCH or PG_BIN_DIR, or install postgresql-client)".into())
    }

    /// Runs `script` with `clients` clients and threads against `url`.
    pub fn run(
        &self,
        url: &str,
        script: &str,
        defines: &[(&str, String)],
        clients: usize,
        length: Length,
    ) -> Result<Measurement, String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "pg_cached_bench_{}_{}.sql",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, script).map_err(|e| format!("write {}: {e}", path.display()))?;
        let mut command = Command::new(&self.bin);
        command.args(["-n", "-M", "prepared", "-c", &clients.to_string(), "-j", &clients.to_string()]);
        match length {
            Length::Seconds(secs) => command.args(["-T", &secs.max(1).to_string()]),
            Length::Transactions(n) => command.args(["-t", &n.max(1).to_string()]),
        };
        for (name, value) in defines {
            command.arg("-D").arg(format!("{name}={value}"));
        }
        command.arg("-f").arg(&path).arg(url);
        let cpu_before = crate::harness::children_cpu_ns();
        let output = command.output();
        let client_cpu_ns = crate::harness::children_cpu_ns().saturating_sub(cpu_before);
        std::fs::remove_file(&path).ok();
        let output = output.map_err(|e| format!("cannot run pgbench: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!("pgbench failed ({}): {}", output.status, stderr.trim()));
        }
        let mut measured = parse(&stdout).ok_or_else(|| format!("unexpected pgbench output:\n{stdout}\n{stderr}"))?;
        measured.client_cpu_ns = client_cpu_ns;
        if measured.ops == 0 {
            // Nothing completed (the machine stalled): a zero-rate segment, not a failure.
            measured.secs = match length {
                Length::Seconds(secs) => f64::from(secs.max(1)),
                Length::Transactions(_) => 1.0,
            };
        }
        Ok(measured)
    }
}

/// Reads processed transactions, failures, tps and mean latency from pgbench's report.
fn parse(report: &str) -> Option<Measurement> {
    let after = |prefix: &str| {
        report.lines().find_map(|line| line.trim().strip_prefix(prefix).map(|rest| rest.trim().to_owned()))
    };
    let processed = after("number of transactions actually processed:")?;
    let ops: u64 = processed.split('/').next()?.trim().parse().ok()?;
    let errors: u64 = after("number of failed transactions:")
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    let latency_ms: Option<f64> =
        after("latency average =").and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()));
    let tps: f64 = match after("tps =") {
        Some(tps) => tps.split_whitespace().next()?.parse().ok()?,
        None if ops == 0 => return Some(Measurement { errors, ..Measurement::default() }),
        None => return None,
    };
    if tps <= 0.0 {
        return None;
    }
    Some(Measurement {
        ops,
        errors,
        timeouts: 0,
        first_error: (errors > 0).then(|| format!("{errors} failed pgbench transactions")),
        secs: ops as f64 / tps,
        latencies_ns: Vec::new(),
        reported_mean_us: latency_ms.map(|ms| ms * 1000.0),
        segment_rates: Vec::new(),
        client_cpu_ns: 0,
    })
}

/// Turns `$1`, `$2`, ... into pgbench variables `:names[0]`, `:names[1]`, ... (outside quoted literals).
pub fn to_pgbench(statement: &str, names: &[&str]) -> Result<String, String> {
    let mut out = String::with_capacity(statement.len() + 16);
    let mut chars = statement.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '$' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut digits = String::new();
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                digits.push(d);
                chars.next();
            }
            let index: usize = digits.parse().map_err(|_| format!("bad parameter ${digits}"))?;
            let name = index
                .checked_sub(1)
                .and_then(|i| names.get(i))
                .ok_or_else(|| format!("the statement has parameter ${index}, the reference only knows {names:?}"))?;
            out.push(':');
            out.push_str(name);
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_variables() {
        assert_eq!(
            to_pgbench(
                "SELECT $1, $2::jsonb, '$1' FROM t WHERE a = $10",
                &["k", "v", "a", "b", "c", "d", "e", "f", "g", "z"]
            )
            .unwrap(),
            "SELECT :k, :v::jsonb, '$1' FROM t WHERE a = :z"
        );
        assert!(to_pgbench("SELECT $3", &["k"]).is_err());
    }

    #[test]
    fn reads_the_report() {
        let report = "transaction type: /tmp/x.sql\nscaling factor: 1\nquery mode: prepared\nnumber of clients: 4\n\
             number of threads: 4\nmaximum number of tries: 1\nduration: 2 s\n\
             number of transactions actually processed: 50000\nnumber of failed transactions: 0 (0.000%)\n\
             latency average = 0.160 ms\ninitial connection time = 8.503 ms\n\
             tps = 25000.000000 (without initial connection time)\n";
        let m = parse(report).unwrap();
        assert_eq!(m.ops, 50_000);
        assert_eq!(m.errors, 0);
        assert!((m.secs - 2.0).abs() < 1e-9);
        assert!((m.reported_mean_us.unwrap() - 160.0).abs() < 1e-6);
        let stalled = "number of transactions actually processed: 0\nnumber of failed transactions: 0 (NaN%)\n";
        assert_eq!(parse(stalled).unwrap().ops, 0);
        let with_t = report.replace("50000", "200/200");
        assert_eq!(parse(&with_t).unwrap().ops, 200);
    }
}
