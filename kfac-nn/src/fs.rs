//! Files written atomically: a crash leaves the old file or the new one,
//! never a partial one.
//!
//! Every file is written to a temporary name in the same directory, synced
//! to disk and renamed over the target, so a crash never leaves a truncated
//! file behind and an existing file is replaced only by a complete one.
//!
//! - **Targets.** A target must be a regular file or not exist: a
//!   directory, a FIFO, a device or a socket is refused
//!   ([`destination`]), and is never replaced. A symbolic link is followed:
//!   the file it names is replaced (atomically, in that file's directory)
//!   and the link stays; a dangling link is refused.
//! - **Modes.** A replaced file keeps its permission bits (a checkpoint
//!   made private with `chmod 600` stays so). A new file gets the default
//!   of the process, `0666` less the umask (`0644` with the usual umask
//!   `022`).
//! - **Temporary files** are named `.<start of the name>.<pid>.<n>.tmp`
//!   (with the target's extension when it is short, which the plotting
//!   library needs): at most 80 bytes, so any legal target name works. A
//!   failed write (a full disk, say) removes its temporary file;
//!   [`remove_temporaries`] removes those in progress (the command calls
//!   it on SIGINT and SIGTERM). Only a process killed outright (SIGKILL,
//!   a power cut) can leave one behind.
//! - **Completion.** [`write_run`](crate::report::write_run) writes `metrics.json` last, and removes
//!   the previous one first: a directory whose `metrics.json` exists holds
//!   the `metrics.csv` and `loss.png` of the same run. [`write_comparison`](crate::report::write_comparison)
//!   does the same with `compare.json`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// The temporary files being written, and whether new ones are refused
/// (after [`remove_temporaries`]).
static TEMPORARIES: Mutex<(Vec<PathBuf>, bool)> = Mutex::new((Vec::new(), false));

fn temporaries() -> std::sync::MutexGuard<'static, (Vec<PathBuf>, bool)> {
    TEMPORARIES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes every temporary file being written and refuses new ones: what
/// the command does when it is interrupted (SIGINT, SIGTERM) before it
/// exits. Writes in progress then fail; the files they were replacing are
/// left as they were.
pub fn remove_temporaries() {
    let mut t = temporaries();
    t.1 = true;
    for p in t.0.drain(..) {
        let _ = fs::remove_file(p);
    }
}

/// A temporary file beside `dest`: created (so it exists, empty), and
/// removed on drop unless it was renamed over its target.
struct Temporary {
    path: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl Temporary {
    /// A new temporary name in the directory of `dest` (the resolved
    /// target), registered for [`remove_temporaries`].
    fn beside(dest: &Path) -> std::io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut cut = name.len().min(32);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let ext = dest.extension().map(|e| e.to_string_lossy().into_owned()).filter(|e| e.len() <= 8);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = format!(
            ".{}.{}.{n}.tmp{}",
            &name[..cut],
            std::process::id(),
            ext.map(|e| format!(".{e}")).unwrap_or_default()
        );
        let path = dest.with_file_name(tmp);
        let mut t = temporaries();
        if t.1 {
            return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted"));
        }
        t.0.push(path.clone());
        Ok(Self { path, dest: dest.to_path_buf(), done: false })
    }

    /// Syncs the temporary file and renames it over its target, then syncs
    /// the directory.
    fn commit(mut self) -> std::io::Result<()> {
        fs::File::open(&self.path)?.sync_all()?;
        fs::rename(&self.path, &self.dest)?;
        self.done = true;
        // Make the rename itself durable (a crash after it keeps the new file).
        if let Some(dir) = self.dest.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        let mut t = temporaries();
        t.0.retain(|p| p != &self.path);
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn not_regular(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{what} (a directory, FIFO, device or socket): refusing to replace it"),
    )
}

/// The file that writing `path` replaces: `path` itself if it is a regular
/// file or does not exist, the file a symbolic link names (which must be a
/// regular file) otherwise.
///
/// # Errors
///
/// [`Error::Io`] naming `path` if it is not a regular file, or a link to
/// something that is not, or a dangling link.
pub fn destination(path: &Path) -> Result<PathBuf> {
    let io = |e| Error::io(path, e);
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path.to_path_buf()),
        Err(e) => Err(io(e)),
        Ok(m) if m.file_type().is_symlink() => {
            let target = fs::canonicalize(path).map_err(|e| {
                io(std::io::Error::new(e.kind(), format!("a dangling symbolic link ({e}): refusing to follow it")))
            })?;
            match fs::metadata(&target) {
                Ok(t) if t.is_file() => Ok(target),
                Ok(_) => Err(io(not_regular(&format!("a symbolic link to {}, not a regular file", target.display())))),
                Err(e) => Err(io(e)),
            }
        }
        Ok(m) if m.is_file() => Ok(path.to_path_buf()),
        Ok(_) => Err(io(not_regular("not a regular file"))),
    }
}

