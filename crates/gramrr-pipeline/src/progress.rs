//! Progress on stderr: indicatif bars for long stages (drawn only on a terminal) and one line
//! per stage start and finish, which is what a log file keeps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gramrr_train::{RunInfo, StepMetrics, TrainObserver};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences bars and stage lines (tests, library callers that report themselves).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

pub fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A line on stderr, unless quiet.
pub fn note(msg: impl AsRef<str>) {
    if !is_quiet() {
        eprintln!("[gramrr] {}", msg.as_ref());
    }
}

/// A bar of `len` steps; hidden when quiet or when stderr is not a terminal.
pub fn bar(len: u64, msg: &str) -> ProgressBar {
    let target = if is_quiet() { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let pb = ProgressBar::with_draw_target(Some(len), target);
    pb.set_style(
        ProgressStyle::with_template("{msg:>22} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(500));
    pb
}

/// Shows training steps and the loss on a bar.
pub struct TrainBar {
    pub label: String,
    pb: Option<ProgressBar>,
    last_loss: f64,
}

impl TrainBar {
    pub fn new(label: &str) -> Self {
        Self { label: label.to_string(), pb: None, last_loss: f64::NAN }
    }
    pub fn last_loss(&self) -> f64 {
        self.last_loss
    }
}

impl TrainObserver for TrainBar {
    fn on_start(&mut self, info: &RunInfo) {
        let pb = bar(info.total_steps as u64, &self.label);
        pb.set_position(info.start_step as u64);
        self.pb = Some(pb);
    }
    fn on_step(&mut self, m: &StepMetrics) {
        self.last_loss = m.loss;
        if let Some(pb) = &self.pb {
            pb.set_position(m.step as u64);
            pb.set_message(format!("{} loss {:.3}", self.label, m.loss));
        }
    }
    fn on_event(&mut self, message: &str) {
        if let Some(pb) = &self.pb {
            pb.println(message);
        }
    }
}

impl Drop for TrainBar {
    fn drop(&mut self) {
        if let Some(pb) = self.pb.take() {
            pb.finish_and_clear();
        }
    }
}
