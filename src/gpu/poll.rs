//! Driving the device. On native targets a thread per engine polls the device while work is
//! pending, so buffer mappings and "work done" callbacks complete without the caller blocking,
//! and a future awaiting them is an ordinary `Send` future: waiting on one adapter never blocks
//! another. In the browser the event loop completes them; there is nothing to do.

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::{LostSignal, Serial};
    use crate::error::Error;
    use std::cell::Cell;
    use std::sync::{Arc, Condvar, Mutex};

    thread_local! {
        /// The poller (its address) of the device this thread drives in [`drive`], 0 for none:
        /// that device's submissions on this thread need no poll thread.
        static DRIVING: Cell<usize> = const { Cell::new(0) };
        /// Whether this thread, in [`drive`], submitted work since its last wait for the device.
        static UNWAITED: Cell<bool> = const { Cell::new(false) };
    }

    /// Runs `fut` to completion on the calling thread, which waits for the device's work itself
    /// (`device.poll`) instead of sleeping until the poll thread, woken by the same completion,
    /// wakes it: one thread hand-off less per blocking call. The submissions made meanwhile on
    /// this thread to this device do not wake the poll thread ([`Poller::kick`]). Every poll of
    /// the device, here, on another driving thread or on the poll thread, holds the poller's poll
    /// lock, so one thread polls at a time (two polling at once stall for about 10 ms at a time on
    /// NVIDIA's Vulkan driver). A poll that times out (OpenGL's waits end after about 2 s) is
    /// made again; one that fails (a lost device, whose callbacks wgpu does not run, and on
    /// which wgpu's `poll` panics) ends the wait with the error, and raises the poller's
    /// [`LostSignal`], which ends the other waits on the device's work.
    pub(crate) fn drive<T, F>(poller: &Poller, fut: F) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<T, Error>>,
    {
        use std::task::{Context, Poll, Wake, Waker};
        let id = poller as *const Poller as usize;
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
            fn wake_by_ref(self: &Arc<Self>) {
                self.0.unpark();
            }
        }
        // However this returns (a panic included): work the future submitted but did not wait
        // for (a result left on the device) goes to the poll thread, so that its callbacks
        // (scratch buffers back to the pool) still run, and the state of an outer drive (of
        // another device, or a drive within a drive) comes back.
        struct Driving<'a> {
            outer: usize,
            outer_unwaited: bool,
            poller: &'a Poller,
        }
        impl Drop for Driving<'_> {
            fn drop(&mut self) {
                if UNWAITED.with(|u| u.replace(self.outer_unwaited)) {
                    self.poller.wake();
                }
                DRIVING.with(|d| d.set(self.outer));
            }
        }
        let _restore = Driving {
            outer: DRIVING.with(|d| d.replace(id)),
            outer_unwaited: UNWAITED.with(|u| u.replace(false)),
            poller,
        };
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut fut = std::pin::pin!(fut);
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            UNWAITED.with(|u| u.set(false));
            let polled = poller.poll();
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            match polled {
                Polled::Done => {}
                // (OpenGL waits about 2 s at most, whatever wait_indefinitely says): wait again
                Polled::TimedOut => continue,
                Polled::Failed(why) => return Err(Error::Gpu(format!("waiting for the device failed: {why}"))),
            }
            // the future submitted more work: wait for that at once
            if UNWAITED.with(|u| u.get()) {
                continue;
            }
            // pending on what the device's work did not complete (another thread's work, a
            // callback the poll thread runs): until woken, polling again now and then
            std::thread::park_timeout(std::time::Duration::from_millis(10));
        }
    }

    /// What one wait for the device's work came to.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) enum Polled {
        /// Everything submitted before the wait has run.
        Done,
        /// The wait ended first: OpenGL's waits end after about 2 s (wgpu caps them at
        /// `i32::MAX` ns, `wait_indefinitely` included). Wait again.
        TimedOut,
        /// The device is lost (or the wait failed otherwise); its callbacks will not run.
        Failed(String),
    }

    /// How a poller waits for the device's work (a stand-in in the tests).
    type PollFn = Box<dyn Fn() -> Polled + Send + Sync>;

    /// Waits for everything submitted to `device` so far. wgpu's `poll` panics on a lost
    /// device rather than returning its error: the panic is caught and becomes the failure.
    fn poll_device(device: &wgpu::Device, timeout: Option<std::time::Duration>) -> Polled {
        polled_from(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            device.poll(wgpu::PollType::Wait { submission_index: None, timeout })
        })))
    }

    /// How long one wait on an OpenGL device lasts before it is made again: a wait holds the GL
    /// context and the engine's [`Serial`] lock, so other threads' allocations and submissions
    /// get in between short waits rather than after one of up to 2 s (wgpu's longest on GL).
    const GL_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

    /// What a wait (`device.poll` under `catch_unwind`) came to. Only wgpu's own panic on a
    /// failed poll ("Error in Device::poll: ...") is a failure: the poll also runs the callbacks
    /// of everyone sharing the device, and another panic (a caller's callback) goes on unwinding
    /// as it would without the catch.
    fn polled_from(polled: std::thread::Result<Result<wgpu::PollStatus, wgpu::PollError>>) -> Polled {
        match polled {
            Ok(Ok(_)) => Polled::Done,
            Ok(Err(wgpu::PollError::Timeout)) => Polled::TimedOut,
            Ok(Err(e)) => Polled::Failed(e.to_string()),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                match msg {
                    Some(m) if m.starts_with("Error in Device::poll") => Polled::Failed(m),
                    _ => std::panic::resume_unwind(panic),
                }
            }
        }
    }

    #[derive(Default)]
    struct State {
        pending: u64,
        stop: bool,
    }

    pub(crate) struct Poller {
        shared: Arc<(Mutex<State>, Condvar)>,
        thread: Option<std::thread::JoinHandle<()>>,
        /// One wait for the device's work, holding the poll lock: every poll (the poll thread's,
        /// [`drive`]'s) goes through it, so one thread polls at a time; a failure raises `lost`.
        poll_fn: Arc<PollFn>,
        lost: Arc<LostSignal>,
        serial: Arc<Serial>,
    }

    impl Poller {
        /// `gl`: the device is OpenGL's, whose waits are short ([`GL_WAIT`]) and made again, each
        /// holding the device's [`Serial`] lock.
        pub fn new(device: wgpu::Device, gl: bool) -> Poller {
            let timeout = gl.then_some(GL_WAIT);
            Poller::with(Box::new(move || poll_device(&device, timeout)), Serial::new(gl))
        }

        /// The device's [`Serial`] lock.
        pub(crate) fn serial(&self) -> &Arc<Serial> {
            &self.serial
        }

        /// A poller whose waits are `poll`, each made holding `serial` and then the poll lock (the
        /// order everywhere: a submission holds `serial` and may poll inline, [`Poller::wake`]).
        fn with(poll: PollFn, serial: Serial) -> Poller {
            let lost: Arc<LostSignal> = Arc::default();
            let serial = Arc::new(serial);
            let held = serial.clone();
            let poll_lock = Mutex::new(());
            let raise = lost.clone();
            let poll_fn: Arc<PollFn> = Arc::new(Box::new(move || {
                let polled = {
                    let _device = held.hold();
                    let _one = poll_lock.lock().unwrap_or_else(|e| e.into_inner());
                    poll()
                };
                match &polled {
                    Polled::Failed(why) => raise.raise(format!("the device was lost: {why}")),
                    // (the GL context free a moment for other threads before the next wait)
                    Polled::TimedOut => std::thread::yield_now(),
                    Polled::Done => {}
                }
                polled
            }));
            let shared: Arc<(Mutex<State>, Condvar)> = Arc::default();
            let sh = shared.clone();
            let thread_poll = poll_fn.clone();
            let thread = std::thread::Builder::new()
                .name("segloss-poll".into())
                .spawn(move || loop {
                    {
                        let (lock, cv) = &*sh;
                        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
                        while st.pending == 0 && !st.stop {
                            st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
                        }
                        if st.stop {
                            return;
                        }
                        st.pending = 0;
                    }
                    // waits for every submission made before this call; a later one set
                    // `pending` again and is waited for on the next round. A wait that timed
                    // out is made again. After a failure (raised on `lost`, which ends the
                    // waits on the device's work) the thread serves until dropped. A panic of
                    // someone else's callback run by the poll (its message is out) does not
                    // end the thread: the wait is made again, a moment later, since the
                    // callbacks after the panicking one did not run
                    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| thread_poll()));
                    if polled.is_err() {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    if polled.as_ref().map_or(true, |p| *p == Polled::TimedOut) {
                        sh.0.lock().unwrap_or_else(|e| e.into_inner()).pending += 1;
                    }
                })
                .ok();
            Poller { shared, thread, poll_fn, lost, serial }
        }

        /// Waits for everything submitted to the device so far, holding the poll lock.
        pub(crate) fn poll(&self) -> Polled {
            (self.poll_fn)()
        }

        /// Raised when a wait for the device failed (or the device reported its loss).
        pub(crate) fn lost(&self) -> &Arc<LostSignal> {
            &self.lost
        }

        /// Work was submitted: poll until it is done (unless this thread drives the device
        /// itself, [`super::drive`]).
        pub fn kick(&self) {
            if DRIVING.with(|d| d.get()) == self as *const Poller as usize {
                UNWAITED.with(|u| u.set(true));
                return;
            }
            self.wake();
        }

        /// Has the poll thread poll until the work submitted so far is done.
        pub fn wake(&self) {
            if self.thread.is_none() {
                // no thread could be started: poll inline (again while the wait times out)
                while self.poll() == Polled::TimedOut {}
                return;
            }
            let (lock, cv) = &*self.shared;
            lock.lock().unwrap_or_else(|e| e.into_inner()).pending += 1;
            cv.notify_one();
        }
    }

    impl Drop for Poller {
        fn drop(&mut self) {
            let (lock, cv) = &*self.shared;
            lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
            cv.notify_one();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::sync::atomic::{AtomicUsize, Ordering};

        /// A poller whose waits return `script`'s results in turn (then `Done`), counting them.
        fn scripted(script: Vec<Polled>) -> (Poller, Arc<AtomicUsize>) {
            let calls = Arc::new(AtomicUsize::new(0));
            let c = calls.clone();
            let poller = Poller::with(
                Box::new(move || {
                    let i = c.fetch_add(1, Ordering::SeqCst);
                    script.get(i).cloned().unwrap_or(Polled::Done)
                }),
                Serial::new(true),
            );
            (poller, calls)
        }

        /// A future that is ready once `calls` has reached `n`, waking itself meanwhile.
        fn ready_after(calls: Arc<AtomicUsize>, n: usize) -> impl std::future::Future<Output = Result<u8, Error>> {
            std::future::poll_fn(move |cx| {
                if calls.load(Ordering::SeqCst) >= n {
                    return std::task::Poll::Ready(Ok(7));
                }
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            })
        }

        /// (review) OpenGL's waits end after about 2 s with `PollError::Timeout`: a blocking
        /// call whose submission ran longer failed with "timed out"; it waits again now.
        #[test]
        fn a_wait_that_times_out_is_made_again() {
            let (poller, calls) = scripted(vec![Polled::TimedOut, Polled::TimedOut]);
            let got = drive(&poller, ready_after(calls.clone(), 3));
            assert_eq!(got.ok(), Some(7));
            assert!(poller.lost().reason().is_none());
        }

        /// A failed wait (a lost device) ends the blocking call with the error and raises the
        /// signal that ends every other wait on the device's work.
        #[test]
        fn a_failed_wait_ends_the_call_and_raises_the_loss() {
            let (poller, calls) = scripted(vec![Polled::Failed("gone".into())]);
            let got = drive(&poller, ready_after(calls, 5));
            assert!(matches!(&got, Err(Error::Gpu(m)) if m.contains("gone")), "{:?}", got.err());
            assert!(poller.lost().reason().is_some_and(|r| r.contains("gone")));
        }

        /// (review) The poll thread took a timed-out wait for done: an awaited evaluation whose
        /// submission outlasted OpenGL's wait hung until some other submission woke the thread.
        #[test]
        fn the_poll_thread_waits_again_after_a_timeout() {
            let (poller, calls) = scripted(vec![Polled::TimedOut, Polled::TimedOut]);
            poller.wake();
            let t = std::time::Instant::now();
            while calls.load(Ordering::SeqCst) < 3 {
                assert!(t.elapsed().as_secs() < 30, "the thread stopped after {} waits", calls.load(Ordering::SeqCst));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }

        /// wgpu's `poll` panics on a lost device: the panic is caught and becomes the failure
        /// (the poll thread died of it, and every later async wait hung).
        #[test]
        fn a_panicking_poll_is_a_failure() {
            let caught = std::panic::catch_unwind(|| -> Result<wgpu::PollStatus, wgpu::PollError> {
                panic!("Error in Device::poll: Parent device is lost")
            });
            assert!(matches!(polled_from(caught), Polled::Failed(m) if m.contains("lost")));
            assert_eq!(polled_from(Ok(Err(wgpu::PollError::Timeout))), Polled::TimedOut);
        }

        /// (review) The poll runs the callbacks of everyone on the device: a caller's callback
        /// that panics is not a lost device (which would fail every later evaluation), and goes
        /// on unwinding.
        #[test]
        fn another_panic_in_the_poll_is_not_a_loss() {
            let caught = std::panic::catch_unwind(|| -> Result<wgpu::PollStatus, wgpu::PollError> {
                panic!("the caller's map_async callback failed")
            });
            let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| polled_from(caught)));
            let payload = again.expect_err("it unwinds on");
            assert_eq!(payload.downcast_ref::<&str>(), Some(&"the caller's map_async callback failed"));
        }

        /// (review) A panic in the poll that is not a lost device (someone else's callback, or
        /// wgpu's own on a GL context it could not lock) ended the poll thread's round for good:
        /// awaited work whose callbacks had not run waited for some other submission. The wait
        /// is made again.
        #[test]
        fn the_poll_thread_polls_again_after_a_panic() {
            let calls = Arc::new(AtomicUsize::new(0));
            let c = calls.clone();
            let poller = Poller::with(
                Box::new(move || {
                    if c.fetch_add(1, Ordering::SeqCst) == 0 {
                        std::panic::resume_unwind(Box::new("a callback failed"));
                    }
                    Polled::Done
                }),
                Serial::default(),
            );
            poller.wake();
            let t = std::time::Instant::now();
            while calls.load(Ordering::SeqCst) < 2 {
                assert!(t.elapsed().as_secs() < 30, "no wait after the panic");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert!(poller.lost().reason().is_none());
        }

        /// The OpenGL device lock: a thread holding it passes again (a submission's
        /// allocations, its inline poll), another waits for it, and none is taken elsewhere.
        #[test]
        fn the_device_lock_serializes_threads_and_lets_its_holder_pass() {
            let serial = Arc::new(Serial::new(true));
            let held = serial.hold().expect("the lock");
            assert!(serial.hold().is_none(), "its holder passes");
            let (tx, rx) = std::sync::mpsc::channel();
            let other = serial.clone();
            let t = std::thread::spawn(move || {
                let g = other.hold();
                tx.send(g.is_some()).ok();
            });
            assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "another thread waits");
            drop(held);
            assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(30)).ok(), Some(true));
            t.join().ok();
            assert!(serial.hold().is_some(), "free again, and this thread no longer counts as holding it");
            assert!(Serial::new(false).hold().is_none() && Serial::default().hold().is_none());
            // another engine's lock is its own, held or not beside this one
            let other = Serial::new(true);
            let a = serial.hold().expect("this engine's");
            let b = other.hold().expect("the other engine's, while this one's is held");
            assert!(other.hold().is_none() && serial.hold().is_none());
            drop(b);
            assert!(serial.hold().is_none(), "this one's still held");
            drop(a);
            assert!(serial.hold().is_some());
        }

        /// (review) Each guarded wait kept its waker until the device was lost, which on a
        /// healthy device is never: a training loop's blocking calls grew the list by one each,
        /// and every poll of a guard scanned it. A wait takes its waker out when it completes or
        /// is dropped.
        #[test]
        fn guarded_waits_leave_no_waker_behind() {
            let (poller, calls) = scripted(Vec::new());
            for n in 0..200 {
                let fut = poller.lost().clone().guard(ready_after(calls.clone(), n + 1));
                assert!(drive(&poller, async { fut.await? }).is_ok());
            }
            let pending = poller.lost().clone().guard(std::future::pending::<()>());
            let mut pending = Box::pin(pending);
            let waker = futures::task::noop_waker();
            assert!(
                std::future::Future::poll(pending.as_mut(), &mut std::task::Context::from_waker(&waker)).is_pending()
            );
            assert_eq!(poller.lost().waiting(), 1);
            drop(pending);
            assert_eq!(poller.lost().waiting(), 0);
        }

        /// A failure on the poll thread raises the loss, which ends a wait on a callback that
        /// will never run; the thread goes on serving.
        #[test]
        fn a_failure_on_the_poll_thread_ends_the_guarded_waits() {
            let (poller, calls) = scripted(vec![Polled::Failed("gone".into())]);
            let fut = poller.lost().clone().guard(std::future::pending::<()>());
            poller.wake();
            let got = futures::executor::block_on(fut);
            assert!(matches!(&got, Err(Error::Gpu(m)) if m.contains("gone")), "{got:?}");
            poller.wake();
            let t = std::time::Instant::now();
            while calls.load(Ordering::SeqCst) < 2 {
                assert!(t.elapsed().as_secs() < 30, "the poll thread stopped serving");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

/// One thread at a time on an OpenGL device (`None` elsewhere): wgpu makes each GL call wait at
/// most 6 s for the GL context and then panics, and llvmpipe's GL runs a submission's work inside
/// `Queue::submit`, holding the context; so a thread that made a buffer or submitted while another
/// thread's long submission ran panicked inside wgpu. The engine's waits, allocations,
/// submissions and readbacks hold this lock instead, which waits without a limit. A thread that
/// holds it already passes (allocations inside a submission's recording).
#[derive(Default)]
pub(crate) struct Serial {
    lock: Option<std::sync::Mutex<()>>,
}

thread_local! {
    /// The [`Serial`] locks (their addresses) this thread holds.
    static SERIAL_HELD: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A held [`Serial`] lock.
pub(crate) struct SerialGuard<'a> {
    _guard: std::sync::MutexGuard<'a, ()>,
    me: usize,
}

impl Drop for SerialGuard<'_> {
    fn drop(&mut self) {
        SERIAL_HELD.with(|h| {
            let mut held = h.borrow_mut();
            if let Some(i) = held.iter().rposition(|&a| a == self.me) {
                held.remove(i);
            }
        });
    }
}

impl Serial {
    /// The lock of an OpenGL device (`gl`), none elsewhere (in the browser, whose one thread
    /// needs none, there is no lock).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn new(gl: bool) -> Serial {
        Serial { lock: gl.then(Default::default) }
    }

    /// Holds the lock until the guard drops (`None`: no lock, or this thread holds it already).
    pub fn hold(&self) -> Option<SerialGuard<'_>> {
        let lock = self.lock.as_ref()?;
        let me = lock as *const std::sync::Mutex<()> as usize;
        if SERIAL_HELD.with(|h| h.borrow().contains(&me)) {
            return None;
        }
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        SERIAL_HELD.with(|h| h.borrow_mut().push(me));
        Some(SerialGuard { _guard: guard, me })
    }
}

