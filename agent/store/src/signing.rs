//! Signing files: level 1 on several threads, the levels above streamed from
//! level 1's records (`protocol::rdc`), reading through a [`ReadAt`].

use std::path::Path;

use anyhow::Context;
use peerdelta_protocol::rdc::{
    Chunk, LevelParams, MAX_LEVELS, ParallelOptions, ReadAt, SignatureBuilder, SignatureFiles,
    depth_for, sign_parallel,
};

use crate::fsutil::FileSource;

/// Signs `path` with `levels` levels; `sink(level, chunk)` sees every chunk.
/// With `keep_files` false the level files are not kept (bounded memory).
pub fn sign_file(
    path: &Path,
    params: LevelParams,
    levels: usize,
    threads: usize,
    keep_files: bool,
    sink: &mut impl FnMut(usize, &Chunk),
) -> anyhow::Result<SignatureFiles> {
    let src = FileSource::open(path)?;
    sign_source(&src, params, levels, threads, keep_files, sink)
        .with_context(|| format!("reading {}", path.display()))
}

/// [`sign_file`] over any random-access input.
pub fn sign_source<R>(
    src: &R,
    params: LevelParams,
    levels: usize,
    threads: usize,
    keep_files: bool,
    sink: &mut impl FnMut(usize, &Chunk),
) -> anyhow::Result<SignatureFiles>
where
    R: ReadAt + ?Sized,
    R::Error: std::error::Error + Send + Sync + 'static,
{
    let mut builder = SignatureBuilder::new(params, levels);
    if !keep_files {
        builder = builder.without_files();
    }
    let mut batch: Vec<Chunk> = Vec::with_capacity(4096);
    sign_parallel(
        src,
        params.level1,
        ParallelOptions::new(threads),
        &mut |c| {
            batch.push(*c);
            if batch.len() == batch.capacity() {
                builder.push_level1(&batch, sink);
                batch.clear();
            }
        },
    )?;
    builder.push_level1(&batch, sink);
    Ok(builder.finish(sink))
}

/// Every level `src` needs (as `depth_for` decides).
pub fn signature_levels<R>(
    src: &R,
    params: LevelParams,
    threads: usize,
) -> anyhow::Result<SignatureFiles>
where
    R: ReadAt + ?Sized,
    R::Error: std::error::Error + Send + Sync + 'static,
{
    let mut files = sign_source(src, params, MAX_LEVELS, threads, true, &mut |_, _| {})?;
    files.files.truncate(depth_for(&files.sizes()));
    Ok(files)
}
