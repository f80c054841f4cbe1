//! What the commands print, and what happens when no one reads it. `println!` panics when stdout
//! is a pipe whose reader has gone (`patless config | head -1`: Rust ignores SIGPIPE, so the
//! write fails with `BrokenPipe`); [`outln!`] ends the process quietly instead, with status 0, as
//! the reader already has what it wanted. [`errln!`] writes to stderr and ignores a closed one.

use std::fmt;
use std::io::{self, Write as _};

/// Prints a line on stdout, like `println!`, but a closed stdout ends the process quietly.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Prints on stdout, like `print!`, but a closed stdout ends the process quietly.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out::stdout(format_args!($($arg)*))
    };
}

/// Prints a line on stderr, like `eprintln!`, without panicking when stderr is closed.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::out::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {errln, out, outln};

/// Writes `args` to stdout and flushes, so a reader that has gone is noticed here.
pub(crate) fn stdout(args: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        unwritable(&e)
    }
}

/// Writes `args` to stderr; there is nowhere left to say that this failed.
pub(crate) fn stderr(args: fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// Ends the process after stdout failed: quietly with status 0 when the reader closed the pipe
/// (`| head`), else with status 1 and the reason (a full disk).
pub(crate) fn unwritable(e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    stderr(format_args!("patless: cannot write to stdout: {e}\n"));
    std::process::exit(1)
}
