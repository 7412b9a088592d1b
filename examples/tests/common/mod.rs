//! Running a tool on a script, and finding lines in its output.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::panic)]

use std::future::Future;
use std::io::Cursor;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, DuplexStream};

/// Runs `run` with these commands (JSON values, or strings sent as they are) as input, and
/// returns its output lines.
pub async fn script<Fut>(
    commands: &[Value],
    run: impl FnOnce(Cursor<Vec<u8>>, DuplexStream) -> Fut,
) -> Vec<Value>
where
    Fut: Future<Output = Result<(), String>>,
{
    let input: String = commands
        .iter()
        .map(|c| {
            format!(
                "{}\n",
                c.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| c.to_string())
            )
        })
        .collect();
    let (writer, mut reader) = tokio::io::duplex(1 << 20);
    tokio::time::timeout(
        Duration::from_secs(30),
        run(Cursor::new(input.into_bytes()), writer),
    )
    .await
    .expect("the tool did not finish")
    .unwrap();
    let mut text = String::new();
    reader.read_to_string(&mut text).await.unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

/// The first line that has every field of `wanted`.
pub fn find<'a>(lines: &'a [Value], wanted: &Value) -> &'a Value {
    lines
        .iter()
        .find(|line| {
            wanted
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| &line[k] == v)
        })
        .unwrap_or_else(|| panic!("no line like {wanted} in {lines:#?}"))
}

/// Input that tells, through `eof`, when the tool has read all of it.
pub struct SignalingInput {
    input: Cursor<Vec<u8>>,
    eof: Option<tokio::sync::oneshot::Sender<()>>,
}

impl tokio::io::AsyncRead for SignalingInput {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.input).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncBufRead for SignalingInput {
    fn poll_fill_buf(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.input.position() as usize >= this.input.get_ref().len()
            && let Some(eof) = this.eof.take()
        {
            let _ = eof.send(());
        }
        std::pin::Pin::new(&mut this.input).poll_fill_buf(cx)
    }

    fn consume(mut self: std::pin::Pin<&mut Self>, amt: usize) {
        std::pin::Pin::new(&mut self.input).consume(amt);
    }
}

/// Runs `run` with these commands as input and an output that nobody reads (a pipe of
/// `capacity` bytes, so that the tool's writes block once it is full) until the tool has read
/// all of its input and `release` is done; then reads the output to the end. Returns the output
/// text.
pub async fn script_with_blocked_output<Fut>(
    commands: &[Value],
    capacity: usize,
    run: impl FnOnce(SignalingInput, DuplexStream) -> Fut,
    release: impl Future<Output = ()>,
) -> String
where
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let input: String = commands.iter().map(|c| format!("{c}\n")).collect();
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel();
    let input = SignalingInput {
        input: Cursor::new(input.into_bytes()),
        eof: Some(eof_tx),
    };
    let (writer, mut reader) = tokio::io::duplex(capacity);
    let tool = tokio::spawn(run(input, writer));
    tokio::time::timeout(Duration::from_secs(30), eof_rx)
        .await
        .expect("the tool did not read its input")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), release)
        .await
        .expect("the output was not released");
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(30), reader.read_to_string(&mut text))
        .await
        .expect("the output did not end")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), tool)
        .await
        .expect("the tool did not finish")
        .unwrap()
        .unwrap();
    text
}

