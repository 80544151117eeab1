//! Background work for the app: every job runs on a named worker thread
//! and talks to the UI over a bounded channel, with progress and cancel.
//! The UI polls jobs each frame with `try_recv` and never waits on them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// Messages a job sends: progress, then one final result.
pub enum Msg<T> {
    /// Work done so far, in `[0, 1]`, with a short description.
    Progress(f32, String),
    /// The result; the job ends after it.
    Done(T),
}

/// What a worker gets: a way to report and a way to learn it was cancelled.
pub struct Ctx<T> {
    tx: SyncSender<Msg<T>>,
    cancel: Arc<AtomicBool>,
    repaint: Option<egui::Context>,
}

impl<T> Ctx<T> {
    /// Reports progress; dropped (not queued) when the UI is behind.
    pub fn progress(&self, fraction: f32, what: impl Into<String>) {
        match self.tx.try_send(Msg::Progress(fraction, what.into())) {
            Ok(()) | Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
        }
        if let Some(c) = &self.repaint {
            c.request_repaint();
        }
    }

    /// Whether the user cancelled the job.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// The cancel flag itself, for code that polls one (the engine).
    pub fn cancel_flag(&self) -> &AtomicBool {
        &self.cancel
    }
}

/// A running job.
pub struct Job<T> {
    /// What the job does, for the status line.
    pub title: String,
    rx: Receiver<Msg<T>>,
    cancel: Arc<AtomicBool>,
    /// Last progress reported.
    pub progress: (f32, String),
}

impl<T: Send + 'static> Job<T> {
    /// Starts `work` on a worker thread named `sfam-<name>`. Returns an
    /// error message when the thread cannot be started.
    pub fn spawn(
        name: &str,
        title: impl Into<String>,
        repaint: Option<egui::Context>,
        work: impl FnOnce(&Ctx<T>) -> T + Send + 'static,
    ) -> Result<Self, String> {
        // Progress is advisory; the final message needs one free slot, which
        // the worker waits for (the UI drains every frame).
        let (tx, rx) = sync_channel(8);
        let cancel = Arc::new(AtomicBool::new(false));
        let ctx = Ctx {
            tx,
            cancel: cancel.clone(),
            repaint,
        };
        std::thread::Builder::new()
            .name(format!("sfam-{name}"))
            .spawn(move || {
                let result = work(&ctx);
                // The UI may be gone (app closed): nothing to do then.
                let _ = ctx.tx.send(Msg::Done(result));
                if let Some(c) = &ctx.repaint {
                    c.request_repaint();
                }
            })
            .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        Ok(Self {
            title: title.into(),
            rx,
            cancel,
            progress: (0.0, String::new()),
        })
    }

    /// Draws the job's row — spinner, a progress bar with its title and
    /// status (`reserve` points left beside it), a `cancel` button — and
    /// says whether that button was clicked.
    pub fn progress_row(&self, ui: &mut egui::Ui, cancel: &str, reserve: f32) -> bool {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.add(
                egui::ProgressBar::new(self.progress.0)
                    .desired_width((ui.available_width() - reserve).max(120.0))
                    .text(format!("{}: {}", self.title, self.progress.1)),
            );
            ui.button(cancel).clicked()
        })
        .inner
    }

    /// Asks the worker to stop at its next check.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Drains messages without blocking; the result once it has arrived.
    /// `Some(Err(()))` means the worker died without a result.
    pub fn poll(&mut self) -> Option<Result<T, ()>> {
        loop {
            match self.rx.try_recv() {
                Ok(Msg::Progress(f, s)) => self.progress = (f, s),
                Ok(Msg::Done(t)) => return Some(Ok(t)),
                Err(std::sync::mpsc::TryRecvError::Empty) => return None,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Some(Err(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_reports_progress_and_result_and_can_be_cancelled() {
        let mut job = Job::spawn("test", "counting", None, |ctx| {
            ctx.progress(0.5, "half");
            let mut n = 0u64;
            while !ctx.cancelled() && n < 50_000_000 {
                n += 1;
                if n.is_multiple_of(1000) {
                    std::thread::yield_now();
                }
            }
            n
        })
        .unwrap();
        job.cancel();
        let result = loop {
            if let Some(r) = job.poll() {
                break r;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert!(result.unwrap() < 50_000_000, "cancel was ignored");
    }
}
