//! The kernels' thread pool: fork-join over task indices, with workers that
//! spin a while between jobs instead of parking at once.
//!
//! A model is hundreds of operators of 20–300 µs each, every one a fork and
//! a join. A parked thread is slow to wake, above all on a virtual machine:
//! on a 2-vCPU Xeon VM, a rayon fork-join of two empty tasks took 4.6 µs
//! back to back, 57 µs after 100 µs idle and 85 µs after 1 ms (median of
//! 200), which cost MobileNetV2 at batch 1 a third of its second thread.
//! Here a worker keeps watching for the next job for 2 ms after each one
//! (the caller runs tasks too), then parks until woken. ONNX Runtime's pool
//! spins the same way.
//!
//! One job at a time: a call made while the pool is busy (from inside a
//! task, or from another thread sharing the pool) runs its tasks itself,
//! serially, so nesting never deadlocks.
//!
//! While profiling, the pool also times its jobs ([`Pool::set_timing`]):
//! each job's wall time and the time its tasks ran, summed over the
//! threads, so that a profile can tell the thread time a node wastes
//! waiting at forks and joins (uneven shares, late workers) from the time
//! it runs outside any job (one thread working, the others idle).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker watches for the next job before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// A fixed set of worker threads; see the module documentation.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Held by the thread whose job is running.
    busy: Mutex<()>,
    timing: Timing,
}

/// The jobs' times while [`Pool::set_timing`] is on, in nanoseconds.
#[derive(Debug, Default)]
struct Timing {
    on: AtomicBool,
    /// Wall time of the jobs, fork to join.
    span: AtomicU64,
    /// Time the jobs' tasks ran, summed over the threads.
    busy: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What [`Pool::timing`] has summed since the pool was made: subtract two
/// readings for the jobs between them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolTime {
    /// Wall time of the jobs the pool ran on its threads, fork to join.
    pub span: Duration,
    /// Time their tasks ran, summed over the threads: `span × threads`
    /// less this is what the threads spent waiting for work or for the
    /// others.
    pub busy: Duration,
}

impl std::ops::AddAssign for PoolTime {
    fn add_assign(&mut self, other: PoolTime) {
        self.span += other.span;
        self.busy += other.busy;
    }
}

impl std::ops::Sub for PoolTime {
    type Output = PoolTime;
    fn sub(self, earlier: PoolTime) -> PoolTime {
        PoolTime {
            span: self.span.saturating_sub(earlier.span),
            busy: self.busy.saturating_sub(earlier.busy),
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} threads)", self.threads())
    }
}

/// One job: tasks `0..n` of `f`, claimed one index at a time.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Whether the tasks are timed, and their time so far (ns).
    timed: bool,
    busy: AtomicU64,
    /// The first panic of a task, re-raised in the caller.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

