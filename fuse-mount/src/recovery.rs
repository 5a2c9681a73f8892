//! Finishing the files a previous mount left open: at mount start, every upload the index
//! knows on this store is committed at its last persisted length, so what was fsynced before a
//! crash (SIGKILL, power loss) is in the store as a whole object.

use fs_core::{RecoverableWriter, Token, WriterError};

/// One file committed by [`recover_open_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub key: String,
    pub size: u64,
}

/// Commits every file the index lists with a token. Files that never persisted have no token:
/// nothing was promised for them, and `rivulet gc` removes their uploads. A file that cannot
/// be recovered (its upload expired, say) is logged and skipped, so one bad entry does not stop
/// the mount; the error is returned only when reading the index fails.
pub async fn recover_open_files(writer: &RecoverableWriter) -> Result<Vec<Recovered>, WriterError> {
    let mut done = Vec::new();
    for token in writer.recover_all().await? {
        let key = token.key().to_string();
        let outcome = match &token {
            Token::Resume(resume) => match writer.recover(resume).await {
                Ok(mut file) => match file.close_for_commit().await {
                    Ok(committer) => committer.commit().await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            Token::Commit(commit) => writer.recover_for_commit(commit).commit().await,
        };
        match outcome {
            Ok(outcome) => {
                tracing::info!(key = %key, size = outcome.size, "recovered a file left open");
                done.push(Recovered {
                    key,
                    size: outcome.size,
                });
            }
            Err(e) => tracing::error!(key = %key, "cannot recover a file left open: {e}"),
        }
    }
    Ok(done)
}
