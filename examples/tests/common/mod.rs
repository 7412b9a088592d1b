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
