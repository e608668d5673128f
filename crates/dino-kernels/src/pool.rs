//! One persistent thread pool. `run` broadcasts a closure to every thread (the caller's thread
//! works too) and returns when all have finished; workers spin briefly for the next job before
//! parking on a condvar, so back-to-back kernel launches in a forward pass cost little.
//! `for_chunks` splits a range into chunks claimed atomically, so uneven work balances itself.
//! A launch costs no system call while the workers are still spinning: the condvar is only
//! signalled when some worker has gone to sleep. `set_active` limits how many of the pool's
//! threads the next jobs use (prompt and generation may use different counts).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Type-erased pointer to the closure of the current job. Valid only while `run` waits.
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize, usize) + Sync));

// SAFETY: the pointee is `Sync` and `run` keeps it alive until every worker has finished with it.
unsafe impl Send for JobPtr {}

struct Shared {
    /// Incremented for every job; workers run a job when they see a new value.
    epoch: AtomicUsize,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// The current job and how many threads it uses (workers with a higher index sit it out).
    /// Kept under the same lock as the epoch bump so a worker always sees a consistent pair.
    job: Mutex<Option<(JobPtr, usize)>>,
    wake: Condvar,
    /// Workers parked (or about to park) on `wake`; changed only under `job`'s lock.
    sleepers: AtomicUsize,
    shutdown: std::sync::atomic::AtomicBool,
}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// Threads `run` uses (1..=n_threads).
    active: AtomicUsize,
    /// Serializes `run` calls from different threads.
    lock: Mutex<()>,
}

/// How long a worker spins for the next job before parking.
const SPIN: Duration = Duration::from_micros(200);

