//! Durability: an append-only journal of JSON lines, fsynced before a write is acknowledged.
//!
//! Every change to the stores (store created, op committed, archive, reset, compaction) is
//! one line. A dedicated thread appends and calls `fdatasync`; requests that arrive while it
//! syncs are written and synced together (group commit), and each waiter is answered only
//! after the sync that covers its line. Loading replays the lines; a last line without its
//! newline is the torn tail of a batch nobody was answered for, and is cut off.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::store::OpRow;
use crate::shared::lock;

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Record {
    /// The first line of a journal.
    Header { format: String, version: u32 },
    /// A store was created.
    Store {
        id: String,
        org: String,
        name: String,
    },
    /// An op was committed.
    Op { store: String, row: OpRow },
    /// A store was archived.
    Archive { store: String },
    /// A store was emptied (its seq back to 0).
    Reset { store: String },
    /// A store's op log was compacted into a snapshot.
    Compact { store: String, at: String },
    /// A blob's content, written the first time its hash is uploaded (before the op that
    /// references it), as the real server writes the blob file before its op.
    Blob {
        hash: String,
        content_base64: String,
        content_type: String,
        filename: Option<String>,
    },
}

const FORMAT: &str = "dust-conformance-journal";

enum Request {
    Append(Vec<u8>, oneshot::Sender<Result<(), String>>),
    Flush(oneshot::Sender<()>),
}

/// The journal writer (see the module docs).
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    tx: std::sync::Mutex<mpsc::Sender<Request>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Append(bytes, _) => write!(f, "Append({} bytes)", bytes.len()),
            Self::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl Journal {
    /// Opens (or creates) a journal and returns it with the records it holds.
    pub(crate) fn open(path: &Path) -> Result<(Self, Vec<Record>), String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| format!("cannot open: {e}"))?;
        if !existed {
            // The new file's directory entry must be durable too.
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(Ok(dir)) = dir.map(File::open) {
                let _ = dir.sync_all();
            }
        }
        let (records, good_len, total_len) = read_records(&mut file)?;
        if good_len < total_len {
            tracing::warn!(
                dropped = total_len - good_len,
                "the journal ends with a torn line (never acknowledged): cut off"
            );
            file.set_len(good_len)
                .map_err(|e| format!("cannot truncate: {e}"))?;
        }
        let mut records = records;
        if records.is_empty() {
            let header = Record::Header {
                format: FORMAT.to_owned(),
                version: 1,
            };
            let mut line = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
            line.push(b'\n');
            file.write_all(&line)
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot write: {e}"))?;
            records.push(header);
        }
        match records.first() {
            Some(Record::Header { format, version: 1 }) if format == FORMAT => {}
            _ => return Err("not a dust-conformance journal (bad first line)".to_owned()),
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("dust-journal".to_owned())
            .spawn(move || run(file, rx))
            .map_err(|e| format!("cannot start the journal thread: {e}"))?;
        Ok((
            Self {
                path: path.to_owned(),
                tx: std::sync::Mutex::new(tx),
            },
            records,
        ))
    }

    /// Reads the records again (a restart reloads the stores from them).
    pub(crate) fn reload(&self) -> Result<Vec<Record>, String> {
        let mut file = File::open(&self.path).map_err(|e| format!("cannot open: {e}"))?;
        let (records, _, _) = read_records(&mut file)?;
        Ok(records)
    }

    /// Appends a record; returns once it is on disk.
    pub(crate) async fn append(&self, record: &Record) -> Result<(), String> {
        let mut line = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let (done, wait) = oneshot::channel();
        lock(&self.tx)
            .send(Request::Append(line, done))
            .map_err(|_| "the journal thread is gone".to_owned())?;
        wait.await
            .map_err(|_| "the journal thread is gone".to_owned())?
    }

    /// Returns once every record appended so far is on disk.
    pub(crate) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if lock(&self.tx).send(Request::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// Parses the complete lines; returns them, the length they cover, and the file length.
fn read_records(file: &mut File) -> Result<(Vec<Record>, u64, u64), String> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    let good_len = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut records = Vec::new();
    for (n, line) in bytes[..good_len].split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let record = serde_json::from_slice(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        records.push(record);
    }
    Ok((records, good_len as u64, bytes.len() as u64))
}

fn run(mut file: File, rx: mpsc::Receiver<Request>) {
    // After a failed write the file may end with a partial line: refuse everything after it
    // rather than append to it.
    let mut broken: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let bytes: Vec<u8> = batch
            .iter()
            .filter_map(|r| match r {
                Request::Append(bytes, _) => Some(bytes.as_slice()),
                Request::Flush(_) => None,
            })
            .flatten()
            .copied()
            .collect();
        let result = match &broken {
            Some(error) => Err(format!("the journal failed earlier: {error}")),
            None if bytes.is_empty() => Ok(()),
            None => file
                .write_all(&bytes)
                .and_then(|()| file.sync_data())
                .map_err(|e| e.to_string()),
        };
        if let (Err(error), None) = (&result, &broken) {
            tracing::error!(%error, "journal write failed");
            broken = Some(error.clone());
        }
        for request in batch {
            match request {
                Request::Append(_, done) => {
                    let _ = done.send(result.clone());
                }
                Request::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn appends_reloads_and_cuts_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("dust-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state.jsonl");
        let (journal, records) = Journal::open(&path).unwrap();
        assert_eq!(records.len(), 1);
        let store = Record::Store {
            id: "id".into(),
            org: "acme".into(),
            name: "app".into(),
        };
        journal.append(&store).await.unwrap();
        assert_eq!(journal.reload().unwrap()[1], store);
        drop(journal);
        // A torn line, as a crash in the middle of a write leaves it.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"t":"reset","sto"#).unwrap();
        drop(file);
        let (_journal, records) = Journal::open(&path).unwrap();
        assert_eq!(records, vec![records[0].clone(), store]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("\"app\"}\n"), "{text}");
        // Anything but a journal is refused.
        std::fs::write(&path, format!("{}\n", json!({"t": "reset", "store": "x"}))).unwrap();
        assert!(Journal::open(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
