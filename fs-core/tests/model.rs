//! A reference-model property test: random sequences of write / persist / recover / truncate /
//! append / commit / read against a plain `Vec<u8>`, byte for byte.

use std::sync::Arc;

use fs_core::store::ObjectStore;
use fs_core::store::memory::MemoryStore;
use fs_core::token::ResumeToken;
use fs_core::{FileWriter, Index, RecoverableWriter, WriterConfig};
use proptest::prelude::*;

const PART: u64 = 1024;
const KEY: &str = "model/file.bin";

#[derive(Debug, Clone)]
enum Op {
    Write {
        len: usize,
        seed: u8,
    },
    Persist,
    /// Start a pipelined persist and keep going.
    BeginPersist,
    /// Wait for the oldest pipelined persist.
    ResolvePersist,
    /// Drop the writer and resume from the n-th most recent token (0 = latest).
    Recover {
        back: usize,
    },
    Truncate {
        len_permille: u16,
    },
    Read {
        offset_permille: u16,
        len: u64,
    },
    /// Close, commit, check the object, and reopen it for appending.
    CommitAndAppend,
    /// Close, commit, then truncate the committed object server-side and reopen for append.
    CommitTruncateObject {
        len_permille: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..3000, any::<u8>()).prop_map(|(len, seed)| Op::Write { len, seed }),
        2 => Just(Op::Persist),
        2 => Just(Op::BeginPersist),
        2 => Just(Op::ResolvePersist),
        2 => (0usize..3).prop_map(|back| Op::Recover { back }),
        2 => (0u16..=1200).prop_map(|len_permille| Op::Truncate { len_permille }),
        2 => (0u16..=1000, 0u64..4000).prop_map(|(offset_permille, len)| Op::Read { offset_permille, len }),
        1 => Just(Op::CommitAndAppend),
        1 => (0u16..=1200).prop_map(|len_permille| Op::CommitTruncateObject { len_permille }),
    ]
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn scaled(len: usize, permille: u16) -> u64 {
    (len as u64 * u64::from(permille)) / 1000
}

struct Harness {
    mem: MemoryStore,
    writer: RecoverableWriter,
    file: Option<FileWriter>,
    model: Vec<u8>,
    /// Tokens with the model content they stand for, newest last.
    tokens: Vec<(ResumeToken, Vec<u8>)>,
    /// Pipelined persists under way, oldest first, with the content they stand for.
    pending: std::collections::VecDeque<(fs_core::writer::PendingPersist, Vec<u8>)>,
    contiguous: bool,
    /// The store reads back parts of uploads in progress (as the local store does): reads and
    /// truncates of an open file never fail then, even into parts uploaded before a recovery.
    part_reads: bool,
}

impl Harness {
    async fn commit_and_check(&mut self) -> Result<(), TestCaseError> {
        let mut file = self.file.take().expect("open");
        file.close_for_commit()
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
        let got = self.mem.get(KEY, None).await.unwrap().body;
        prop_assert_eq!(
            &got[..],
            &self.model[..],
            "committed object differs from the model"
        );
        // Tokens of a committed upload can no longer be resumed.
        self.tokens.clear();
        Ok(())
    }

