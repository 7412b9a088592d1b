//! The logic of the command-line tools of this workspace, kept in a library so that tests can
//! drive it in-process. The runnable programs are in `examples/examples/`.

use std::collections::VecDeque;
use std::future::Future;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader, Stdin, Stdout};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub mod dust;
pub mod phx;

/// Logs to stderr: `RUST_LOG`, default `warn`.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The default bound of a tool's output queue (`--output-buffer`), in bytes of JSON text.
pub const DEFAULT_OUTPUT_BUFFER: usize = 8 * 1024 * 1024;

/// Parses the value of `--output-buffer`: a positive number of bytes.
pub fn parse_output_buffer(value: Option<String>) -> Result<usize, String> {
    let value = value.ok_or("--output-buffer needs a value")?;
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("--output-buffer: `{value}` is not a positive number of bytes"))
}

/// Where a tool's output goes: JSON objects, one per line, in the order they are emitted. Cheap
/// to clone.
///
/// The lines wait in a queue of at most `limit` bytes (of JSON text) for the writer; the queue
/// takes a line bigger than the limit only when it is empty, so it never holds more than
/// `limit` bytes or one line. When the output is slower than the events, the lines that do not
/// fit are dropped and counted, and a line `{"type":"dropped","dropped":N}` takes their place in
/// the output: nothing is lost silently, and memory stays bounded however slow the output is.
#[derive(Clone, Debug)]
pub struct JsonLines(Arc<Emitter>);

/// Closes the queue when the last [`JsonLines`] is dropped.
#[derive(Debug)]
struct Emitter(Arc<OutputQueue>);

impl Drop for Emitter {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.ready.notify_one();
    }
}

#[derive(Debug)]
struct OutputQueue {
    state: Mutex<QueueState>,
    ready: Notify,
    limit: usize,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Lines, and in their place the number of lines dropped there.
    items: VecDeque<Item>,
    /// The bytes of the lines in `items`.
    bytes: usize,
    /// The most `bytes` has ever been.
    peak: usize,
    /// Every line dropped so far.
    dropped: u64,
    /// No more lines will come.
    closed: bool,
    /// The output failed: lines are discarded.
    broken: bool,
}

#[derive(Debug)]
enum Item {
    Line(String),
    Dropped(u64),
}