/// A buffer (or buffers: `T`) dropped under its device's [`Serial`] lock (destroying a buffer
/// is a GL call), on every path out of the scope that holds it, an error's too.
pub(crate) struct Held<T = wgpu::Buffer> {
    buf: Option<T>,
    serial: std::sync::Arc<Serial>,
}

impl<T> Held<T> {
    pub fn new(buf: T, serial: std::sync::Arc<Serial>) -> Held<T> {
        Held { buf: Some(buf), serial }
    }

    /// The buffers, to be dropped (or pooled) by the caller, under the lock.
    pub fn into_inner(mut self) -> T {
        self.buf.take().unwrap_or_else(|| unreachable!("a Held buffer is there until its drop"))
    }
}

impl<T> std::ops::Deref for Held<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // (Some until dropped)
        self.buf.as_ref().unwrap_or_else(|| unreachable!("a Held buffer is there until its drop"))
    }
}

impl<T> std::ops::DerefMut for Held<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.buf.as_mut().unwrap_or_else(|| unreachable!("a Held buffer is there until its drop"))
    }
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let _one = self.serial.hold();
            drop(buf);
        }
    }
}

/// Raised once the device is lost (a failed wait, or the device's lost callback): every wait
/// on the device's work guarded by it ([`LostSignal::guard`]) then ends with the reason, since
/// wgpu runs no more callbacks on a lost device.
#[derive(Default)]
pub(crate) struct LostSignal {
    state: std::sync::Mutex<Lost>,
}

