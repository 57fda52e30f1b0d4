//! Signing one large input on several threads with output identical to the
//! sequential chunker.
//!
//! The input is cut into pieces. Whether a position is a local maximum depends
//! only on the `h + w - 1` bytes before it and the `h` after, so the worker of
//! piece `k` starts that far before the piece and finds exactly the true local
//! maxima from the piece start on. It synchronises on the first one (`s_k`) and
//! emits chunks from there until the first local maximum at or after the next
//! piece's start, which is by definition `s_{k+1}`, where the next worker took
//! over. Forced cuts depend on the previous cut, which each worker knows from
//! its synchronisation point on. A piece with no local maximum at all only
//! makes its neighbour work longer; the result is still exact.
//!
//! Workers read through [`ReadAt`], so this module does no I/O of its own and
//! memory stays bounded: one read buffer per worker and the chunk lists of the
//! pieces in flight.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, mpsc};

use super::chunker::{Chunk, ChunkEnd, Chunker};
use super::filtermax::CutKind;
use super::params::Params;

/// Random-access input for the parallel signer (a file, a buffer).
pub trait ReadAt: Sync {
    /// Read error.
    type Error: Send;
    /// Length of the input in bytes.
    fn len(&self) -> u64;
    /// True when [`ReadAt::len`] is 0.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; the range is within [`ReadAt::len`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Self::Error>;
    /// The whole input, when it is already in memory (saves a copy).
    fn as_slice(&self) -> Option<&[u8]> {
        None
    }
}

impl ReadAt for [u8] {
    type Error = std::convert::Infallible;
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Self::Error> {
        let start = offset as usize;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }
    fn as_slice(&self) -> Option<&[u8]> {
        Some(self)
    }
}

/// Read size of each worker.
const READ_LEN: usize = 1 << 20;

/// Read size past a piece's end, where only the chunk that ends at the first
/// local maximum is missing (usually a few KiB on). Reading `READ_LEN` there
/// hashed up to 1 MiB for nothing per piece: a third of the work with 2 MiB
/// pieces.
const TAIL_READ_LEN: usize = 16 << 10;

/// Default bytes per piece of [`ParallelOptions`].
pub const DEFAULT_PIECE_LEN: u64 = 8 << 20;

/// Options of [`sign_parallel`].
#[derive(Debug, Clone, Copy)]
pub struct ParallelOptions {
    /// Worker threads (at least 1).
    pub threads: usize,
    /// Bytes per piece; each worker takes one piece at a time.
    pub piece_len: u64,
}

impl ParallelOptions {
    /// `threads` workers with the default 8 MiB pieces.
    pub fn new(threads: usize) -> Self {
        ParallelOptions {
            threads: threads.max(1),
            piece_len: DEFAULT_PIECE_LEN,
        }
    }

    /// Sets the piece length (at least 1 byte; small pieces only cost overlap).
    pub fn with_piece_len(mut self, piece_len: u64) -> Self {
        self.piece_len = piece_len.max(1);
        self
    }
}

