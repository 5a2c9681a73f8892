//! The command line: argument definitions (clap derive), the shared context of a run, and the
//! dispatch into one module per group of subcommands.

mod cluster;
mod env;
mod gateway;
mod maint;
mod mount;
mod objects;
mod output;
mod run;
mod signals;
mod transfer;
mod write;

pub mod location;
pub mod size;

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

pub use self::env::Env;
pub use self::output::exit_code_and_message;

const ABOUT: &str = "Append, truncate, durable persist, crash recovery and atomic commit over \
                     S3-compatible object storage";

const AFTER_HELP: &str = "\
Store URLs:
  s3://bucket/key?endpoint=URL&region=R&path_style=true   an S3-compatible service; credentials
                                                          come from the AWS chain (env, profile)
  file:///abs/dir/key, /abs/dir/key, rel/dir/key          a local directory store: objects are
                                                          plain files; a path belongs to the
                                                          nearest enclosing directory that is
                                                          already a store (has .rivulet-store/),
                                                          else its own directory is the store
  memory://name/key                                       in-process only (useful for testing)

In `cp`, only arguments with a scheme (s3://, file://, memory://) are store objects; plain paths
and `-` are local files (stdin/stdout). Every other command takes store URLs, where a plain path
means the local store.

Examples:
  rivulet cp big.bin 's3://bkt/data/big.bin?endpoint=http://127.0.0.1:9000'
  rivulet cat s3://bkt/logs/app.log | tail
  echo 'one more line' | rivulet append s3://bkt/logs/app.log
  rivulet recover s3://bkt --commit

Set RUST_LOG (e.g. RUST_LOG=fs_core=debug) or pass -v/-vv for logs on stderr.";

/// `rivulet`: the command line of Rivulet.
#[derive(Debug, Parser)]
#[command(name = "rivulet", version, about = ABOUT, after_help = AFTER_HELP)]
#[command(propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// The local index of open uploads (default: `index`, or `gateway-index` for the gateway,
    /// in $RIVULET_STATE_DIR, else $XDG_STATE_HOME/rivulet, else ~/.local/state/rivulet)
    #[arg(long, global = true, env = "RIVULET_INDEX", value_name = "PATH")]
    pub index: Option<PathBuf>,

    /// Size of multipart parts and of ranged reads (e.g. 8MiB, 16M, 5242880); uploads need at
    /// least the store's minimum part size (5 MiB on S3 and local stores)
    #[arg(long, global = true, value_name = "SIZE", default_value = "8MiB", value_parser = part_size_arg)]
    pub part_size: u64,

    /// Parts uploaded (or ranges downloaded) concurrently
    #[arg(long, global = true, value_name = "N", default_value_t = 4, value_parser = max_in_flight_arg)]
    pub max_in_flight: usize,

    /// Where uploaded parts are cached while a file is open (default: <tmp>/rivulet-cache)
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// More output on stderr: what was done and info logs (-v), debug logs (-vv), trace (-vvv)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// No progress bar
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// The largest part size the writer accepts (fs-core: copied parts may reach twice this).
const MAX_PART_SIZE: u64 = 2 << 30;

fn part_size_arg(s: &str) -> Result<u64, String> {
    let n = size::parse_size(s)?;
    if n == 0 || n > MAX_PART_SIZE {
        return Err(format!(
            "the part size must be between 1 byte and 2GiB, not {n} bytes"
        ));
    }
    Ok(n)
}

fn max_in_flight_arg(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=256).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to 256, not '{s}'")),
    }
}

