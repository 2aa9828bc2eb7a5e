//! Driving the device. On native targets a thread per engine polls the device while work is
//! pending, so buffer mappings and "work done" callbacks complete without the caller blocking,
//! and a future awaiting them is an ordinary `Send` future: waiting on one adapter never blocks
//! another. In the browser the event loop completes them; there is nothing to do.

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::sync::{Arc, Condvar, Mutex};

    #[derive(Default)]
    struct State {
        pending: u64,
        stop: bool,
    }

    pub(crate) struct Poller {
        shared: Arc<(Mutex<State>, Condvar)>,
        thread: Option<std::thread::JoinHandle<()>>,
        /// The last error of a poll (a lost device), for waits that would otherwise never end.
        failed: Arc<Mutex<Option<String>>>,
    }

    impl Poller {
        pub fn new(device: wgpu::Device) -> Poller {
            let shared: Arc<(Mutex<State>, Condvar)> = Arc::default();
            let sh = shared.clone();
            let failed: Arc<Mutex<Option<String>>> = Arc::default();
            let fail = failed.clone();
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
                    if let Err(e) = device.poll(wgpu::PollType::wait_indefinitely()) {
                        // device lost: callbacks fail with the loss; keep serving until dropped
                        if let Ok(mut f) = fail.lock() {
                            *f = Some(e.to_string());
                        }
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                })
                .ok();
            Poller { shared, thread, failed }
        }

        /// The error of the last poll that failed, if one did.
        pub fn failure(&self) -> Option<String> {
            self.failed.lock().ok().and_then(|f| f.clone())
        }

        /// Work was submitted: poll until it is done.
        pub fn kick(&self, device: &wgpu::Device) {
            if self.thread.is_none() {
                // no thread could be started: poll inline
                let _ = device.poll(wgpu::PollType::wait_indefinitely());
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
pub(crate) use native::Poller;

#[cfg(target_arch = "wasm32")]
pub(crate) struct Poller;

#[cfg(target_arch = "wasm32")]
impl Poller {
    pub fn new(_device: wgpu::Device) -> Poller {
        Poller
    }
    pub fn kick(&self, _device: &wgpu::Device) {}
}