    async fn run(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Write { len, seed } => {
                let data = bytes(len, seed);
                self.file.as_mut().unwrap().write(&data).await.unwrap();
                self.model.extend_from_slice(&data);
            }
            Op::BeginPersist => {
                let pending = self.file.as_mut().unwrap().begin_persist().unwrap();
                prop_assert_eq!(pending.len(), self.model.len() as u64);
                self.pending.push_back((pending, self.model.clone()));
            }
            Op::ResolvePersist => {
                let Some((pending, model)) = self.pending.pop_front() else {
                    return Ok(());
                };
                match pending.wait().await {
                    Ok(token) => {
                        prop_assert_eq!(token.len(), model.len() as u64);
                        self.tokens.push((token, model));
                    }
                    // Voided by a cut into its parts (contiguous stores), or its writer went
                    // away (recovered, committed) first: an error, never a wrong token.
                    Err(e) => {
                        let text = e.to_string();
                        let void = text.contains("overtaken")
                            || text.contains("closed or dropped")
                            || text.contains("dropped before");
                        prop_assert!(void, "{e}");
                    }
                }
            }
            Op::Persist => {
                let token = self.file.as_mut().unwrap().persist().await.unwrap();
                prop_assert_eq!(token.len(), self.model.len() as u64);
                self.tokens.push((token, self.model.clone()));
            }
            Op::Recover { back } => {
                if self.tokens.is_empty() {
                    return Ok(());
                }
                let i = self.tokens.len() - 1 - back.min(self.tokens.len() - 1);
                let (token, model) = self.tokens[i].clone();
                self.file = None;
                match self.writer.recover(&token).await {
                    Ok(file) => {
                        self.file = Some(file);
                        self.model = model;
                        if self.contiguous {
                            // Later tokens were invalidated (their part numbers get reused).
                            self.tokens.truncate(i + 1);
                        }
                    }
                    Err(e) => {
                        // Only on a contiguous store may a token be invalidated, and then it
                        // must fail cleanly on its missing tail; resume from the newest good one.
                        // (tail deleted, or a part replaced: detected either way, never resumed).
                        let clean = matches!(e, fs_core::WriterError::Recover { .. });
                        prop_assert!(self.contiguous && clean, "{e}");
                        self.tokens.remove(i);
                        while let Some((token, model)) = self.tokens.pop() {
                            if let Ok(file) = self.writer.recover(&token).await {
                                self.tokens.push((token, model.clone()));
                                self.file = Some(file);
                                self.model = model;
                                return Ok(());
                            }
                        }
                        // No token is left: start the file over.
                        self.file = Some(self.writer.open(KEY).await.unwrap());
                        self.model.clear();
                    }
                }
            }
            Op::Truncate { len_permille } => {
                let len = scaled(self.model.len(), len_permille);
                match self.file.as_mut().unwrap().truncate(len).await {
                    Ok(()) => self.model.resize(len as usize, 0),
                    // Cutting into a part uploaded before a recovery is refused (documented)
                    // unless the store can read that part back.
                    Err(e) => prop_assert!(
                        !self.part_reads && e.to_string().contains("recovered"),
                        "{e}"
                    ),
                }
            }
            Op::Read {
                offset_permille,
                len,
            } => {
                let offset = scaled(self.model.len(), offset_permille);
                match self.file.as_ref().unwrap().read_at(offset, len).await {
                    Ok(got) => {
                        let end = (offset + len).min(self.model.len() as u64) as usize;
                        prop_assert_eq!(&got[..], &self.model[offset as usize..end]);
                    }
                    Err(e) => prop_assert!(
                        !self.part_reads && e.to_string().contains("recovered"),
                        "{e}"
                    ),
                }
            }
            Op::CommitAndAppend => {
                self.commit_and_check().await?;
                self.file = Some(self.writer.open_append(KEY).await.unwrap());
                prop_assert_eq!(self.file.as_ref().unwrap().len(), self.model.len() as u64);
            }
            Op::CommitTruncateObject { len_permille } => {
                self.commit_and_check().await?;
                let len = scaled(self.model.len(), len_permille);
                self.writer.truncate_object(KEY, len).await.unwrap();
                self.model.resize(len as usize, 0);
                let got = self.mem.get(KEY, None).await.unwrap().body;
                prop_assert_eq!(&got[..], &self.model[..]);
                self.file = Some(self.writer.open_append(KEY).await.unwrap());
            }
        }
        Ok(())
    }
}

async fn run_model(ops: Vec<Op>, contiguous: bool, part_reads: bool) -> Result<(), TestCaseError> {
    let mut mem = MemoryStore::new().with_min_part_size(PART);
    if contiguous {
        mem = mem.with_contiguous_parts();
    }
    if part_reads {
        mem = mem.with_part_reads();
    }
    let cache = tempfile::tempdir().unwrap();
    let config = WriterConfig {
        part_size: PART,
        max_in_flight: 3,
        cache_parts: true,
        cache_dir: cache.path().into(),
        ..Default::default()
    };
    let writer =
        RecoverableWriter::new(Arc::new(mem.clone()), Index::temporary().unwrap(), config).unwrap();
    let file = Some(writer.open(KEY).await.unwrap());
    let mut h = Harness {
        mem,
        writer,
        file,
        model: Vec::new(),
        tokens: Vec::new(),
        pending: Default::default(),
        contiguous,
        part_reads,
    };
    for op in ops {
        h.run(op).await?;
    }
    h.commit_and_check().await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn writer_matches_a_byte_model(ops in proptest::collection::vec(op(), 1..40)) {
        runtime().block_on(run_model(ops, false, false))?;
    }

    /// The same on a store that needs contiguous part numbers (like s3s-fs).
    #[test]
    fn writer_matches_a_byte_model_on_a_contiguous_store(ops in proptest::collection::vec(op(), 1..40)) {
        runtime().block_on(run_model(ops, true, false))?;
    }

    /// The same on a store that reads back the parts of uploads in progress (like the local
    /// store): the writer keeps no part cache, and reads and truncates work after a recovery.
    #[test]
    fn writer_matches_a_byte_model_on_a_store_that_reads_parts(ops in proptest::collection::vec(op(), 1..40)) {
        runtime().block_on(run_model(ops, false, true))?;
    }
}
