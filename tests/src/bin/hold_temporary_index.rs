//! The child process of the temporary-index crash test (`tests/crash.rs`): makes a temporary
//! index, records an upload in it, prints the index's folder and waits to be killed.

use std::io::Write;
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let index = fs_core::Index::temporary()?;
    index.record_open("store", "key", "upload")?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", index.path())?;
    out.flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}
