//! The child process of the crash test: writes a deterministic byte stream to one file through
//! the recoverable writer on a local store, persisting periodically and printing
//! `PERSISTED <len>` after each persist returns (the acknowledgement the parent checks). On
//! start it resumes from the index's token for the key, if any, so every run continues the
//! same file, and prints `START <len>` before it writes. Its bytes depend on the offset and on
//! its GENERATION. With `--commit` it closes and commits at the end and prints
//! `COMMITTED <len>`.
//!
//! usage: crash_writer STORE_DIR INDEX_DIR CACHE_DIR KEY MAX_BYTES PERSIST_EVERY GENERATION
//! [--commit]

use std::io::Write;
use std::sync::Arc;

use fs_core::store::local::LocalStore;
use fs_core::token::Token;
use fs_core::{Index, RecoverableWriter, WriterConfig};
use rand::Rng;

#[path = "../crash.rs"]
#[allow(dead_code)] // the parent's checks: the child only writes
mod crash;
use crash::byte_at;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 8,
        "usage: crash_writer STORE INDEX CACHE KEY MAX_BYTES PERSIST_EVERY GENERATION [--commit]"
    );
    let (store_dir, index_dir, cache_dir, key) = (&args[1], &args[2], &args[3], &args[4]);
    let max_bytes: u64 = args[5].parse()?;
    let persist_every: u64 = args[6].parse()?;
    let generation: u64 = args[7].parse()?;
    let commit = args.get(8).is_some_and(|a| a == "--commit");

    let store = Arc::new(LocalStore::open(store_dir)?);
    let index = Index::open(index_dir)?;
    let config = WriterConfig {
        cache_parts: true,
        cache_dir: cache_dir.into(),
        part_size: 5 * 1024 * 1024,
        ..Default::default()
    };
    let writer = RecoverableWriter::new(store, index, config)?;
    let resume = writer
        .recover_all()
        .await?
        .into_iter()
        .find_map(|t| match t {
            Token::Resume(t) if t.key == *key => Some(t),
            _ => None,
        });
    let mut file = match resume {
        Some(token) => writer.recover(&token).await?,
        None => writer.open(key).await?,
    };
    let start = file.len();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "START {start}")?;
    stdout.flush()?;
    let mut since_persist = 0u64;
    let mut rng = rand::rng();
    while file.len() < start + max_bytes {
        let n = rng
            .random_range(1..=64 * 1024)
            .min(start + max_bytes - file.len());
        let offset = file.len();
        let chunk: Vec<u8> = (offset..offset + n)
            .map(|o| byte_at(o, generation))
            .collect();
        file.write(&chunk).await?;
        since_persist += n;
        if since_persist >= persist_every {
            let token = file.persist().await?;
            writeln!(stdout, "PERSISTED {}", token.len())?;
            stdout.flush()?;
            since_persist = 0;
        }
    }
    let token = file.persist().await?;
    writeln!(stdout, "PERSISTED {}", token.len())?;
    if commit {
        let outcome = file.close_for_commit().await?.commit().await?;
        writeln!(stdout, "COMMITTED {}", outcome.size)?;
    }
    stdout.flush()?;
    Ok(())
}
