//! Driving the device. On native targets a thread per engine polls the device while work is
//! pending, so buffer mappings and "work done" callbacks complete without the caller blocking,
//! and a future awaiting them is an ordinary `Send` future: waiting on one adapter never blocks
//! another. In the browser the event loop completes them; there is nothing to do.

#[cfg(not(target_arch = "wasm32"))]
mod native {
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
    /// NVIDIA's Vulkan driver). A poll that fails (a lost device, whose callbacks wgpu does not
    /// run) ends the wait with the error.
    pub(crate) fn drive<T, F>(device: &wgpu::Device, poller: &Poller, fut: F) -> Result<T, Error>
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
            device: &'a wgpu::Device,
        }
        impl Drop for Driving<'_> {
            fn drop(&mut self) {
                if UNWAITED.with(|u| u.replace(self.outer_unwaited)) {
                    self.poller.wake(self.device);
                }
                DRIVING.with(|d| d.set(self.outer));
            }
        }
        let _restore = Driving {
            outer: DRIVING.with(|d| d.replace(id)),
            outer_unwaited: UNWAITED.with(|u| u.replace(false)),
            poller,
            device,
        };
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut fut = std::pin::pin!(fut);
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            UNWAITED.with(|u| u.set(false));
            let polled = poller.poll(device);
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            if let Err(e) = polled {
                return Err(Error::Gpu(format!("waiting for the device failed: {e}")));
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

    #[derive(Default)]
    struct State {
        pending: u64,
        stop: bool,
    }

    pub(crate) struct Poller {
        shared: Arc<(Mutex<State>, Condvar)>,
        thread: Option<std::thread::JoinHandle<()>>,
        /// Held by every poll of the device (the poll thread's, [`drive`]'s): one at a time.
        poll_lock: Arc<Mutex<()>>,
    }

    impl Poller {
        pub fn new(device: wgpu::Device) -> Poller {
            let shared: Arc<(Mutex<State>, Condvar)> = Arc::default();
            let sh = shared.clone();
            let poll_lock: Arc<Mutex<()>> = Arc::default();
            let lock_thread = poll_lock.clone();
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
                    // `pending` again and is waited for on the next round
                    let polled = {
                        let _one = lock_thread.lock().unwrap_or_else(|e| e.into_inner());
                        device.poll(wgpu::PollType::wait_indefinitely())
                    };
                    if polled.is_err() {
                        // device lost: a driven wait reports it (drive); keep serving until dropped
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                })
                .ok();
            Poller { shared, thread, poll_lock }
        }

        /// Waits for everything submitted to `device` so far, holding the poll lock.
        fn poll(&self, device: &wgpu::Device) -> Result<(), wgpu::PollError> {
            let _one = self.poll_lock.lock().unwrap_or_else(|e| e.into_inner());
            device.poll(wgpu::PollType::wait_indefinitely()).map(|_| ())
        }

        /// Work was submitted: poll until it is done (unless this thread drives the device
        /// itself, [`super::drive`]).
        pub fn kick(&self, device: &wgpu::Device) {
            if DRIVING.with(|d| d.get()) == self as *const Poller as usize {
                UNWAITED.with(|u| u.set(true));
                return;
            }
            self.wake(device);
        }

        /// Has the poll thread poll until the work submitted so far is done.
        pub fn wake(&self, device: &wgpu::Device) {
            if self.thread.is_none() {
                // no thread could be started: poll inline
                let _ = self.poll(device);
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
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use native::{drive, Poller};

#[cfg(target_arch = "wasm32")]
pub(crate) struct Poller;

#[cfg(target_arch = "wasm32")]
impl Poller {
    pub fn new(_device: wgpu::Device) -> Poller {
        Poller
    }
    pub fn kick(&self, _device: &wgpu::Device) {}
}