struct Shared {
    /// The running job (type-erased `*const Job`), null between jobs.
    job: AtomicPtr<()>,
    /// Bumped once per job (and at shutdown); workers watch it.
    epoch: AtomicUsize,
    /// Workers inside a job (between loading `job` and leaving it).
    active: AtomicUsize,
    /// Workers parked on `wake`.
    sleepers: AtomicUsize,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

thread_local! {
    /// Whether this thread is running a task of some pool's job.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

impl Pool {
    /// A pool that runs jobs on `threads` threads: the caller and
    /// `threads - 1` workers.
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            epoch: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for i in 1..threads.max(1) {
            let s = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("mlc-worker-{i}"))
                .spawn(move || worker(&s));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    // Stop the ones already started (Drop joins them).
                    drop(Pool {
                        shared,
                        workers,
                        busy: Mutex::new(()),
                        timing: Timing::default(),
                    });
                    return Err(e);
                }
            }
        }
        Ok(Pool {
            shared,
            workers,
            busy: Mutex::new(()),
            timing: Timing::default(),
        })
    }

    /// Turns the timing of jobs on or off (see the module docs).
    pub fn set_timing(&self, on: bool) {
        self.timing.on.store(on, SeqCst);
    }

    /// The jobs' times summed while timing was on.
    pub fn timing(&self) -> PoolTime {
        PoolTime {
            span: Duration::from_nanos(self.timing.span.load(SeqCst)),
            busy: Duration::from_nanos(self.timing.busy.load(SeqCst)),
        }
    }

    /// Threads a job runs on, the caller's included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(i)` for every `i` in `0..n`, spread over the pool's threads,
    /// and returns when all have finished.
    ///
    /// # Panics
    /// With a task's panic, once every task has ended.
    pub fn for_each(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        if n == 1 || self.workers.is_empty() || IN_TASK.get() {
            return serial(n, f);
        }
        let _busy = match self.busy.try_lock() {
            Ok(g) => g,
            // Another thread's job is running: do this one alone.
            Err(TryLockError::WouldBlock) => return serial(n, f),
            // A job panicked while holding the lock; the pool's state is
            // reset at the end of every job, so it is still sound.
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        let timed = self.timing.on.load(SeqCst);
        let start = timed.then(Instant::now);
        let job = Job {
            f,
            n,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            timed,
            busy: AtomicU64::new(0),
            panic: Mutex::new(None),
        };
        let s = &*self.shared;
        s.job.store(&job as *const Job as *mut (), SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|p| p.into_inner());
            s.wake.notify_all();
        }
        run_tasks(&job);
        while job.done.load(SeqCst) < n {
            std::hint::spin_loop();
        }
        // No worker may touch `job` once this returns: clear it, then wait
        // for those that loaded it to leave. A worker counts itself active
        // before it loads `job`, so one that counts after this check loads
        // null.
        s.job.store(std::ptr::null_mut(), SeqCst);
        while s.active.load(SeqCst) > 0 {
            std::hint::spin_loop();
        }
        if let Some(t0) = start {
            self.timing.span.fetch_add(nanos(t0.elapsed()), SeqCst);
            self.timing.busy.fetch_add(job.busy.load(SeqCst), SeqCst);
        }
        let panic = job.panic.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        {
            let _g = s.lock.lock().unwrap_or_else(|p| p.into_inner());
            s.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            // A worker catches its tasks' panics, so it ends normally.
            let _ = h.join();
        }
    }
}

fn serial(n: usize, f: &(dyn Fn(usize) + Sync)) {
    for i in 0..n {
        f(i);
    }
}

/// Claims and runs tasks of `job` until none is left.
fn run_tasks(job: &Job) {
    let was = IN_TASK.replace(true);
    loop {
        let i = job.next.fetch_add(1, SeqCst);
        if i >= job.n {
            break;
        }
        let t0 = job.timed.then(Instant::now);
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.f)(i)));
        if let Some(t0) = t0 {
            job.busy.fetch_add(nanos(t0.elapsed()), SeqCst);
        }
        if let Err(p) = ran {
            job.panic
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(p);
        }
        job.done.fetch_add(1, SeqCst);
    }
    IN_TASK.set(was);
}

fn worker(s: &Shared) {
    // The epoch the pool started at (not loaded here: a worker that starts
    // late must still see the first job, or the shutdown).
    let mut seen = 0;
    loop {
        // Watch for the next job, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(SeqCst) == seen {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let mut g = s.lock.lock().unwrap_or_else(|p| p.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                while s.epoch.load(SeqCst) == seen && !s.stop.load(SeqCst) {
                    g = s.wake.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                s.sleepers.fetch_sub(1, SeqCst);
                break;
            }
        }
        seen = s.epoch.load(SeqCst);
        if s.stop.load(SeqCst) {
            return;
        }
        s.active.fetch_add(1, SeqCst);
        let p = s.job.load(SeqCst) as *const Job;
        if !p.is_null() {
            // SAFETY: `for_each` keeps the job alive until `active` is back
            // to zero, and this worker counted itself before loading it.
            run_tasks(unsafe { &*p });
        }
        s.active.fetch_sub(1, SeqCst);
    }
}

/// A slice whose disjoint chunks the tasks of one job write.
pub(crate) struct Chunks<T> {
    ptr: *mut T,
    len: usize,
    chunk: usize,
}