impl ThreadPool {
    /// A pool of `n_threads` threads in all (the caller counts as one). 0 means all cores.
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = if n_threads == 0 {
            default_threads()
        } else {
            n_threads
        };
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            sleepers: AtomicUsize::new(0),
            shutdown: std::sync::atomic::AtomicBool::new(false),
        });
        let workers = (1..n_threads)
            .map(|tid| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("dino-worker-{tid}"))
                    .spawn(move || worker(s, tid))
                    .expect("spawning a worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            n_threads,
            active: AtomicUsize::new(n_threads),
            lock: Mutex::new(()),
        }
    }

    /// Threads the pool owns (the caller counts as one).
    pub fn size(&self) -> usize {
        self.n_threads
    }

    /// Threads the next jobs use.
    pub fn n_threads(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Use `n` threads (clamped to `1..=size()`) for the next jobs.
    pub fn set_active(&self, n: usize) {
        self.active
            .store(n.clamp(1, self.n_threads), Ordering::Relaxed);
    }

    /// Run `f(thread_index, n_threads)` on `n` threads (at most the pool size; the caller is
    /// thread 0) and wait for all of them.
    pub fn run_on(&self, n: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let n = n.clamp(1, self.n_threads());
        if n == 1 {
            f(0, 1);
            return;
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: erase the closure's lifetime; we do not return before `pending` reaches 0,
        // i.e. before every worker is done with the pointer, and we clear it right after.
        let ptr: *const (dyn Fn(usize, usize) + Sync + '_) = f;
        let ptr = JobPtr(unsafe {
            std::mem::transmute::<
                *const (dyn Fn(usize, usize) + Sync + '_),
                *const (dyn Fn(usize, usize) + Sync + 'static),
            >(ptr)
        });
        s.pending.store(n - 1, Ordering::Relaxed);
        {
            let mut job = s.job.lock().unwrap_or_else(|e| e.into_inner());
            *job = Some((ptr, n));
            s.epoch.fetch_add(1, Ordering::Release);
            // Workers increment `sleepers` under this lock before parking, so reading it here
            // cannot miss one that has not yet seen the new epoch.
            if s.sleepers.load(Ordering::Relaxed) != 0 {
                s.wake.notify_all();
            }
        }
        f(0, n);
        let start = Instant::now();
        while s.pending.load(Ordering::Acquire) != 0 {
            if start.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Run on every active thread of the pool.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        self.run_on(self.n_threads(), f)
    }

    /// Split `0..n` into chunks of `chunk` items claimed atomically by the threads; `f` gets
    /// each chunk's range. Uses no more threads than there are chunks.
    pub fn for_chunks(&self, n: usize, chunk: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        if n == 0 {
            return;
        }
        let chunk = chunk.max(1);
        let n_chunks = n.div_ceil(chunk);
        let next = AtomicUsize::new(0);
        self.run_on(n_chunks, &|_, _| loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= n_chunks {
                break;
            }
            let start = c * chunk;
            f(start..(start + chunk).min(n));
        });
    }
}

fn worker(s: Arc<Shared>, tid: usize) {
    let mut seen = 0usize;
    loop {
        // Spin a little for the next job, then park.
        let start = Instant::now();
        let mut epoch = s.epoch.load(Ordering::Acquire);
        while epoch == seen && start.elapsed() < SPIN {
            std::hint::spin_loop();
            epoch = s.epoch.load(Ordering::Acquire);
        }
        let job = {
            let mut job = s.job.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if s.shutdown.load(Ordering::Acquire) {
                    return;
                }
                epoch = s.epoch.load(Ordering::Acquire);
                if epoch != seen {
                    break *job;
                }
                s.sleepers.fetch_add(1, Ordering::Relaxed);
                job = s.wake.wait(job).unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_sub(1, Ordering::Relaxed);
            }
        };
        seen = epoch;
        if let Some((JobPtr(f), n)) = job {
            if tid < n {
                // SAFETY: `run_on` keeps the closure alive until `pending` reaches zero, which
                // happens only after this call returns.
                unsafe { (*f)(tid, n) };
                s.pending.fetch_sub(1, Ordering::Release);
            }
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let _job = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.shutdown.store(true, Ordering::Release);
        }
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Physical-ish core count: available parallelism.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A raw pointer that may be shared across the pool's threads for disjoint writes.
#[derive(Clone, Copy)]
pub struct SharedMut<T>(*mut T);

// SAFETY: users only write disjoint elements from different threads (stated at each use).
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub fn new(s: &mut [T]) -> Self {
        SharedMut(s.as_mut_ptr())
    }
    /// # Safety
    /// `start..start+len` must lie inside the original slice, and no other thread may access
    /// those elements while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        // SAFETY: guaranteed by the caller as documented.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }

    /// # Safety
    /// `start..start+len` must lie inside the original slice, and no thread may write those
    /// elements while the returned slice lives.
    pub unsafe fn slice_ref(&self, start: usize, len: usize) -> &[T] {
        // SAFETY: guaranteed by the caller as documented.
        unsafe { std::slice::from_raw_parts(self.0.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_and_chunks_cover_the_range() {
        for n in [1, 2, 3, 5] {
            let pool = ThreadPool::new(n);
            let hits = AtomicUsize::new(0);
            pool.run(&|tid, nt| {
                assert!(tid < nt);
                hits.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), n);
            for _ in 0..200 {
                let mut out = vec![0u32; 1003];
                let p = SharedMut::new(&mut out);
                pool.for_chunks(1003, 17, &|r| {
                    // SAFETY: chunks are disjoint.
                    let s = unsafe { p.slice(r.start, r.len()) };
                    for (i, x) in s.iter_mut().enumerate() {
                        *x += (r.start + i) as u32 + 1;
                    }
                });
                assert!(out.iter().enumerate().all(|(i, &x)| x == i as u32 + 1));
            }
        }
    }

    #[test]
    fn parked_workers_wake_up() {
        let pool = ThreadPool::new(3);
        for i in 0..20 {
            // Longer than the spin window every other time, so workers park in between.
            if i % 2 == 0 {
                std::thread::sleep(SPIN * 3);
            }
            let hits = AtomicUsize::new(0);
            pool.run(&|_, _| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), 3);
        }
    }

    #[test]
    fn run_on_fewer_threads() {
        let pool = ThreadPool::new(4);
        let hits = AtomicUsize::new(0);
        pool.run_on(2, &|_, nt| {
            assert_eq!(nt, 2);
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
        // Fewer active threads, then all again.
        pool.set_active(3);
        let hits = AtomicUsize::new(0);
        pool.run(&|_, nt| {
            assert_eq!(nt, 3);
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 3);
        pool.set_active(99);
        assert_eq!(pool.n_threads(), 4);
        // And a full run afterwards still reaches all four.
        let hits = AtomicUsize::new(0);
        pool.run(&|_, _| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 4);
    }
}