impl OutputQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding the lock leaves the state consistent: every update is one step.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What an output queue has done so far (see [`JsonLines::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutputStats {
    /// Bytes queued now.
    pub queued_bytes: usize,
    /// The most bytes ever queued at once.
    pub peak_queued_bytes: usize,
    /// Lines dropped because the queue was full.
    pub dropped: u64,
}

impl JsonLines {
    /// The emitter with a queue of [`DEFAULT_OUTPUT_BUFFER`] bytes, and the task that writes to
    /// `output`; see [`JsonLines::bounded`].
    pub fn spawn<W: AsyncWrite + Unpin + Send + 'static>(output: W) -> (Self, JoinHandle<()>) {
        Self::bounded(output, DEFAULT_OUTPUT_BUFFER)
    }

    /// The emitter with a queue of at most `limit` bytes, and the task that writes to `output`
    /// (flushing whenever it has written all it has); the task ends once every emitter is
    /// dropped and the queued lines are written, or when `output` fails.
    pub fn bounded<W: AsyncWrite + Unpin + Send + 'static>(
        mut output: W,
        limit: usize,
    ) -> (Self, JoinHandle<()>) {
        let queue = Arc::new(OutputQueue {
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
            limit,
        });
        let shared = Arc::clone(&queue);
        let writer = tokio::spawn(async move {
            loop {
                let item = {
                    let mut state = shared.lock();
                    match state.items.pop_front() {
                        Some(item) => {
                            if let Item::Line(line) = &item {
                                state.bytes -= line.len();
                            }
                            Some(item)
                        }
                        None if state.closed => return,
                        None => None,
                    }
                };
                let written = match item {
                    Some(Item::Line(line)) => output.write_all(line.as_bytes()).await,
                    Some(Item::Dropped(n)) => {
                        let line = format!("{}\n", json!({"type": "dropped", "dropped": n}));
                        output.write_all(line.as_bytes()).await
                    }
                    None => {
                        let flushed = output.flush().await;
                        if flushed.is_ok() {
                            shared.ready.notified().await;
                        }
                        flushed
                    }
                };
                if let Err(error) = written {
                    tracing::warn!(%error, "the output failed: no more lines are written");
                    let mut state = shared.lock();
                    state.broken = true;
                    state.items.clear();
                    state.bytes = 0;
                    return;
                }
            }
        });
        (Self(Arc::new(Emitter(queue))), writer)
    }

    /// Queues one line, or drops it (counted, and reported in the output) when the queue is
    /// full.
    pub fn emit(&self, line: Value) {
        let queue = &self.0.0;
        let mut text = line.to_string();
        text.push('\n');
        let mut state = queue.lock();
        if state.broken {
            return;
        }
        if state.bytes == 0 || state.bytes + text.len() <= queue.limit {
            state.bytes += text.len();
            state.peak = state.peak.max(state.bytes);
            state.items.push_back(Item::Line(text));
        } else {
            state.dropped += 1;
            match state.items.back_mut() {
                Some(Item::Dropped(n)) => *n += 1,
                _ => state.items.push_back(Item::Dropped(1)),
            }
        }
        drop(state);
        queue.ready.notify_one();
    }

    /// What the queue has done so far.
    pub fn stats(&self) -> OutputStats {
        let state = self.0.0.lock();
        OutputStats {
            queued_bytes: state.bytes,
            peak_queued_bytes: state.peak,
            dropped: state.dropped,
        }
    }
}

/// Runs a line-oriented tool on this process: logs to stderr (`RUST_LOG`, default `warn`),
/// arguments parsed by `parse` (a usage error exits with code 2), then `run` on stdin and
/// stdout (an error exits with code 1).
pub async fn run_stdio<O, Fut>(
    name: &str,
    parse: impl FnOnce(Vec<String>) -> Result<O, String>,
    run: impl FnOnce(O, BufReader<Stdin>, Stdout) -> Fut,
) -> ExitCode
where
    Fut: Future<Output = Result<(), String>>,
{
    init_logging();
    let options = match parse(std::env::args().skip(1).collect()) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(
        options,
        BufReader::new(tokio::io::stdin()),
        tokio::io::stdout(),
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{name}: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Lines that do not fit are counted where they were dropped: the output has every line
    /// in order, or a count in its place, and the queue never held more than its bound.
    #[tokio::test]
    async fn dropped_lines_are_reported_in_their_place_and_the_queue_stays_bounded() {
        let (output, mut reader) = tokio::io::duplex(64);
        let (out, writer) = JsonLines::bounded(output, 1000);
        let total = 5_000u64;
        let reading = tokio::spawn(async move {
            let mut text = String::new();
            // Read slowly: a few bytes at a time, so the queue fills up again and again.
            let mut buf = [0u8; 16];
            loop {
                let n = reader.read(&mut buf).await.unwrap();
                if n == 0 {
                    break text;
                }
                text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
                tokio::task::yield_now().await;
            }
        });
        for n in 0..total {
            out.emit(json!({"n": n}));
            if n % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let stats = out.stats();
        assert!(stats.peak_queued_bytes <= 1000, "{stats:?}");
        assert!(stats.dropped > 0, "{stats:?}");
        drop(out);
        writer.await.unwrap();
        let text = reading.await.unwrap();
        let (mut next, mut reported) = (0u64, 0u64);
        for line in text.lines() {
            let line: Value = serde_json::from_str(line).unwrap();
            if line["type"] == "dropped" {
                let n = line["dropped"].as_u64().unwrap();
                next += n;
                reported += n;
            } else {
                assert_eq!(line["n"], next, "a line was lost or reordered");
                next += 1;
            }
        }
        assert_eq!(next, total);
        assert_eq!(reported, stats.dropped);
    }

    #[test]
    fn the_output_buffer_is_a_positive_number() {
        assert_eq!(parse_output_buffer(Some("4096".into())), Ok(4096));
        assert!(parse_output_buffer(Some("0".into())).is_err());
        assert!(parse_output_buffer(Some("x".into())).is_err());
        assert!(parse_output_buffer(None).is_err());
    }
}