fn size_arg(s: &str) -> Result<u64, String> {
    size::parse_size(s)
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 24h, 90m or 7days: {e}"))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job file (a stream processing job) on an embedded cluster, or submit it to one
    #[command(after_help = RUN_HELP)]
    Run(run::RunArgs),

    /// Run the engine's job manager: REST API, task manager registry, one master per job
    #[command(after_help = JOBMANAGER_HELP)]
    Jobmanager(cluster::JobManagerArgs),

    /// Run a task manager that offers task slots to a job manager
    Taskmanager(cluster::TaskManagerArgs),

    /// List the jobs of a job manager
    List(cluster::JobManagerAddress),

    /// Show a job (or, without JOB, the cluster)
    Status {
        #[command(flatten)]
        jobmanager: cluster::JobManagerAddress,
        /// The job id (from `list` or `run --detach`)
        job: Option<String>,
        /// JSON as the REST API returns it
        #[arg(long)]
        json: bool,
    },

    /// Cancel a job
    Cancel {
        #[command(flatten)]
        jobmanager: cluster::JobManagerAddress,
        /// The job id
        job: String,
    },

    /// Copy a local file to a store object, a store object to a local file, or between stores
    #[command(after_help = CP_HELP)]
    Cp(CpArgs),

    /// Write a store object to stdout
    #[command(after_help = CAT_HELP)]
    Cat {
        /// The object (s3://bucket/key, file:///dir/key, a path, memory://name/key)
        url: String,
    },

    /// List objects (and "directories") under a URL
    #[command(after_help = LS_HELP)]
    Ls {
        /// A store or key prefix: s3://bucket/dir/, /path/to/store, memory://name/dir/
        url: String,
        /// Long format: last-modified time (UTC), size in bytes, key
        #[arg(short = 'l', long = "long")]
        long: bool,
        /// List every key under the prefix, not just one level ("directories" are expanded)
        #[arg(short, long)]
        recursive: bool,
    },

    /// Show an object's size, ETag, last-modified time, content type and metadata
    #[command(after_help = STAT_HELP)]
    Stat {
        /// The object
        url: String,
    },

    /// Delete objects; a missing object is an error unless -f
    #[command(after_help = RM_HELP)]
    Rm {
        /// The objects
        #[arg(required = true, num_args = 1..)]
        urls: Vec<String>,
        /// Ignore objects that do not exist
        #[arg(short, long)]
        force: bool,
    },

    /// Append a file (or stdin) to an object, creating it if absent, and commit atomically
    #[command(after_help = APPEND_HELP)]
    Append {
        /// The object to append to
        url: String,
        /// What to append: a local file, or - for stdin
        #[arg(default_value = "-", value_name = "FILE|-")]
        input: String,
    },

    /// Cut an object to LEN bytes or extend it with zeros, atomically
    #[command(after_help = TRUNCATE_HELP, allow_negative_numbers = true)]
    Truncate {
        /// The object
        url: String,
        /// The new length (e.g. 0, 4096, 10MiB), or +LEN to extend by LEN and -LEN to cut
        /// LEN off the end, as truncate(1) takes them
        #[arg(value_parser = size::parse_truncate_len, value_name = "LEN", allow_hyphen_values = true)]
        len: size::TruncateLen,
        /// Do not create a missing object (succeed without doing anything), like truncate -c
        #[arg(short = 'c', long)]
        no_create: bool,
    },

    /// Abort multipart uploads and delete staged tails that nothing references
    #[command(after_help = GC_HELP)]
    Gc {
        /// The store (s3://bucket, /path/to/store, ...)
        url: String,
        /// Only list what would be removed
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Only what is older than this (protects writers that are mid-way)
        #[arg(long, value_name = "DUR", default_value = "24h", value_parser = duration_arg)]
        older_than: Duration,
        /// Also abort unreferenced uploads that Rivulet staged no tails for (uploads of other
        /// tools, or writers that crashed before their first persist)
        #[arg(long)]
        all_uploads: bool,
    },

    /// List the open uploads the index knows for a store, and finish them after a crash
    #[command(after_help = RECOVER_HELP)]
    Recover {
        /// The store (s3://bucket, /path/to/store, ...)
        url: String,
        /// Commit every open upload at its last persisted length
        #[arg(long, conflicts_with = "abort")]
        commit: bool,
        /// Abort every open upload instead (publishes nothing; deletes their staged tails)
        #[arg(long)]
        abort: bool,
        /// Only the open uploads whose key starts with this prefix (e.g. a cancelled job's path)
        #[arg(long, value_name = "KEY_PREFIX", conflicts_with = "key")]
        prefix: Option<String>,
        /// Only the open uploads of exactly this key
        #[arg(long)]
        key: Option<String>,
        /// First rebuild the index from the tails staged in the store (after the index was lost)
        #[arg(long)]
        rebuild_index: bool,
    },

    /// Serve a store over the S3 API (its top-level folders are the buckets)
    #[command(after_help = gateway::GATEWAY_HELP)]
    Gateway(gateway::GatewayArgs),
    /// Mount a store as a file system (FUSE), in the background or with -f the foreground
    #[command(after_help = MOUNT_HELP)]
    Mount(MountArgs),

    /// Measure the recoverable writer against a plain multipart upload to the same store
    #[command(after_help = BENCH_HELP)]
    Bench {
        /// The store to measure (s3://bucket?endpoint=..., /path/to/store)
        url: String,
        /// Bytes written through each (the writer and the plain upload) per run
        #[arg(long, default_value = "1GiB", value_parser = size_arg, value_name = "SIZE")]
        size: u64,
        /// Persist the writer's file every this many bytes
        #[arg(long, default_value = "16MiB", value_parser = size_arg, value_name = "SIZE")]
        persist_every: u64,
        /// Runs (medians are reported)
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Bytes per write into the writer (default: the part size, the slices the plain upload
        /// sends); the writer takes whole parts of them without a copy (`write_bytes`)
        #[arg(long, value_parser = size_arg, value_name = "SIZE")]
        write_size: Option<u64>,
        /// File sizes whose recover time is measured
        #[arg(long, default_value = "10MiB,1GiB", value_delimiter = ',', value_parser = size_arg, value_name = "SIZES")]
        recover_sizes: Vec<u64>,
    },
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// The store (s3://bucket/prefix, /path/to/store, ...)
    pub url: String,
    /// An existing directory to mount it on
    pub mountpoint: String,
    /// Stay in the foreground until unmounted (default: mount, then return and serve from a
    /// background process)
    #[arg(short, long)]
    pub foreground: bool,
    /// Where the background process logs (default: mount.log in the state directory)
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Refuse every change (EROFS); files left open by an earlier mount are not recovered
    #[arg(long)]
    pub read_only: bool,
    /// Let other users access the mount (non-root users need user_allow_other in
    /// /etc/fuse.conf)
    #[arg(long)]
    pub allow_other: bool,
    /// Owner of every file and directory (default: the user running the mount)
    #[arg(long, value_name = "N")]
    pub uid: Option<u32>,
    /// Group of every file and directory (default: the group running the mount)
    #[arg(long, value_name = "N")]
    pub gid: Option<u32>,
    /// Permission bits of files, in octal
    #[arg(long, value_name = "MODE", default_value = "0644", value_parser = mode_arg)]
    pub file_mode: u16,
    /// Permission bits of directories, in octal
    #[arg(long, value_name = "MODE", default_value = "0755", value_parser = mode_arg)]
    pub dir_mode: u16,
    /// How long names and attributes are cached before the store is asked again (changes
    /// made outside the mount show up after this)
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = duration_arg)]
    pub metadata_ttl: Duration,
    /// Most bytes of committed files kept on local disk (under --cache-dir) so that reading
    /// them again does not go to the store; 0 turns the read cache off
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = size::parse_size)]
    pub cache_size: u64,
}

