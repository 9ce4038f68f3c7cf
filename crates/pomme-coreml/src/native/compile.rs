//! `.mlmodel` / `.mlpackage` → `.mlmodelc`, cached by content.
//!
//! The cache key ([`crate::cache::content_key`]) is the SHA-256 of the model
//! bytes (every file of a package, with its relative path) and the OS build
//! (`sysctlbyname("kern.osversion")`, as the compiler changes with the OS),
//! remembered while the files keep their sizes and mtimes. Compute units are
//! not in it: one compiled bundle serves every device. A restart finds the
//! compiled bundle and skips compilation; the cache is kept under its size
//! cap by removing the least recently used bundles.

use super::{file_url, macos_at_least, ns_error, url_path};
use block2::RcBlock;
use objc2_core_ml::MLModel;
use objc2_foundation::{NSError, NSURL};
use pomme_core::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// How long one compilation may take.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(1800);

/// `sysctlbyname(name)` as a string.
pub(crate) fn sysctl_string(name: &std::ffi::CStr) -> Option<String> {
    let mut len: libc::size_t = 0;
    // SAFETY: a size query: null output buffer, `len` is a valid out-pointer.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            std::ptr::null_mut(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 || len == 0 {
        return None;
    }
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` has `len` writable bytes and `len` says so.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    buf.truncate(len);
    let s = std::ffi::CStr::from_bytes_until_nul(&buf).ok()?;
    Some(s.to_string_lossy().into_owned())
}

/// `sysctlbyname(name)` as a `u64`.
pub(crate) fn sysctl_u64(name: &std::ffi::CStr) -> Option<u64> {
    let mut v: u64 = 0;
    let mut len: libc::size_t = std::mem::size_of::<u64>();
    // SAFETY: `v` is a valid u64 out-buffer of `len` bytes.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            (&mut v as *mut u64).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0).then_some(v)
}

/// The compiled `.mlmodelc` for `model`: itself when already compiled, else
/// from the cache, else compiled now and stored; then bundles beyond
/// `max_bytes` are evicted, least recently used first.
pub(crate) fn compiled(model: &Path, cache: &Path, max_bytes: u64) -> Result<PathBuf> {
    if model
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mlmodelc"))
    {
        return Ok(model.to_path_buf());
    }
    let os = sysctl_string(c"kern.osversion").unwrap_or_default();
    let key = crate::cache::content_key(model, &os, cache)?;
    let dst = cache.join(format!("{key}.mlmodelc"));
    if !dst.is_dir() {
        store(model, cache, &key, &dst)?;
    }
    crate::cache::touch(&dst);
    for gone in crate::cache::evict_lru(cache, max_bytes, &dst) {
        tracing::info!(bundle = %gone.display(), "compiled Core ML model evicted (cache_max_mb)");
    }
    Ok(dst)
}

fn store(model: &Path, cache: &Path, key: &str, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(cache).map_err(|e| {
        Error::Unavailable(format!("cannot create cache dir {}: {e}", cache.display()))
    })?;
    let tmp = compile(model)?;
    // Stage next to the destination, then rename: a concurrent loader sees
    // either no bundle or a complete one.
    let staging = cache.join(format!("{key}.mlmodelc.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    if std::fs::rename(&tmp, &staging).is_err() {
        copy_dir(&tmp, &staging)
            .map_err(|e| Error::CompilationFailed(format!("cannot store compiled model: {e}")))?;
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if std::fs::rename(&staging, dst).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
        if !dst.is_dir() {
            return Err(Error::CompilationFailed(format!(
                "cannot move the compiled model to {}",
                dst.display()
            )));
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

/// Compiles into Core ML's temporary directory (the caller moves the result).
fn compile(model: &Path) -> Result<PathBuf> {
    super::catching("compilation", || compile_uncaught(model))
}

fn compile_uncaught(model: &Path) -> Result<PathBuf> {
    let url = file_url(model);
    if macos_at_least(13, 0) {
        let (tx, rx) = mpsc::channel::<Result<PathBuf>>();
        let handler = RcBlock::new(move |out: *mut NSURL, err: *mut NSError| {
            // SAFETY: Core ML passes a valid URL or a valid NSError (or null),
            // borrowed for the duration of the call only.
            let (out, err) = unsafe { (out.as_ref(), err.as_ref()) };
            let res = match (out, err) {
                (Some(u), _) => url_path(u).ok_or_else(|| {
                    Error::CompilationFailed("compiled model URL has no path".into())
                }),
                (None, Some(e)) => Err(Error::CompilationFailed(ns_error(e))),
                (None, None) => Err(Error::CompilationFailed(
                    "Core ML compilation failed without an error".into(),
                )),
            };
            let _ = tx.send(res);
        });
        // SAFETY: `url` is a valid file URL; the handler is a 'static block
        // owning only a Sender, called once by Core ML (macOS 13+, checked).
        unsafe { MLModel::compileModelAtURL_completionHandler(&url, &handler) };
        return rx.recv_timeout(COMPILE_TIMEOUT).map_err(|e| {
            Error::CompilationFailed(format!("Core ML compilation did not finish: {e}"))
        })?;
    }
    #[allow(deprecated)]
    // SAFETY: `url` is a valid file URL; the synchronous form exists on every
    // macOS the backend accepts (deprecated from macOS 13, used only below it).
    let out = unsafe { MLModel::compileModelAtURL_error(&url) }
        .map_err(|e| Error::CompilationFailed(ns_error(&e)))?;
    url_path(&out).ok_or_else(|| Error::CompilationFailed("compiled model URL has no path".into()))
}
