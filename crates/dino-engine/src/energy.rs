//! CPU energy from RAPL counters, read through Linux powercap (`/sys/class/powercap`).
//!
//! Each package-level zone (`intel-rapl:0`, `intel-rapl:1`, ... — AMD Zen CPUs appear under the
//! same driver — or any other `*rapl*:N` control type) has a cumulative `energy_uj` counter that
//! wraps at `max_energy_range_uj`. [`EnergyMeter`] sums the package zones, one per socket
//! (subzones such as `intel-rapl:0:0` are parts of their package and are not added again; the
//! MMIO interface repeats the MSR packages and is used only when those are absent).
//!
//! The counters measure the whole package, so anything else running on the machine is counted
//! too. On most kernels `energy_uj` is readable by root only.

use std::path::{Path, PathBuf};

/// Where Linux exposes powercap zones.
pub const POWERCAP_ROOT: &str = "/sys/class/powercap";

/// One package zone's counter.
#[derive(Clone, Debug)]
struct Zone {
    /// The zone's `name` (`package-0`, ...).
    name: String,
    energy_uj: PathBuf,
    /// The counter wraps to 0 after this value; 0 when the file could not be read.
    max_energy_range_uj: u64,
}

/// Readings of every zone of a meter, in µJ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnergyReading(Vec<u64>);

/// Package energy counters that were readable when the meter was opened.
#[derive(Clone, Debug)]
pub struct EnergyMeter {
    zones: Vec<Zone>,
}

impl EnergyMeter {
    /// Open the RAPL package counters under [`POWERCAP_ROOT`]. The error is a one-line reason
    /// fit for the user ("no readable RAPL counter under /sys/class/powercap", ...).
    pub fn open() -> Result<EnergyMeter, String> {
        EnergyMeter::open_at(Path::new(POWERCAP_ROOT))
    }

