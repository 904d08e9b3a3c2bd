//! The `kms-sidecar` binary: tunes glibc's malloc, parses the command line
//! and hands it to [`kms_sidecar::cli::run`].

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    tune_malloc();
    kms_sidecar::cli::run(kms_sidecar::cli::Cli::parse())
}

/// glibc's malloc raises its mmap threshold after the first large block is
/// freed; request bodies of a few hundred KiB then come from heap arenas that
/// are rarely given back, so RSS stays near its high-water mark after a burst
/// (two bursts of 100 concurrent 1 MiB bodies: 95 MiB peak, 59 MiB 30 s
/// later). Fixed thresholds keep blocks of 128 KiB and more in mappings of
/// their own, returned when freed (53 MiB peak, 19 MiB after): see
/// `docs/benchmarks.md`, "Memory after bursts".
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only sets allocator parameters; it runs first thing in
    // main, before any other thread exists, and takes plain integers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}