// SAFETY: tasks touch disjoint chunks (`get` hands chunk i to task i only).
unsafe impl<T: Send> Send for Chunks<T> {}
unsafe impl<T: Send> Sync for Chunks<T> {}

impl<T> Chunks<T> {
    pub(crate) fn new(data: &mut [T], chunk: usize) -> Chunks<T> {
        assert!(chunk > 0, "chunks of no elements");
        Chunks {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            chunk,
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.len.div_ceil(self.chunk)
    }

    /// Chunk `i` (the last may be shorter).
    ///
    /// # Safety
    /// At most one caller holds chunk `i` at a time, and the slice given to
    /// [`Chunks::new`] is not otherwise used meanwhile.
    // A split borrow handed out piece by piece, as `chunks_mut` would,
    // across threads: the exclusivity is the caller's contract.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get(&self, i: usize) -> &mut [T] {
        let start = i * self.chunk;
        assert!(start < self.len, "chunk {i} of {}", self.count());
        let len = self.chunk.min(self.len - start);
        // SAFETY: inside the slice (checked above); exclusive by the
        // caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_jobs_of_every_size() {
        let pool = Pool::new(3).unwrap();
        for n in [0usize, 1, 2, 3, 7, 100, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.for_each(n, &|i| {
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "n = {n}");
        }
    }

    #[test]
    fn timed_jobs_count_the_threads_idle_inside_them() {
        let pool = Pool::new(2).unwrap();
        let long = Duration::from_millis(20);
        let job = |i: usize| {
            if i == 0 {
                std::thread::sleep(long);
            }
        };
        pool.for_each(2, &job);
        assert_eq!(
            pool.timing(),
            PoolTime::default(),
            "timing is off by default"
        );
        pool.set_timing(true);
        let before = pool.timing();
        pool.for_each(2, &job);
        let t = pool.timing() - before;
        // Whether the two tasks ran side by side or one after the other,
        // the threads' time the job held (span × 2) less the tasks' time
        // is at least the long task's less the short one's.
        assert!(
            t.span >= long && t.busy >= long && t.busy <= 2 * t.span,
            "{t:?}"
        );
        assert!(
            2 * t.span - t.busy >= long - Duration::from_millis(1),
            "{t:?}"
        );
        pool.set_timing(false);
        let off = pool.timing();
        pool.for_each(2, &job);
        assert_eq!(pool.timing(), off);
    }

    #[test]
    fn parked_workers_wake_and_nested_jobs_run_serially() {
        let pool = Pool::new(2).unwrap();
        std::thread::sleep(SPIN * 3);
        let sum = AtomicUsize::new(0);
        pool.for_each(4, &|i| {
            pool.for_each(3, &|j| {
                sum.fetch_add(i * 3 + j, SeqCst);
            });
        });
        assert_eq!(sum.load(SeqCst), (0..12).sum::<usize>());
    }

    #[test]
    fn two_callers_share_one_pool() {
        let pool = Arc::new(Pool::new(2).unwrap());
        let total = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (pool, total) = (Arc::clone(&pool), Arc::clone(&total));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        pool.for_each(8, &|_| {
                            total.fetch_add(1, SeqCst);
                        });
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(total.load(SeqCst), 2 * 200 * 8);
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(2).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.for_each(8, &|i| assert!(i != 5, "task 5 fails"));
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.for_each(8, &|_| {
            count.fetch_add(1, SeqCst);
        });
        assert_eq!(count.load(SeqCst), 8);
    }

    #[test]
    fn chunks_split_like_chunks_mut() {
        let pool = Pool::new(2).unwrap();
        let mut v = vec![0usize; 10];
        let ch = Chunks::new(&mut v, 4);
        assert_eq!(ch.count(), 3);
        pool.for_each(ch.count(), &|i| {
            // SAFETY: task i alone holds chunk i.
            for x in unsafe { ch.get(i) } {
                *x = i + 1;
            }
        });
        assert_eq!(v, [1, 1, 1, 1, 2, 2, 2, 2, 3, 3]);
    }
}