/// Checks the output of a tool whose output queue was bounded to `bound` bytes and whose output
/// was blocked after `capacity` bytes: the text before the first `dropped` line fits in the
/// bound, and lines were dropped. Returns the lines and the number of lines dropped.
pub fn check_bounded_output(text: &str, capacity: usize, bound: usize) -> (Vec<Value>, u64) {
    let first_drop = text
        .find(r#"{"dropped":"#)
        .or_else(|| text.find(r#""type":"dropped""#))
        .unwrap_or_else(|| panic!("no line reports dropped lines:\n{text}"));
    let before = text[..first_drop].rfind('\n').map_or(0, |n| n + 1);
    // The writer holds the line it is writing when the pipe fills up.
    let in_flight = text[..before]
        .lines()
        .map(|l| l.len() + 1)
        .max()
        .unwrap_or(0);
    assert!(
        before <= capacity + in_flight + bound,
        "{before} bytes came out before the first drop, more than the pipe ({capacity}), a line \
         ({in_flight}) and the queue ({bound}) hold"
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let dropped = lines
        .iter()
        .filter(|l| l["type"] == "dropped")
        .map(|l| l["dropped"].as_u64().unwrap())
        .sum();
    assert!(dropped > 0);
    (lines, dropped)
}

/// A tool run driven like a terminal: commands are sent one at a time, and the test waits for
/// the output lines it needs before it goes on (never for a guessed time).
pub struct Interactive {
    input: Option<DuplexStream>,
    output: tokio::io::Lines<tokio::io::BufReader<DuplexStream>>,
    tool: tokio::task::JoinHandle<Result<(), String>>,
    /// Every line read so far.
    pub lines: Vec<Value>,
}

impl Interactive {
    /// Starts `run` on a pipe for input and a pipe for output.
    pub fn start<Fut>(
        run: impl FnOnce(tokio::io::BufReader<DuplexStream>, DuplexStream) -> Fut,
    ) -> Self
    where
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        use tokio::io::AsyncBufReadExt;
        let (input, tool_input) = tokio::io::duplex(1 << 16);
        let (tool_output, output) = tokio::io::duplex(1 << 20);
        let tool = tokio::spawn(run(tokio::io::BufReader::new(tool_input), tool_output));
        Self {
            input: Some(input),
            output: tokio::io::BufReader::new(output).lines(),
            tool,
            lines: Vec::new(),
        }
    }

    /// Sends one command.
    pub async fn send(&mut self, command: Value) {
        use tokio::io::AsyncWriteExt;
        let input = self.input.as_mut().unwrap();
        input
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
    }

    /// Sends one line as it is.
    pub async fn send_text(&mut self, text: &str) {
        use tokio::io::AsyncWriteExt;
        let input = self.input.as_mut().unwrap();
        input
            .write_all(format!("{text}\n").as_bytes())
            .await
            .unwrap();
    }

    /// Reads lines until one has every field of `wanted` (at most 10 s), and returns it.
    pub async fn wait_for(&mut self, wanted: &Value) -> Value {
        self.wait_for_nth(wanted, 1).await
    }

    /// Reads lines until `n` lines (counting those read before) have every field of `wanted`
    /// (at most 10 s), and returns the last of them.
    pub async fn wait_for_nth(&mut self, wanted: &Value, n: usize) -> Value {
        let matches = |line: &Value| {
            wanted
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| &line[k] == v)
        };
        let mut seen = self.lines.iter().filter(|l| matches(l)).count();
        if seen >= n {
            return self
                .lines
                .iter()
                .filter(|l| matches(l))
                .nth(n - 1)
                .unwrap()
                .clone();
        }
        let read = async {
            loop {
                let line = self.output.next_line().await.unwrap().unwrap_or_else(|| {
                    panic!("the output ended before {wanted}: {:#?}", self.lines)
                });
                let line: Value =
                    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
                self.lines.push(line.clone());
                if matches(&line) {
                    seen += 1;
                    if seen == n {
                        return line;
                    }
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(line) => line,
            Err(_) => panic!("no line like {wanted} (#{n}) in {:#?}", self.lines),
        }
    }

    /// Ends the input, reads the rest of the output, waits for the tool to end, and returns
    /// every line.
    pub async fn finish(mut self) -> Vec<Value> {
        drop(self.input.take());
        let rest = async {
            while let Some(line) = self.output.next_line().await.unwrap() {
                self.lines.push(
                    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}")),
                );
            }
        };
        tokio::time::timeout(Duration::from_secs(30), rest)
            .await
            .expect("the output did not end");
        tokio::time::timeout(Duration::from_secs(30), self.tool)
            .await
            .expect("the tool did not finish")
            .unwrap()
            .unwrap();
        self.lines
    }
}