/// A file written completely to a temporary name, renamed over its target
/// by [`Staged::commit`] (or removed, if dropped).
pub(crate) struct Staged {
    tmp: Temporary,
    target: PathBuf,
}

impl Staged {
    pub(crate) fn commit(self) -> Result<()> {
        let target = self.target;
        self.tmp.commit().map_err(|e| Error::io(&target, e))
    }
}

/// Writes a temporary file beside `path` (resolved by [`destination`]) with
/// `write`, which gets its name; `plot` names the target in plot errors.
pub(crate) fn stage(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<Staged> {
    let dest = destination(path)?;
    let tmp = Temporary::beside(&dest).map_err(|e| Error::io(path, e))?;
    write(&tmp.path)?;
    // The mode of the file it replaces.
    if let Ok(m) = fs::metadata(&dest) {
        fs::set_permissions(&tmp.path, m.permissions()).map_err(|e| Error::io(path, e))?;
    }
    Ok(Staged { tmp, target: path.to_path_buf() })
}

pub(crate) fn stage_bytes(path: &Path, bytes: &[u8]) -> Result<Staged> {
    stage(path, |tmp| {
        let mut f = fs::File::create(tmp).map_err(|e| Error::io(path, e))?;
        f.write_all(bytes).map_err(|e| Error::io(path, e))
    })
}

/// Replaces `path` by a complete file with `bytes`: write to a temporary
/// file beside it, sync, rename, sync the directory. A crash at any point
/// leaves either the old file or the new one, never a partial file. See
/// the [module docs](self) for targets, modes and temporary files.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    stage_bytes(path, bytes)?.commit()
}

/// Creates `dir` (and its parents) if needed.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Checks, before a run, that `dir` can receive `files`: it is (or is
/// created as) a directory in which a file can be written, and each of
/// `files` in it is a regular file or absent ([`destination`]).
///
/// # Errors
///
/// [`Error::Io`] naming what is wrong.
pub fn check_output_dir(dir: &Path, files: &[&str]) -> Result<()> {
    if let Ok(m) = fs::metadata(dir)
        && !m.is_dir()
    {
        return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory")));
    }
    ensure_dir(dir)?;
    probe(dir)?;
    for f in files {
        destination(&dir.join(f))?;
    }
    Ok(())
}

/// Checks, before a run, that `path` can be written: [`destination`]
/// accepts it and its directory exists and can receive a file. Returns the
/// file that will be replaced.
///
/// # Errors
///
/// [`Error::Io`] naming what is wrong.
pub fn check_output_file(path: &Path) -> Result<PathBuf> {
    let dest = destination(path)?;
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory")));
        }
        Err(e) => {
            return Err(Error::io(
                path,
                std::io::Error::new(e.kind(), format!("its directory {}: {e}", dir.display())),
            ));
        }
    }
    let tmp = Temporary::beside(&dest).map_err(|e| Error::io(path, e))?;
    fs::File::create(&tmp.path).map_err(|e| Error::io(path, e))?;
    Ok(dest)
}

/// Writes and removes a temporary file in `dir`.
fn probe(dir: &Path) -> Result<()> {
    let tmp = Temporary::beside(&dir.join("probe")).map_err(|e| Error::io(dir, e))?;
    fs::File::create(&tmp.path).map_err(|e| Error::io(dir, e))?;
    Ok(())
}

/// The path `p` will be written at, for comparing outputs: its resolved
/// destination with the directory made absolute.
pub fn resolved(p: &Path) -> Option<PathBuf> {
    let dest = destination(p).ok()?;
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some(fs::canonicalize(dir).ok()?.join(dest.file_name()?))
}

/// Renames `staged` over their targets in order, after removing `marker`
/// (the last of them): until the last rename the directory has no marker.
pub(crate) fn commit_all(marker: &Path, staged: Vec<Staged>) -> Result<()> {
    match fs::remove_file(marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(marker, e)),
        _ => {}
    }
    for s in staged {
        s.commit()?;
    }
    Ok(())
}
