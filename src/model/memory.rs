//! What models cost in memory: the process's resident set (RSS), and giving freed memory back
//! to the system so that the RSS really drops when a model is freed.
//!
//! Allocators keep freed pages for reuse: jemalloc (the server's allocator) returns them only
//! after its decay time (10 s), glibc's malloc (tests, and ONNX Runtime's own allocations)
//! only when asked. A freed model of 200 MB would otherwise stay in the RSS, and the candidate
//! cache's bound, which counts measured resident bytes, would measure garbage.

/// The process's resident set size in bytes, from `/proc/self/statm`; `None` where there is no
/// procfs.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if size > 0 {
            return size as u64;
        }
    }
    4096
}

/// Hands the memory that the allocators hold freed back to the system, now: jemalloc's dirty
/// pages of every arena, and glibc malloc's free heap. Costs milliseconds for a large model;
/// called after a model is freed or loaded, never on a request's path.
pub fn release_freed() {
    // SAFETY: `arena.<MALLCTL_ARENAS_ALL>.purge` takes and returns nothing (null pointers, zero
    // length), as jemalloc's manual says; in a process whose allocator is not jemalloc (the
    // test binaries) jemalloc holds nothing and this does nothing.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; 0 keeps no extra pad at the top of the heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The resident bytes after freed memory went back to the system: what the process really
/// holds. `None` where the RSS cannot be read.
pub fn settled_resident_bytes() -> Option<u64> {
    release_freed();
    resident_bytes()
}

/// Gives freed memory back to the system when dropped: the last field of a loaded model, so it
/// runs after the engine and its weights were freed. The release runs on a thread of its own,
/// off whichever thread dropped the model (possibly a request's).
#[derive(Debug, Default)]
pub struct ReleaseOnDrop;

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        // A thread that cannot be started only means the pages go back later, on decay.
        let _ = std::thread::Builder::new()
            .name("modeld-release".into())
            .spawn(release_freed);
    }
}