    /// As [`open`](Self::open), with another root (tests use a fake tree).
    pub fn open_at(root: &Path) -> Result<EnergyMeter, String> {
        let none = || format!("no readable RAPL counter under {}", root.display());
        let entries = std::fs::read_dir(root).map_err(|_| none())?;
        // (prefer: 0 for MSR zones, 1 for MMIO), zone directory name, zone name, path
        let mut found: Vec<(u8, String, String, PathBuf)> = Vec::new();
        for e in entries.flatten() {
            let dir_name = e.file_name().to_string_lossy().into_owned();
            let Some((ctype, index)) = dir_name.split_once(':') else {
                continue;
            };
            // Package-level zones only: `ctype:N`, not subzones `ctype:N:M`.
            if !ctype.contains("rapl")
                || index.is_empty()
                || !index.bytes().all(|b| b.is_ascii_digit())
            {
                continue;
            }
            let dir = e.path();
            if !dir.join("energy_uj").exists() {
                continue;
            }
            let name = std::fs::read_to_string(dir.join("name"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| dir_name.clone());
            found.push((u8::from(ctype.contains("mmio")), dir_name, name, dir));
        }
        if found.is_empty() {
            return Err(none());
        }
        found.sort();
        // Packages; `psys` (the whole platform) only when no package zone exists, since it
        // contains the packages.
        let packages: Vec<_> = found
            .iter()
            .filter(|z| z.2.starts_with("package"))
            .cloned()
            .collect();
        let chosen = if packages.is_empty() { found } else { packages };
        let mut zones: Vec<Zone> = Vec::new();
        let mut unreadable = None;
        for (_, _, name, dir) in chosen {
            if zones.iter().any(|z| z.name == name) {
                continue; // the same package through another interface
            }
            let energy_uj = dir.join("energy_uj");
            if read_u64(&energy_uj).is_none() {
                unreadable.get_or_insert(energy_uj);
                continue;
            }
            let max_energy_range_uj = read_u64(&dir.join("max_energy_range_uj")).unwrap_or(0);
            zones.push(Zone {
                name,
                energy_uj,
                max_energy_range_uj,
            });
        }
        match unreadable {
            // A partial sum (one socket of two) would look plausible and be wrong.
            Some(p) => Err(format!(
                "{} is not readable (RAPL counters are usually root-only; run as root or make energy_uj readable)",
                p.display()
            )),
            None if zones.is_empty() => Err(none()),
            None => Ok(EnergyMeter { zones }),
        }
    }

    /// The zones summed, by name (`package-0`, ...).
    pub fn zone_names(&self) -> Vec<&str> {
        self.zones.iter().map(|z| z.name.as_str()).collect()
    }

    /// Read every counter; `None` if one could not be read.
    pub fn read(&self) -> Option<EnergyReading> {
        self.zones
            .iter()
            .map(|z| read_u64(&z.energy_uj))
            .collect::<Option<Vec<_>>>()
            .map(EnergyReading)
    }

    /// Joules used between two readings, allowing each counter to have wrapped once; `None`
    /// when a counter went backwards and its range is unknown.
    pub fn joules_between(&self, start: &EnergyReading, end: &EnergyReading) -> Option<f64> {
        let mut uj: u64 = 0;
        for ((z, &a), &b) in self.zones.iter().zip(&start.0).zip(&end.0) {
            uj += counter_delta(a, b, z.max_energy_range_uj)?;
        }
        Some(uj as f64 * 1e-6)
    }
}

/// `end - start` for a counter that runs over `0..=max` and then wraps to 0.
fn counter_delta(start: u64, end: u64, max: u64) -> Option<u64> {
    if end >= start {
        Some(end - start)
    } else if max >= start {
        Some(max - start + 1 + end)
    } else {
        None
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(root: &Path, dir: &str, name: &str, energy: u64, max: u64) {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
        std::fs::write(d.join("energy_uj"), format!("{energy}\n")).unwrap();
        std::fs::write(d.join("max_energy_range_uj"), format!("{max}\n")).unwrap();
    }

    fn root(tag: &str) -> PathBuf {
        let r = std::env::temp_dir().join(format!("dino-rapl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&r);
        std::fs::create_dir_all(&r).unwrap();
        r
    }

    #[test]
    fn wraparound_is_handled() {
        assert_eq!(counter_delta(10, 25, 100), Some(15));
        assert_eq!(counter_delta(90, 5, 99), Some(15));
        assert_eq!(counter_delta(90, 5, 0), None);
    }

    #[test]
    fn sums_packages_not_subzones_or_duplicates() {
        let r = root("sum");
        zone(&r, "intel-rapl:0", "package-0", 1_000_000, 262_143_328_850);
        zone(&r, "intel-rapl:1", "package-1", 2_000_000, 262_143_328_850);
        zone(&r, "intel-rapl:0:0", "core", 500_000, 262_143_328_850);
        zone(&r, "intel-rapl-mmio:0", "package-0", 7, 262_143_328_850);
        zone(&r, "intel-rapl:2", "psys", 9_000_000, 262_143_328_850);
        let m = EnergyMeter::open_at(&r).unwrap();
        assert_eq!(m.zone_names(), ["package-0", "package-1"]);
        let a = m.read().unwrap();
        std::fs::write(r.join("intel-rapl:0/energy_uj"), "1500000").unwrap();
        std::fs::write(r.join("intel-rapl:1/energy_uj"), "2250000").unwrap();
        let b = m.read().unwrap();
        let j = m.joules_between(&a, &b).unwrap();
        assert!((j - 0.75).abs() < 1e-12, "{j}");
        let _ = std::fs::remove_dir_all(&r);
    }

    #[test]
    fn missing_counters_are_a_clear_reason() {
        let r = root("none");
        let e = EnergyMeter::open_at(&r.join("absent")).unwrap_err();
        assert!(e.starts_with("no readable RAPL counter under "), "{e}");
        let e = EnergyMeter::open_at(&r).unwrap_err();
        assert!(e.starts_with("no readable RAPL counter under "), "{e}");
        let _ = std::fs::remove_dir_all(&r);
    }
}
