//! What a pull prints: progress bars and step lines on a terminal, only the final line otherwise,
//! nothing at all when quiet. Everything goes to stderr.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Ui {
    quiet: bool,
    tty: bool,
}

impl Ui {
    pub(crate) fn new(quiet: bool) -> Self {
        Ui {
            quiet,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn live(&self) -> bool {
        !self.quiet && self.tty
    }

    /// A byte-progress bar; hidden unless stderr is a terminal and not quiet.
    pub(crate) fn bar(&self, len: Option<u64>, label: &str) -> ProgressBar {
        if !self.live() {
            return ProgressBar::hidden();
        }
        let bar = match len {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
        };
        let template = if len.is_some() {
            "{msg:30!} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})"
        } else {
            "{msg:30!} [{elapsed_precise}] {spinner} {bytes} {bytes_per_sec}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// A step line (source tried, fallback taken); terminal only.
    pub(crate) fn step(&self, msg: &str) {
        if self.live() {
            eprintln!("{msg}");
        }
    }

    /// The one line a pull leaves in a log: printed unless quiet.
    pub(crate) fn done(&self, msg: &str) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }
}

pub(crate) fn human(n: u64) -> String {
    HumanBytes(n).to_string()
}
