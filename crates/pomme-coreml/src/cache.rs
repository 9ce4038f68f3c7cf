//! The compiled-model cache's bookkeeping, in plain Rust so it is tested
//! everywhere (the compiling itself is macOS only).
//!
//! - [`content_key`]: a compiled `.mlmodelc` is keyed by the model's content
//!   and the OS build, not by compute units (Core ML compiles one bundle for
//!   every device and specializes at load). Hashing a large package at every
//!   load is wasted work, so the key is remembered next to the cache with the
//!   files' sizes and modification times, and re-hashed only when those change.
//! - [`touch`] / [`evict_lru`]: a size cap on the cache; least recently used
//!   bundles go first, never the one being loaded.
//! - [`bundle_weight_bytes`]: what a compiled bundle's weights take, for the
//!   memory estimate of models loaded from `.mlmodelc`.

use pomme_core::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Every regular file under `root` as (relative path, absolute path), sorted;
/// a file is itself.
pub fn files(root: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    if root.is_file() {
        return Ok(vec![(String::new(), root.to_path_buf())]);
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push((rel, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// (relative path, size, modification time in ns) of every file.
type Fingerprint = Vec<(String, u64, u128)>;

fn fingerprint(model: &Path) -> std::io::Result<Fingerprint> {
    files(model)?
        .into_iter()
        .map(|(rel, abs)| {
            let m = std::fs::metadata(&abs)?;
            let mtime = m
                .modified()?
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            Ok((rel, m.len(), mtime))
        })
        .collect()
}

#[derive(Serialize, Deserialize)]
struct Remembered {
    model: PathBuf,
    os_build: String,
    fingerprint: Fingerprint,
    key: String,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_err(model: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::InvalidModelFormat(format!("{}: {e}", model.display()))
}

/// The cache key of `model` (a file or a package) under `os_build`: a SHA-256
/// of its files' names and contents and the OS build. Remembered in
/// `cache/keys/`, and reused while every file keeps its size and mtime.
pub fn content_key(model: &Path, os_build: &str, cache: &Path) -> Result<String> {
    let io = io_err(model);
    let abs = model.canonicalize().map_err(&io)?;
    let memo = cache.join("keys").join(format!(
        "{}.json",
        hex(&Sha256::digest(abs.to_string_lossy().as_bytes()))
    ));
    let fp = fingerprint(&abs).map_err(&io)?;
    if let Some(r) = std::fs::read(&memo)
        .ok()
        .and_then(|b| serde_json::from_slice::<Remembered>(&b).ok())
        && r.model == abs
        && r.os_build == os_build
        && r.fingerprint == fp
    {
        return Ok(r.key);
    }
    let mut h = Sha256::new();
    for (rel, file) in files(&abs).map_err(&io)? {
        h.update(rel.as_bytes());
        h.update([0]);
        let bytes = std::fs::read(file).map_err(&io)?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    h.update(b"\0os=");
    h.update(os_build.as_bytes());
    let key = hex(&h.finalize());
    // Best effort: without the memo the next load hashes again.
    let remembered = Remembered {
        model: abs,
        os_build: os_build.to_string(),
        fingerprint: fp,
        key: key.clone(),
    };
    if let (Some(dir), Ok(json)) = (memo.parent(), serde_json::to_vec(&remembered))
        && std::fs::create_dir_all(dir).is_ok()
    {
        let tmp = memo.with_extension(format!("tmp-{}", std::process::id()));
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, &memo);
        }
    }
    Ok(key)
}

fn used_marker(bundle: &Path) -> PathBuf {
    let mut name = bundle.file_name().unwrap_or_default().to_os_string();
    name.push(".used");
    bundle.with_file_name(name)
}

/// Records that `bundle` was used now (a `<bundle>.used` file beside it, so
/// the bundle itself is never written to).
pub fn touch(bundle: &Path) {
    let _ = std::fs::write(used_marker(bundle), b"");
}

fn size_of(dir: &Path) -> u64 {
    files(dir).map_or(0, |fs| {
        fs.iter()
            .filter_map(|(_, p)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    })
}

/// Removes the least recently used compiled bundles in `cache` until the
/// bundles take at most `max_bytes`; `keep` (the bundle being loaded) is
/// never removed. Returns the removed bundles.
pub fn evict_lru(cache: &Path, max_bytes: u64, keep: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut bundles: Vec<(SystemTime, u64, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.extension().is_some_and(|x| x == "mlmodelc"))
        .map(|p| {
            let used = std::fs::metadata(used_marker(&p))
                .or_else(|_| std::fs::metadata(&p))
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            (used, size_of(&p), p)
        })
        .collect();
    let mut total: u64 = bundles.iter().map(|b| b.1).sum();
    bundles.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(&b.2)));
    let mut removed = Vec::new();
    for (_, size, path) in bundles {
        if total <= max_bytes {
            break;
        }
        if path == keep {
            continue;
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            let _ = std::fs::remove_file(used_marker(&path));
            total = total.saturating_sub(size);
            removed.push(path);
        }
    }
    removed
}

/// Bytes of a compiled bundle's weights: ML Programs keep them in
/// `weights/`, neural networks in `*.espresso.weights` (or `model.espresso.*`
/// under `model*/`); the whole bundle when neither is found.
pub fn bundle_weight_bytes(bundle: &Path) -> u64 {
    let Ok(all) = files(bundle) else { return 0 };
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let weights: u64 = all
        .iter()
        .filter(|(rel, _)| rel.starts_with("weights/") || rel.ends_with(".espresso.weights"))
        .map(|(_, p)| size(p))
        .sum();
    if weights > 0 {
        weights
    } else {
        all.iter().map(|(_, p)| size(p)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(dir: &Path, payload: &[u8]) -> PathBuf {
        let pkg = dir.join("m.mlpackage");
        std::fs::create_dir_all(pkg.join("Data/weights")).unwrap();
        std::fs::write(pkg.join("Manifest.json"), b"{}").unwrap();
        std::fs::write(pkg.join("Data/weights/weight.bin"), payload).unwrap();
        pkg
    }

    #[test]
    fn key_follows_content_and_os_not_units_and_is_remembered() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let pkg = package(tmp.path(), b"abc");
        let k1 = content_key(&pkg, "24A335", &cache).unwrap();
        assert_eq!(k1.len(), 64);
        assert_eq!(content_key(&pkg, "24A335", &cache).unwrap(), k1);
        assert_ne!(content_key(&pkg, "25B5", &cache).unwrap(), k1);
        // Remembered: the memo answers while sizes and mtimes are unchanged.
        let memo_dir = cache.join("keys");
        assert_eq!(std::fs::read_dir(&memo_dir).unwrap().count(), 1);
        let memo = std::fs::read_dir(&memo_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        // (it holds the 25B5 key now: hashing for 24A335 again refills it)
        assert_eq!(content_key(&pkg, "24A335", &cache).unwrap(), k1);
        let text = std::fs::read_to_string(&memo).unwrap();
        std::fs::write(&memo, text.replace(&k1, "remembered")).unwrap();
        assert_eq!(content_key(&pkg, "24A335", &cache).unwrap(), "remembered");
        // A changed file (new size) is hashed again.
        std::fs::write(pkg.join("Data/weights/weight.bin"), b"abcd").unwrap();
        let k2 = content_key(&pkg, "24A335", &cache).unwrap();
        assert_ne!(k2, k1);
        assert_ne!(k2, "remembered");
        // A single file works too.
        let f = tmp.path().join("m.mlmodel");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(content_key(&f, "a", &cache).unwrap().len(), 64);
    }

    #[test]
    fn lru_eviction_keeps_the_cap_and_the_bundle_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path();
        let bundle = |name: &str, bytes: usize| {
            let b = cache.join(format!("{name}.mlmodelc"));
            std::fs::create_dir_all(b.join("weights")).unwrap();
            std::fs::write(b.join("weights/weight.bin"), vec![0u8; bytes]).unwrap();
            b
        };
        let (a, b, c) = (bundle("a", 100), bundle("b", 100), bundle("c", 100));
        let at = |p: &Path, secs: u64| {
            touch(p);
            let f = std::fs::File::options()
                .write(true)
                .open(used_marker(p))
                .unwrap();
            f.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .unwrap();
        };
        at(&a, 1_000);
        at(&b, 3_000);
        at(&c, 2_000);
        // Over 250 bytes: the oldest (a) goes.
        assert_eq!(evict_lru(cache, 250, &c), vec![a.clone()]);
        assert!(!a.exists() && !used_marker(&a).exists());
        // Down to 100: c is older than b, but c is in use, so b goes.
        assert_eq!(evict_lru(cache, 100, &c), vec![b.clone()]);
        assert!(c.exists());
        assert!(
            evict_lru(cache, 0, &c).is_empty(),
            "the bundle in use stays"
        );
        assert_eq!(bundle_weight_bytes(&c), 100);
    }

    #[test]
    fn weights_of_compiled_bundles() {
        let tmp = tempfile::tempdir().unwrap();
        let nn = tmp.path().join("nn.mlmodelc");
        std::fs::create_dir_all(&nn).unwrap();
        std::fs::write(nn.join("model.espresso.weights"), vec![0u8; 60]).unwrap();
        std::fs::write(nn.join("coremldata.bin"), vec![0u8; 7]).unwrap();
        assert_eq!(bundle_weight_bytes(&nn), 60);
        let other = tmp.path().join("x.mlmodelc");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("coremldata.bin"), vec![0u8; 7]).unwrap();
        assert_eq!(bundle_weight_bytes(&other), 7);
    }
}
