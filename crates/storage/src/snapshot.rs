//! Snapshot files: a shard's whole state at one applied log id.
//!
//! A snapshot is built from a RocksDB snapshot (a consistent point-in-time view), so it can be
//! written while the shard keeps applying entries. It is a file of frames:
//!
//! ```text
//!   frame  = [len: u32 LE] [record: format, crc32, postcard payload]   (see crate::codec)
//!   file   = Header { shard, meta } · Chunk { kvs }* · Sessions { records }*
//!            · Streams { records }* · StreamsEnd { records } · End { keys, sessions }
//! ```
//!
//! `Streams` frames carry the shard's range of the `streams` family (topics, events, offsets,
//! change history) as raw key/value pairs, keys without the shard prefix; files written before
//! event streams existed have no `Streams`/`StreamsEnd` frames and still read.
//!
//! Chunks hold at most [`CHUNK_BYTES_MAX`] of keys and values, so neither writing, sending nor
//! reading a snapshot needs more memory than one chunk. Every frame has its own CRC32 and the
//! file must end with an `End` frame whose key count matches, so a truncated or damaged file
//! is rejected before anything is installed. Files are fsynced (and their directory too)
//! before the snapshot is recorded, so a recorded snapshot is always on disk.

use crate::ShardId;
use crate::codec::{self, CodecError};
use crate::sessions::SessionRecord;
use crate::type_config::SnapshotMeta;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Bytes of keys and values per chunk frame.
pub const CHUNK_BYTES_MAX: usize = 1 << 20;
/// Largest frame accepted when reading: a chunk plus its per-entry overhead. Anything larger is
/// damage, and refusing it keeps a bad length from allocating gigabytes.
pub const FRAME_BYTES_MAX: usize = 2 * CHUNK_BYTES_MAX + 4096;

/// The snapshot data openraft passes around: a file on local disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

/// One key of a snapshot: key, version, value.
pub type SnapshotKv = (Vec<u8>, u64, Vec<u8>);

#[derive(Debug, Serialize, Deserialize)]
pub enum Frame {
    Header { shard: ShardId, meta: SnapshotMeta },
    Chunk { kvs: Vec<SnapshotKv> },
    Sessions { records: Vec<(u64, SessionRecord)> },
    End { keys: u64, sessions: u64 },
    Streams { records: Vec<(Vec<u8>, Vec<u8>)> },
    StreamsEnd { records: u64 },
}

/// A piece of a snapshot's content.
#[derive(Debug)]
pub enum Chunk {
    Kvs(Vec<SnapshotKv>),
    Sessions(Vec<(u64, SessionRecord)>),
    /// Raw `streams` records: key (without the shard prefix), value.
    Streams(Vec<(Vec<u8>, Vec<u8>)>),
}

/// Session records per frame (each is well under 100 bytes plus its stored result).
const SESSIONS_PER_FRAME: usize = 4096;

/// Writes frames to a new file and makes it durable.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    path: PathBuf,
    pending: Vec<SnapshotKv>,
    pending_bytes: usize,
    keys: u64,
    pending_sessions: Vec<(u64, SessionRecord)>,
    sessions: u64,
    pending_streams: Vec<(Vec<u8>, Vec<u8>)>,
    pending_streams_bytes: usize,
    streams: u64,
}

impl SnapshotWriter {
    pub fn create(path: &Path, shard: ShardId, meta: &SnapshotMeta) -> io::Result<Self> {
        let out = BufWriter::new(File::create(path)?);
        let mut w = SnapshotWriter {
            out,
            path: path.to_owned(),
            pending: Vec::new(),
            pending_bytes: 0,
            keys: 0,
            pending_sessions: Vec::new(),
            sessions: 0,
            pending_streams: Vec::new(),
            pending_streams_bytes: 0,
            streams: 0,
        };
        w.frame(&Frame::Header { shard, meta: meta.clone() })?;
        Ok(w)
    }

