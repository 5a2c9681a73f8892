//! What the user sees: error lines and exit codes, stdout, times, progress bars.

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::time::SystemTime;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// An error whose message was already printed (per object, by a command that goes on with the
/// others): only the exit code is left to set.
#[derive(Debug)]
pub struct Reported;

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("errors were reported")
    }
}

impl std::error::Error for Reported {}

/// A misuse found after argument parsing (exit code 2, like clap's usage errors).
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The run was stopped by a signal; what it started was cleaned up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (`kill`, `timeout`, systemd, container runtimes stopping the process).
    Terminate,
    /// SIGHUP (the terminal closed, an ssh session dropped).
    Hangup,
}

impl Interrupted {
    /// The shell's exit code for a process stopped by this signal: 128 + its number.
    fn exit_code(self) -> u8 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
            Self::Hangup => 129,
        }
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Interrupt => "interrupted",
            Self::Terminate => "terminated",
            Self::Hangup => "hung up",
        })
    }
}

impl std::error::Error for Interrupted {}

/// The error's chain joined with `: `, skipping causes whose text the message already shows
/// (many errors repeat their source's text).
pub fn chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Stdout was closed by its reader (`rivulet cat x | head`): the command stops, quietly.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Turns an error writing to stdout into [`StdoutClosed`] when the pipe is closed, so that it is
/// not reported; other errors name stdout.
pub fn stdout_error(err: io::Error) -> anyhow::Error {
    if err.kind() == io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(err).context("write to stdout")
    }
}

/// The exit code of a failed run and the line to print on stderr (`None`: print nothing).
pub fn exit_code_and_message(subject: &str, err: &anyhow::Error) -> (u8, Option<String>) {
    if err.downcast_ref::<Reported>().is_some() {
        return (1, None);
    }
    if err.downcast_ref::<StdoutClosed>().is_some() {
        return (0, None);
    }
    let code = if err.downcast_ref::<Usage>().is_some() {
        2
    } else if let Some(signal) = err.downcast_ref::<Interrupted>() {
        signal.exit_code()
    } else {
        1
    };
    (code, Some(format!("rivulet: {subject}: {}", chain(err))))
}

/// Prints one error line for one item of a command that goes on with the others.
pub fn report(subject: &str, err: &anyhow::Error) {
    eprintln!("rivulet: {subject}: {}", chain(err));
}

/// Buffered stdout that reports write errors (a closed pipe) instead of panicking like
/// `println!`.
pub struct Out {
    inner: io::BufWriter<io::Stdout>,
}

impl Out {
    pub fn new() -> Self {
        Self {
            inner: io::BufWriter::new(io::stdout()),
        }
    }

    pub fn line(&mut self, args: fmt::Arguments<'_>) -> anyhow::Result<()> {
        self.inner
            .write_fmt(args)
            .and_then(|()| self.inner.write_all(b"\n"))
            .map_err(stdout_error)
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.inner.flush().map_err(stdout_error)
    }
}

/// `2024-05-01 12:00:00` (UTC), or `-` padded to the same width when unknown.
pub fn list_time(time: Option<SystemTime>) -> String {
    match time {
        Some(t) => {
            let s = humantime::format_rfc3339_seconds(t).to_string();
            s.trim_end_matches('Z').replacen('T', " ", 1)
        }
        None => format!("{:<19}", "-"),
    }
}

/// RFC 3339 (`2024-05-01T12:00:00Z`), or `-`.
pub fn rfc3339(time: Option<SystemTime>) -> String {
    time.map_or_else(
        || "-".into(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    )
}

/// A byte progress bar on stderr when it is a terminal and not `--quiet`; hidden otherwise.
pub fn progress(enabled: bool, total: Option<u64>, message: &str) -> ProgressBar {
    if !enabled || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
            .with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("{msg} {spinner} {bytes} {binary_bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message(message.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use std::time::Duration;

    #[test]
    fn chains_join_with_colons_without_repeats() {
        let io = io::Error::new(io::ErrorKind::NotFound, "No such file");
        let err = anyhow::Error::new(io)
            .context("open /x: No such file")
            .context("upload");
        assert_eq!(chain(&err), "upload: open /x: No such file");
        let err: anyhow::Error = Err::<(), _>(io::Error::other("boom"))
            .context("read")
            .unwrap_err();
        assert_eq!(chain(&err), "read: boom");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            exit_code_and_message("rm x", &anyhow::Error::new(Reported)),
            (1, None)
        );
        let (code, msg) = exit_code_and_message("cp a b", &anyhow::Error::new(Usage("bad".into())));
        assert_eq!((code, msg.as_deref()), (2, Some("rivulet: cp a b: bad")));
        let (code, msg) = exit_code_and_message("cat k", &anyhow::anyhow!("no such object 'k'"));
        assert_eq!(
            (code, msg.as_deref()),
            (1, Some("rivulet: cat k: no such object 'k'"))
        );
        let pipe = stdout_error(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(exit_code_and_message("cat k", &pipe), (0, None));
        // A broken pipe elsewhere (a socket) is an error like any other.
        let socket =
            anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("upload part");
        assert_eq!(exit_code_and_message("cp a b", &socket).0, 1);
    }

    #[test]
    fn times() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(list_time(Some(t)), "2023-11-14 22:13:20");
        assert_eq!(list_time(None).len(), 19);
        assert_eq!(rfc3339(Some(t)), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(None), "-");
    }
}