/// Level-1 chunks of `src` in order, computed on `opts.threads` threads;
/// identical to [`super::Chunker`] on the same bytes.
pub fn sign_parallel<R: ReadAt + ?Sized>(
    src: &R,
    params: Params,
    opts: ParallelOptions,
    sink: &mut impl FnMut(&Chunk),
) -> Result<(), R::Error> {
    let len = src.len();
    let pieces = len.div_ceil(opts.piece_len).max(1);
    if opts.threads <= 1 || pieces <= 1 {
        return sign_piece(src, params, 0, len, len, &mut |c| sink(&c));
    }
    let next_piece = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    // Workers may run this many pieces ahead of the one being emitted.
    let ahead = 2 * opts.threads as u64;
    let emitted = Mutex::new(0u64);
    let advanced = Condvar::new();
    let (tx, rx) = mpsc::sync_channel::<(u64, Result<Vec<Chunk>, R::Error>)>(ahead as usize);
    std::thread::scope(|scope| {
        for _ in 0..opts.threads {
            let tx = tx.clone();
            let (next_piece, failed, emitted, advanced) =
                (&next_piece, &failed, &emitted, &advanced);
            scope.spawn(move || {
                loop {
                    let k = next_piece.fetch_add(1, Ordering::Relaxed);
                    if k >= pieces || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    {
                        let mut done = emitted.lock().unwrap_or_else(|e| e.into_inner());
                        while k >= *done + ahead && !failed.load(Ordering::Relaxed) {
                            done = advanced.wait(done).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let start = k * opts.piece_len;
                    let end = (start + opts.piece_len).min(len);
                    let mut out = Vec::with_capacity(((end - start) / 1024) as usize + 4);
                    let result = sign_piece(src, params, start, end, len, &mut |c| out.push(c))
                        .map(|()| out);
                    if tx.send((k, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut ready = BTreeMap::new();
        let mut want = 0u64;
        let mut error = None;
        for (k, result) in rx {
            ready.insert(k, result);
            while let Some(result) = ready.remove(&want) {
                match result {
                    Ok(chunks) if error.is_none() => chunks.iter().for_each(&mut *sink),
                    Ok(_) => {}
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        error.get_or_insert(e);
                    }
                }
                want += 1;
                *emitted.lock().unwrap_or_else(|e| e.into_inner()) = want;
                advanced.notify_all();
            }
            if error.is_some() {
                failed.store(true, Ordering::Relaxed);
                advanced.notify_all();
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

/// `n` bytes of `src` at `pos`: borrowed when the input is in memory, read
/// into `buf` otherwise.
fn view<'a, R: ReadAt + ?Sized>(
    src: &'a R,
    pos: u64,
    n: usize,
    buf: &'a mut Vec<u8>,
) -> Result<&'a [u8], R::Error> {
    match src.as_slice() {
        Some(all) => Ok(&all[pos as usize..pos as usize + n]),
        None => {
            buf.resize(n, 0);
            src.read_exact_at(buf, pos)?;
            Ok(&buf[..])
        }
    }
}

/// Whether bytes `from..to` of `src` all have one value. Reads a page
/// first: most data is not constant, and then costs no more than that.
fn constant<R: ReadAt + ?Sized>(
    src: &R,
    from: u64,
    to: u64,
    buf: &mut Vec<u8>,
) -> Result<bool, R::Error> {
    const PROBE: u64 = 4096;
    let mut value = None;
    let mut pos = from;
    while pos < to {
        let n = if pos == from { PROBE } else { READ_LEN as u64 }.min(to - pos) as usize;
        let data = view(src, pos, n, buf)?;
        let v = *value.get_or_insert(data[0]);
        if !super::chunker::all_equal(data, v) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

/// Chunks owned by the piece `[start, end)` of an input of `len` bytes, in
/// order, to `sink`: from the piece's synchronisation point to the first local
/// maximum at or after `end`.
fn sign_piece<R: ReadAt + ?Sized>(
    src: &R,
    params: Params,
    start: u64,
    end: u64,
    len: u64,
    sink: &mut impl FnMut(Chunk),
) -> Result<(), R::Error> {
    let margin = u64::from(params.horizon()) + u64::from(params.window()) - 1;
    let mut buf = Vec::new();
    // A piece inside a run of one byte value (zeros in a disk image) has no
    // local maximum: every H3 value its maxima depend on, over
    // `[start - h, end + h)`, hashes a window of that byte alone. The
    // previous piece runs through it, so it is not hashed here for nothing.
    // (`margin` is at least 1: the piece is not the first.)
    if start >= margin
        && constant(
            src,
            start - margin,
            len.min(end + u64::from(params.horizon())),
            &mut buf,
        )?
    {
        return Ok(());
    }
    let (mut chunker, mut pos) = if start == 0 {
        (Chunker::new(params), 0)
    } else {
        let base = start.saturating_sub(margin);
        (Chunker::resync(params, base, start), base)
    };
    let mut first = true;
    let mut done = false;
    let mut keep = |c: Chunk, how: ChunkEnd, done: &mut bool| {
        if *done {
            return;
        }
        if first && start > 0 && c.offset >= end {
            // Synchronised only past the piece: the previous piece covers it.
            *done = true;
            return;
        }
        first = false;
        sink(c);
        if c.end() >= end && how == ChunkEnd::Cut(CutKind::Max) {
            *done = true;
        }
    };
    // Past the piece, reads grow from `TAIL_READ_LEN`: a piece that runs
    // on through a long run of one value (which the chunker passes over in
    // whole chunks, given enough of it at once) is not read 16 KiB at a time.
    let mut tail = TAIL_READ_LEN;
    while pos < len && !done {
        let step = if pos < end {
            READ_LEN.min((end - pos) as usize)
        } else {
            let step = tail;
            tail = (tail * 2).min(READ_LEN);
            step
        };
        let n = step.min((len - pos) as usize);
        let data = view(src, pos, n, &mut buf)?;
        chunker.push_inner(data, &mut |c, how| keep(c, how, &mut done));
        pos += n as u64;
        if start > 0 && !chunker.has_cut() && chunker.decided() >= end {
            // No local maximum in the whole piece: the previous piece runs
            // through it (its forced cuts depend on its last maximum).
            done = true;
        }
    }
    if !done {
        chunker.finish_inner(&mut |c, how| keep(c, how, &mut done));
    }
    Ok(())
}