    fn frame(&mut self, frame: &Frame) -> io::Result<()> {
        let raw = codec::encode(frame).map_err(io::Error::other)?;
        let len = u32::try_from(raw.len()).map_err(io::Error::other)?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&raw)
    }

    pub fn push(&mut self, key: Vec<u8>, version: u64, value: Vec<u8>) -> io::Result<()> {
        self.pending_bytes += key.len() + value.len() + 16;
        self.pending.push((key, version, value));
        self.keys += 1;
        if self.pending_bytes >= CHUNK_BYTES_MAX {
            self.flush_chunk()?;
        }
        Ok(())
    }

    /// Adds a session record; call after every key has been pushed.
    pub fn push_session(&mut self, client: u64, rec: SessionRecord) -> io::Result<()> {
        self.flush_chunk()?;
        self.pending_sessions.push((client, rec));
        self.sessions += 1;
        if self.pending_sessions.len() >= SESSIONS_PER_FRAME {
            self.flush_sessions()?;
        }
        Ok(())
    }

    /// Adds a raw `streams` record; call after every key and session.
    pub fn push_stream(&mut self, key: Vec<u8>, value: Vec<u8>) -> io::Result<()> {
        self.flush_chunk()?;
        self.flush_sessions()?;
        self.pending_streams_bytes += key.len() + value.len() + 8;
        self.pending_streams.push((key, value));
        self.streams += 1;
        if self.pending_streams_bytes >= CHUNK_BYTES_MAX {
            self.flush_streams()?;
        }
        Ok(())
    }

    fn flush_streams(&mut self) -> io::Result<()> {
        if self.pending_streams.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.pending_streams);
        self.pending_streams_bytes = 0;
        self.frame(&Frame::Streams { records })
    }

    fn flush_sessions(&mut self) -> io::Result<()> {
        if self.pending_sessions.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.pending_sessions);
        self.frame(&Frame::Sessions { records })
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let kvs = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.frame(&Frame::Chunk { kvs })
    }

    /// Writes the end frame and fsyncs the file and its directory.
    pub fn finish(mut self) -> io::Result<SnapshotFile> {
        self.flush_chunk()?;
        self.flush_sessions()?;
        self.flush_streams()?;
        let records = self.streams;
        self.frame(&Frame::StreamsEnd { records })?;
        let (keys, sessions) = (self.keys, self.sessions);
        self.frame(&Frame::End { keys, sessions })?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        sync_dir(&self.path)?;
        Ok(SnapshotFile { path: self.path })
    }
}

/// fsyncs the directory holding `path`, so a newly created or renamed file survives a crash.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Reads a snapshot file frame by frame, checking every CRC.
pub struct SnapshotReader {
    input: BufReader<File>,
    keys_seen: u64,
    sessions_seen: u64,
    streams_seen: u64,
    /// Whether the streams end frame was read: a snapshot with stream records must have one,
    /// or a deleted end frame would go unnoticed.
    streams_ended: bool,
    done: bool,
}

fn bad(msg: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("corrupt snapshot: {msg}"))
}

impl SnapshotReader {
    /// Opens a snapshot and returns its header.
    pub fn open(path: &Path) -> io::Result<(Self, ShardId, SnapshotMeta)> {
        let input = BufReader::new(File::open(path)?);
        let mut r = SnapshotReader {
            input,
            keys_seen: 0,
            sessions_seen: 0,
            streams_seen: 0,
            streams_ended: false,
            done: false,
        };
        match r.frame()? {
            Some(Frame::Header { shard, meta }) => Ok((r, shard, meta)),
            _ => Err(bad("missing header")),
        }
    }

    fn frame(&mut self) -> io::Result<Option<Frame>> {
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > FRAME_BYTES_MAX {
            return Err(bad(format!("frame of {len} bytes exceeds {FRAME_BYTES_MAX}")));
        }
        let mut raw = vec![0u8; len];
        self.input.read_exact(&mut raw).map_err(|e| bad(format!("truncated frame: {e}")))?;
        codec::decode(&raw).map(Some).map_err(|e: CodecError| bad(e))
    }

    /// The next chunk of keys or sessions, or `None` after a valid end frame.
    pub fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        if self.done {
            return Ok(None);
        }
        match self.frame()? {
            Some(Frame::Chunk { kvs }) => {
                self.keys_seen += kvs.len() as u64;
                Ok(Some(Chunk::Kvs(kvs)))
            }
            Some(Frame::Sessions { records }) => {
                self.sessions_seen += records.len() as u64;
                Ok(Some(Chunk::Sessions(records)))
            }
            Some(Frame::Streams { records }) => {
                self.streams_seen += records.len() as u64;
                Ok(Some(Chunk::Streams(records)))
            }
            Some(Frame::StreamsEnd { records }) if records == self.streams_seen => {
                self.streams_ended = true;
                self.next_chunk()
            }
            Some(Frame::StreamsEnd { records }) => Err(bad(format!(
                "streams end frame says {records} records, read {}",
                self.streams_seen
            ))),
            Some(Frame::End { keys, sessions })
                if keys == self.keys_seen && sessions == self.sessions_seen =>
            {
                if self.streams_seen > 0 && !self.streams_ended {
                    return Err(bad("stream records without their end frame"));
                }
                // Nothing may follow the end frame: bytes there are damage or another file.
                let mut byte = [0u8; 1];
                if self.input.read(&mut byte)? != 0 {
                    return Err(bad("bytes after the end frame"));
                }
                self.done = true;
                Ok(None)
            }
            Some(Frame::End { keys, sessions }) => Err(bad(format!(
                "end frame says {keys} keys and {sessions} sessions, read {} and {}",
                self.keys_seen, self.sessions_seen
            ))),
            Some(Frame::Header { .. }) => Err(bad("second header")),
            None => Err(bad("file ends without an end frame")),
        }
    }
}