/// The reason, once raised, and the wakers of the guarded waits pending now (each by its slot:
/// a wait takes its waker out when it completes or is dropped).
#[derive(Default)]
struct Lost {
    why: Option<String>,
    waiting: std::collections::HashMap<u64, std::task::Waker>,
    next: u64,
}

impl LostSignal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Lost> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `why` (the first reason stays) and wakes every guarded wait.
    pub fn raise(&self, why: String) {
        let wakers = {
            let mut st = self.lock();
            st.why.get_or_insert(why);
            std::mem::take(&mut st.waiting)
        };
        for w in wakers.into_values() {
            w.wake();
        }
    }

    /// Why the device was lost, once it was.
    pub fn reason(&self) -> Option<String> {
        self.lock().why.clone()
    }

    /// `fut`, or an error once the signal is raised before `fut` completes.
    pub fn guard<F: std::future::Future>(self: std::sync::Arc<Self>, fut: F) -> Guarded<F> {
        Guarded { fut: Box::pin(fut), signal: self, slot: None }
    }

    /// How many guarded waits are pending (the tests: none is left behind).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

/// A future guarded by a [`LostSignal`] ([`LostSignal::guard`]).
pub(crate) struct Guarded<F> {
    fut: std::pin::Pin<Box<F>>,
    signal: std::sync::Arc<LostSignal>,
    slot: Option<u64>,
}

