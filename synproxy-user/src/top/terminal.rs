//! The terminal's state: raw mode and the alternate screen on entry, both
//! undone exactly once on the way out, whichever way that is (q, Ctrl-C, a
//! signal, the end of `main`, or a panic: the hook restores first).

use ratatui::crossterm::{cursor, execute, terminal};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the view owns the terminal (raw mode, alternate screen).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Refuses to start without a terminal to draw on and read keys from.
pub fn check_tty() -> Result<(), String> {
    if !std::io::stdout().is_terminal() {
        return Err("stdout is not a terminal (top is a full-screen view; run it in a terminal, or use synproxy-agent without `top` for line protocol)".into());
    }
    if !std::io::stdin().is_terminal() {
        return Err("stdin is not a terminal (top reads its keys from it)".into());
    }
    Ok(())
}

/// Raw mode, alternate screen, hidden cursor. On error nothing is left changed.
pub fn enter() -> std::io::Result<()> {
    install_panic_hook();
    terminal::enable_raw_mode()?;
    ACTIVE.store(true, Ordering::SeqCst);
    if let Err(e) = execute!(
        std::io::stdout(),
        terminal::EnterAlternateScreen,
        cursor::Hide
    ) {
        restore();
        return Err(e);
    }
    Ok(())
}

pub fn is_active() -> bool {
    ACTIVE.load(Ordering::SeqCst)
}

/// Leaves the alternate screen, shows the cursor and puts back the terminal
/// modes saved by [`enter`]. Idempotent; errors are ignored (the terminal
/// may be gone).
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = execute!(
            std::io::stdout(),
            terminal::LeaveAlternateScreen,
            cursor::Show
        );
        let _ = terminal::disable_raw_mode();
    }
}

fn install_panic_hook() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // The message must land on the normal screen, readable.
        restore();
        previous(info);
    }));
}
