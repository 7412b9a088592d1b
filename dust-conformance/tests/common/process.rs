//! The `dust-conformance-server` binary as a child process: its listening lines and its stdin
//! control protocol.

use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::within;

pub struct ServerProcess {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// `ws://127.0.0.1:PORT`
    pub base: String,
}

impl ServerProcess {
    /// Starts the binary with these arguments and reads its two `listening` lines.
    pub async fn start(args: &[&str]) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dust-conformance-server"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut line = async || {
            within("a listening line", stdout.next_line())
                .await
                .expect("read")
                .expect("a line")
        };
        let first = line().await;
        let second = line().await;
        let base = first
            .strip_prefix("listening ")
            .and_then(|u| u.strip_suffix("/socket"))
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        assert!(base.starts_with("ws://127.0.0.1:"), "{base}");
        assert_eq!(
            second,
            format!("listening {base}/ws/sync"),
            "the Dust socket on the same port"
        );
        ServerProcess {
            child,
            stdin,
            stdout,
            base,
        }
    }

    /// The echo socket, `ws://127.0.0.1:PORT/socket`.
    pub fn socket_url(&self) -> String {
        format!("{}/socket", self.base)
    }

    /// Sends one control command and reads its answer line.
    pub async fn command(&mut self, command: Value) -> Value {
        let stdin = self.stdin.as_mut().expect("stdin open");
        within("write", stdin.write_all(format!("{command}\n").as_bytes()))
            .await
            .expect("write to stdin");
        let answer = within("answer", self.stdout.next_line())
            .await
            .expect("read stdout")
            .expect("an answer line");
        serde_json::from_str(&answer).expect("JSON answer")
    }

    /// Closes stdin (the server stops when its control input ends).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill9(mut self) {
        self.child.start_kill().expect("kill");
        let status = within("exit", self.child.wait()).await.expect("wait");
        assert!(!status.success());
    }
}