impl<F> Guarded<F> {
    fn leave(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.signal.lock().waiting.remove(&slot);
        }
    }
}

impl<F: std::future::Future> std::future::Future for Guarded<F> {
    type Output = Result<F::Output, crate::error::Error>;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        if let std::task::Poll::Ready(v) = self.fut.as_mut().poll(cx) {
            self.leave();
            return std::task::Poll::Ready(Ok(v));
        }
        let this = &mut *self;
        let mut st = this.signal.lock();
        if let Some(why) = st.why.clone() {
            if let Some(slot) = this.slot.take() {
                st.waiting.remove(&slot);
            }
            return std::task::Poll::Ready(Err(crate::error::Error::Gpu(why)));
        }
        let slot = *this.slot.get_or_insert_with(|| {
            st.next += 1;
            st.next
        });
        st.waiting.insert(slot, cx.waker().clone());
        std::task::Poll::Pending
    }
}

impl<F> Drop for Guarded<F> {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use native::{drive, Poller};

/// In the browser the event loop completes the device's work: the poller only holds the
/// [`LostSignal`], which the device's lost callback raises.
#[cfg(target_arch = "wasm32")]
pub(crate) struct Poller {
    lost: std::sync::Arc<LostSignal>,
    serial: std::sync::Arc<Serial>,
}

#[cfg(target_arch = "wasm32")]
impl Poller {
    pub fn new(_device: wgpu::Device, _gl: bool) -> Poller {
        Poller { lost: Default::default(), serial: Default::default() }
    }
    pub(crate) fn serial(&self) -> &std::sync::Arc<Serial> {
        &self.serial
    }
    pub fn kick(&self) {}
    pub(crate) fn lost(&self) -> &std::sync::Arc<LostSignal> {
        &self.lost
    }
}