fn mode_arg(s: &str) -> Result<u16, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u16::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!(
            "expected octal permission bits like 0644, not '{s}'"
        )),
    }
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// The source: a local file, - for stdin, or a store object (scheme://...)
    #[arg(value_name = "SRC")]
    pub src: String,
    /// The destination: a local file or directory, - for stdout, or a store object (scheme://...;
    /// a URL ending in / gets the source's file name appended)
    #[arg(value_name = "DST")]
    pub dst: String,
}

const CP_HELP: &str = "\
Only arguments with a scheme (s3://, file://, memory://) are store objects; plain paths are
local files and - is stdin or stdout. Uploads go through the recoverable writer (multipart parts
uploaded in parallel, committed atomically: the object appears whole or not at all); downloads
use parallel ranged GETs of --part-size bytes and land atomically (written to a temporary file
next to the destination, then renamed).

Examples:
  rivulet cp report.csv s3://bkt/reports/            # key reports/report.csv
  rivulet cp --part-size 64MiB big.iso 's3://bkt/big.iso?endpoint=http://127.0.0.1:9000'
  pg_dump db | rivulet cp - s3://bkt/backup.sql
  rivulet cp s3://bkt/reports/report.csv .
  rivulet cp file:///srv/store/a.bin s3://bkt/a.bin   # store to store
  rivulet cp s3://bkt/backup.sql - | psql db";

