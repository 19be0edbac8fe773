//! Panics inside a run are findings: openraft asserts its own invariants (a follower's log
//! going backwards, for one) by panicking inside its tasks, and tokio swallows a panicking task,
//! so without this the run would only look stuck.
//!
//! What it is: a process-wide panic hook, installed once, that on a thread inside `collect`
//! records each panic's message and location (at most `PANICS_KEPT_MAX`) instead of printing it;
//! on any other thread it defers to the hook that was there before. Each seed runs on its own
//! thread's current-thread runtime, so a thread-local collector sees exactly that seed's panics.
//!
//! What it is not: a way to recover. A panicking task is gone; the run goes on without it.

use std::cell::RefCell;
use std::panic::PanicHookInfo;
use std::sync::Once;

/// Panic messages kept per run; later ones are counted.
pub const PANICS_KEPT_MAX: usize = 8;

#[derive(Default)]
struct Caught {
    messages: Vec<String>,
    total: u64,
}

thread_local! {
    static CAUGHT: RefCell<Option<Caught>> = const { RefCell::new(None) };
}

static INSTALL: Once = Once::new();

fn message(info: &PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a non-text panic payload)".to_string());
    match info.location() {
        Some(l) => format!("{text} (at {}:{})", l.file(), l.line()),
        None => text,
    }
}

fn install() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let kept = CAUGHT
                .try_with(|c| match c.try_borrow_mut() {
                    Ok(mut slot) => match slot.as_mut() {
                        Some(caught) => {
                            caught.total += 1;
                            if caught.messages.len() < PANICS_KEPT_MAX {
                                caught.messages.push(message(info));
                            }
                            true
                        }
                        None => false,
                    },
                    Err(_) => false,
                })
                .unwrap_or(false);
            if !kept {
                previous(info);
            }
        }));
    });
}

/// Clears the slot when `collect` ends, by unwinding too.
struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        let _ = CAUGHT.try_with(|c| c.replace(None));
    }
}

/// Runs `f` with this thread's panics collected (for `take`); answers what `f` returned, or the
/// message of the panic that ended it.
pub fn collect<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install();
    CAUGHT.with(|c| c.replace(Some(Caught::default())));
    let _reset = Reset;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| {
        let caught = CAUGHT.with(|c| c.replace(None)).unwrap_or_default();
        caught.messages.last().cloned().unwrap_or_else(|| "a panic".to_string())
    })
}

/// The panics collected on this thread since `collect` started or the last `take`, as
/// sentences; empty outside `collect`.
pub fn take() -> Vec<String> {
    let caught = CAUGHT
        .try_with(|c| c.borrow_mut().as_mut().map(std::mem::take))
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut messages = caught.messages;
    let more = caught.total.saturating_sub(messages.len() as u64);
    if more > 0 {
        messages.push(format!("and {more} more panics"));
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_on_this_thread_are_collected_not_printed() {
        let value = collect(|| {
            let joined = std::panic::catch_unwind(|| panic!("inner {}", 7));
            assert!(joined.is_err());
            let caught = take();
            assert_eq!(caught.len(), 1);
            assert!(caught[0].starts_with("inner 7 (at "), "{}", caught[0]);
            assert!(take().is_empty());
            5
        });
        assert_eq!(value, Ok(5));
        let value = collect(|| -> u32 { panic!("outer") });
        assert!(value.unwrap_err().starts_with("outer (at "));
        assert!(take().is_empty(), "nothing is collected outside collect");
    }
}