const CAT_HELP: &str = "\
Streams the object with parallel ranged GETs (at most --max-in-flight ranges of --part-size
bytes in memory), in order; fails if the object changes while it is read.

Examples:
  rivulet cat s3://bkt/logs/app.log
  rivulet cat /srv/store/notes.txt | less";

const LS_HELP: &str = "\
Lists one level below the prefix (keys are grouped at '/'), or every key with -r. Short output
is one name per line, \"directories\" ending in '/'; -l prints `date time size key` and
\"directories\" as `PRE dir/`, like `aws s3 ls`. Names are relative to the listed \"directory\"
(full keys with -r).

Examples:
  rivulet ls s3://bkt/
  rivulet ls -l s3://bkt/logs/
  rivulet ls -lr /srv/store";

const STAT_HELP: &str = "\
Examples:
  rivulet stat s3://bkt/logs/app.log
  rivulet stat /srv/store/notes.txt";

const RM_HELP: &str = "\
S3 deletes missing keys silently; rivulet rm checks first and fails (exit 1) for an object that
does not exist, like rm(1), unless -f.

Examples:
  rivulet rm s3://bkt/tmp/a s3://bkt/tmp/b
  rivulet rm -f /srv/store/maybe-there";

const APPEND_HELP: &str = "\
Opens the object for appending (its current bytes are copied server-side), streams the input in
parts, and commits only over the version it copied: a concurrent change makes the append fail
instead of losing either write (on AWS S3 and the local store; S3-compatible servers that ignore
If-Match on CompleteMultipartUpload, such as moto, leave a short window, see docs/semantics.md).
Creates the object if it does not exist. Prints nothing on
success unless -v.

Examples:
  echo 'one more line' | rivulet append s3://bkt/logs/app.log
  rivulet append /srv/store/data.csv new-rows.csv";

const TRUNCATE_HELP: &str = "\
Keeps the first LEN bytes (server-side copies, no download of large prefixes) or pads with zeros,
and commits atomically over the version it read. A missing object is created with LEN zero bytes,
unless --no-create.

Examples:
  rivulet truncate s3://bkt/logs/app.log 0
  rivulet truncate /srv/store/disk.img 10GiB
  rivulet truncate --no-create s3://bkt/maybe 1MiB";

const GC_HELP: &str = "\
Collects what crashed or abandoned writers left behind: multipart uploads and staged tails that
no open upload in the index references, older than --older-than. Run it against the store's root
(for s3://bucket/key objects written by rivulet, that is s3://bucket). Some S3-compatible servers
cannot list uploads; then only tails are collected, and gc says so.

Examples:
  rivulet gc --dry-run s3://bkt
  rivulet gc --older-than 2h --all-uploads /srv/store";

const BENCH_HELP: &str = "\
Writes --size bytes through the recoverable writer (persisting every --persist-every) and the
same bytes as a plain multipart upload (parts of --part-size, --max-in-flight at a time) to the
same store, --runs times, each way of writing in a different position each run (use a multiple
of 4 runs) and each file deleted once measured; then measures recover time for files of
--recover-sizes. Prints a Markdown table of medians: throughput of both and their ratio, persist
latency p50/p99, recover times, and store requests per GiB. Objects go under rivulet-bench/.

Examples:
  rivulet bench ./bench-store
  rivulet bench --runs 5 's3://bench?endpoint=http://127.0.0.1:9000&contiguous_parts=true'";

const MOUNT_HELP: &str = "\
Files are objects, directories are key prefixes (mkdir writes an empty `dir/` marker). A file
written through the mount is in the store, whole, when close() returns; fsync() makes what was
written durable (it survives a kill of the mount, which commits it when mounted again) without
publishing it. Appending is cheap (the object's bytes are copied server-side); writing before the
end of a file re-uploads everything after that point. Without --foreground the command returns
once the store is mounted, and a background process serves it (its log: --log-file). SIGTERM or
Ctrl-C (in the foreground) unmounts and commits the files still open; `fusermount3 -u MOUNTPOINT`
unmounts when no file is open (with files open, `fusermount3 -uz` detaches it lazily). --index and --cache-dir apply (the index stays locked while mounted). See docs/fuse.md.

Examples:
  rivulet mount s3://bkt/data /mnt/data
  rivulet mount --foreground s3://bkt/data /mnt/data
  rivulet mount -f --read-only --allow-other /srv/store /mnt/store";

const RUN_HELP: &str = "\
The job runs on a mini-cluster in this process: a job manager and task managers with slots
(one slot per subtask of the job's widest stage). It checkpoints to _checkpoints/<job>/ in the
store and restarts from the latest checkpoint when a task fails. If the process dies, running
the same job file again resumes that run from its latest checkpoint (--fresh starts anew).
File sinks commit their output exactly once, at checkpoints. docs/engine.md describes job
files.

Examples:
  rivulet run jobs/quickstart.toml
  rivulet run --store 's3://bkt/rivulet?endpoint=http://127.0.0.1:9000' jobs/nexmark-q5.toml
  rivulet run --json jobs/nexmark-q0.toml > summary.json";

const JOBMANAGER_HELP: &str = "\
One port serves the REST API (GET /overview, /jobs, /jobs/ID, /jobs/ID/checkpoints,
/taskmanagers, /metrics; POST /jobs with a job file, /jobs/ID/cancel) and the task managers'
connections. Jobs are recorded in the store under _jobs/; a job manager that starts resumes
the jobs that were running from their latest checkpoints.

Examples:
  export RIVULET_CLUSTER_TOKEN=$(head -c16 /dev/urandom | xxd -p)
  rivulet jobmanager --store s3://bkt/rivulet &
  rivulet taskmanager --slots 4 &
  rivulet run --jobmanager 127.0.0.1:8081 jobs/quickstart.toml";

const RECOVER_HELP: &str = "\
After a crash, the index still lists the uploads that were open, with their last token: a
resume token (the file was persisted at some length) or a commit token (it was closed, the
commit did not finish). Without options this lists them; --commit finishes each one at its
persisted length; --abort abandons each one instead (nothing is published, its staged tails
are deleted): the files a cancelled job left in progress, say; --prefix keeps to the keys under
a prefix; --rebuild-index first restores the index from the store (when it was lost). Uploads
never persisted cannot be resumed: gc aborts them.

Examples:
  rivulet recover s3://bkt
  rivulet recover --commit s3://bkt
  rivulet recover --abort --prefix out/nexmark-q10/ ./rivulet-data
  rivulet recover --rebuild-index --commit /srv/store";

impl Command {
    /// `<command> <url>`, as error messages name it.
    pub fn subject(&self) -> String {
        match self {
            Command::Run(a) => format!("run {}", a.job.display()),
            Command::Jobmanager(a) => format!("jobmanager --listen {}", a.listen),
            Command::Taskmanager(a) => {
                format!("taskmanager --jobmanager {}", a.jobmanager.address)
            }
            Command::List(a) => format!("list --jobmanager {}", a.address),
            Command::Status { job, .. } => format!("status {}", job.as_deref().unwrap_or("")),
            Command::Cancel { job, .. } => format!("cancel {job}"),
            Command::Cp(a) => format!("cp {} {}", a.src, a.dst),
            Command::Cat { url } => format!("cat {url}"),
            Command::Ls { url, .. } => format!("ls {url}"),
            Command::Stat { url } => format!("stat {url}"),
            Command::Rm { urls, .. } => format!("rm {}", urls.join(" ")),
            Command::Append { url, .. } => format!("append {url}"),
            Command::Truncate { url, .. } => format!("truncate {url}"),
            Command::Gc { url, .. } => format!("gc {url}"),
            Command::Recover { url, .. } => format!("recover {url}"),
            Command::Mount(a) => format!("mount {} {}", a.url, a.mountpoint),
            Command::Bench { url, .. } => format!("bench {url}"),
            Command::Gateway(a) => format!("gateway {}", a.store),
        }
    }
}

/// Runs one parsed command.
pub async fn run(env: &Env, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => run::run(env, args).await,
        Command::Jobmanager(args) => cluster::jobmanager(env, args).await,
        Command::Taskmanager(args) => cluster::taskmanager(env, args).await,
        Command::List(address) => cluster::list(&address).await,
        Command::Status {
            jobmanager,
            job,
            json,
        } => cluster::status(&jobmanager, job.as_deref(), json).await,
        Command::Cancel { jobmanager, job } => cluster::cancel(&jobmanager, &job).await,
        Command::Cp(args) => transfer::cp(env, &args.src, &args.dst).await,
        Command::Cat { url } => transfer::cat(env, &url).await,
        Command::Ls {
            url,
            long,
            recursive,
        } => objects::ls(env, &url, long, recursive).await,
        Command::Stat { url } => objects::stat(env, &url).await,
        Command::Rm { urls, force } => objects::rm(env, &urls, force).await,
        Command::Append { url, input } => write::append(env, &url, &input).await,
        Command::Truncate {
            url,
            len,
            no_create,
        } => write::truncate(env, &url, len, no_create).await,
        Command::Gc {
            url,
            dry_run,
            older_than,
            all_uploads,
        } => maint::gc(env, &url, dry_run, older_than, all_uploads).await,
        Command::Recover {
            url,
            commit,
            abort,
            prefix,
            key,
            rebuild_index,
        } => {
            let action = match (commit, abort) {
                (true, _) => maint::Finish::Commit,
                (_, true) => maint::Finish::Abort,
                _ => maint::Finish::List,
            };
            let keys = match (prefix, key) {
                (Some(prefix), _) => maint::Keys::Prefix(prefix),
                (_, Some(key)) => maint::Keys::Exact(key),
                _ => maint::Keys::All,
            };
            maint::recover(env, &url, action, &keys, rebuild_index).await
        }
        Command::Gateway(args) => gateway::gateway(env, args).await,
        Command::Mount(args) => mount::mount(env, &args).await,
        Command::Bench {
            url,
            size,
            persist_every,
            runs,
            write_size,
            recover_sizes,
        } => {
            let store = env
                .open_store(&fs_core::store::StoreUrl::parse(&url)?)
                .await?;
            let opts = crate::bench::BenchOptions {
                size,
                persist_every,
                runs,
                part_size: env.global.part_size,
                write_size: write_size.unwrap_or(env.global.part_size),
                max_in_flight: env.global.max_in_flight,
                recover_sizes,
            };
            let report = crate::bench::run(store, opts).await?;
            println!("{report}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_parse_anywhere() {
        let cli =
            Cli::try_parse_from(["rivulet", "cat", "s3://bkt/k", "--part-size", "16M", "-vv"])
                .unwrap();
        assert_eq!(cli.global.part_size, 16 << 20);
        assert_eq!(cli.global.verbose, 2);
        assert_eq!(cli.global.max_in_flight, 4);
        let cli =
            Cli::try_parse_from(["rivulet", "--max-in-flight", "8", "ls", "-lr", "x"]).unwrap();
        assert_eq!(cli.global.max_in_flight, 8);
        assert!(matches!(
            cli.command,
            Command::Ls {
                long: true,
                recursive: true,
                ..
            }
        ));
        assert_eq!(
            Cli::try_parse_from(["rivulet", "cat", "x"])
                .unwrap()
                .global
                .part_size,
            8 << 20
        );
    }

    #[test]
    fn gateway_part_sizes_parse() {
        let gateway = |extra: &[&str]| {
            let args = ["rivulet", "gateway", "--store", "/srv/store"];
            match Cli::try_parse_from(args.iter().chain(extra)).map(|cli| cli.command) {
                Ok(Command::Gateway(args)) => Ok(args.append_part_size),
                Ok(other) => panic!("not a gateway: {other:?}"),
                Err(e) => Err(e.kind()),
            }
        };
        // Appendable objects default to the gateway's own default, apart from --part-size.
        assert_eq!(
            gateway(&["--part-size", "16MiB"]),
            Ok(s3_gateway::config::DEFAULT_APPEND_PART_SIZE)
        );
        assert_eq!(gateway(&["--append-part-size", "6MiB"]), Ok(6 << 20));
        assert_eq!(
            gateway(&["--append-part-size", "0"]),
            Err(clap::error::ErrorKind::ValueValidation)
        );
    }

    #[test]
    fn mount_options_parse() {
        let cli = Cli::try_parse_from([
            "rivulet",
            "mount",
            "s3://b/p",
            "/mnt",
            "-f",
            "--file-mode",
            "0600",
            "--uid",
            "7",
            "--read-only",
        ])
        .unwrap();
        let Command::Mount(args) = cli.command else {
            panic!("not a mount: {:?}", cli.command)
        };
        assert_eq!(
            (args.url.as_str(), args.mountpoint.as_str()),
            ("s3://b/p", "/mnt")
        );
        assert!(args.foreground && args.read_only && !args.allow_other);
        assert_eq!((args.file_mode, args.dir_mode), (0o600, 0o755));
        assert_eq!((args.uid, args.gid), (Some(7), None));
        assert_eq!(args.metadata_ttl, Duration::from_secs(1));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["rivulet", "--part-size", "lots", "cat", "x"][..],
            &["rivulet", "--part-size", "0", "cat", "x"],
            &["rivulet", "--max-in-flight", "0", "cat", "x"],
            &["rivulet", "truncate", "x", "+-5"],
            &["rivulet", "truncate", "x", "1.5G"],
            &["rivulet", "gc", "x", "--older-than", "soon"],
            &["rivulet", "rm"],
            &["rivulet", "mount", "x", "/mnt", "-f", "--file-mode", "0999"],
            &["rivulet", "mount", "x", "/mnt", "-f", "--dir-mode", "rwx"],
        ] {
            let err = Cli::try_parse_from(args).expect_err(&args.join(" "));
            assert_eq!(err.exit_code(), 2, "{}", args.join(" "));
        }
        let cli = Cli::try_parse_from(["rivulet", "truncate", "x", "10MiB", "-c"]).unwrap();
        assert!(
            matches!(cli.command, Command::Truncate { len: size::TruncateLen::To(n), no_create: true, .. } if n == 10 << 20)
        );
        let cli = Cli::try_parse_from(["rivulet", "gc", "x", "--older-than", "90m"]).unwrap();
        assert!(
            matches!(cli.command, Command::Gc { older_than, .. } if older_than == Duration::from_secs(5400))
        );
    }
}
