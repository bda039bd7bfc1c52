//! Folders of adapter files, looked up by the names prompts use: `<lora:NAME:…>` and
//! `<hypernet:NAME:…>` (AUTOMATIC1111's `models/Lora` and `models/hypernetworks`), and the
//! textual-inversion embeddings of a folder (A1111's `embeddings/`), triggered by name.
//!
//! Names match as A1111 matches them: a LoRA by its file name without extension, or by the
//! `ss_output_name` its training tool recorded (`extensions-builtin/Lora/networks.py`,
//! `available_network_aliases`); a hypernetwork by its file name without extension
//! (`modules/hypernetworks/hypernetwork.py`, `list_hypernetworks`). Folders are searched
//! recursively. Loaded adapters are cached, keyed by path, size and modification time, so a
//! file edited on disk is read again and an unchanged one is not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{Embedding, Hypernetwork, Lora};
use crate::error::{Error, Result};
use crate::weights::SafetensorsFile;
use crate::weights::TensorSource;

/// Extensions of LoRA files (A1111 lists these in `networks.list_available_networks`).
const LORA_EXTENSIONS: [&str; 4] = ["safetensors", "pt", "ckpt", "bin"];
/// Extensions of hypernetwork files.
const HYPERNETWORK_EXTENSIONS: [&str; 1] = ["pt"];
/// Extensions of embedding files (A1111 also reads embeddings hidden in images).
const EMBEDDING_EXTENSIONS: [&str; 5] = ["pt", "bin", "safetensors", "png", "webp"];
/// Folder levels searched below each root.
const MAX_DEPTH: usize = 8;
/// Files looked at per search, so a huge tree cannot stall a generation.
const MAX_FILES: usize = 100_000;

/// A file's identity for the cache: its size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> Result<Stamp> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    Ok(Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

#[derive(Debug)]
struct Cache<T> {
    entries: HashMap<PathBuf, (Stamp, Arc<T>)>,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            entries: HashMap::new(),
        }
    }
}

impl<T> Cache<T> {
    fn get_or_load(
        &mut self,
        path: &Path,
        load: impl FnOnce(&Path) -> Result<T>,
    ) -> Result<Arc<T>> {
        let now = stamp(path)?;
        if let Some((seen, value)) = self.entries.get(path)
            && *seen == now
        {
            return Ok(value.clone());
        }
        let value = Arc::new(load(path)?);
        self.entries
            .insert(path.to_path_buf(), (now, value.clone()));
        Ok(value)
    }
}

/// Folders in which prompts' `<lora:…>` and `<hypernet:…>` tags are resolved, with a cache of
/// what was loaded from them (and from files named directly, [`lora_file`](Self::lora_file)).
/// Share one between generations (it is `Send + Sync`).
#[derive(Debug, Default)]
pub struct AdapterLibrary {
    lora_dirs: Vec<PathBuf>,
    hypernetwork_dirs: Vec<PathBuf>,
    caches: Arc<Caches>,
}

/// What was loaded, shared by libraries made with [`AdapterLibrary::with_folders`].
#[derive(Debug, Default)]
struct Caches {
    loras: Mutex<Cache<Lora>>,
    hypernetworks: Mutex<Cache<Hypernetwork>>,
}

impl AdapterLibrary {
    /// A library with no folders: every tag is then an error naming the missing folder.
    pub fn new() -> Self {
        AdapterLibrary::default()
    }

    /// Adds a folder of LoRA / LyCORIS files (searched in the order added).
    pub fn with_lora_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.lora_dirs.push(dir.into());
        self
    }

    /// Adds a folder of hypernetwork files (searched in the order added).
    pub fn with_hypernetwork_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.hypernetwork_dirs.push(dir.into());
        self
    }

    /// A library searching other folders but sharing this one's cache of loaded files: for a
    /// program that keeps one library per model and takes folders per request.
    pub fn with_folders(&self, lora_dirs: Vec<PathBuf>, hypernetwork_dirs: Vec<PathBuf>) -> Self {
        AdapterLibrary {
            lora_dirs,
            hypernetwork_dirs,
            caches: self.caches.clone(),
        }
    }

    /// The LoRA folders.
    pub fn lora_dirs(&self) -> &[PathBuf] {
        &self.lora_dirs
    }

    /// The hypernetwork folders.
    pub fn hypernetwork_dirs(&self) -> &[PathBuf] {
        &self.hypernetwork_dirs
    }

    /// The LoRA in the file at `path`, loaded once and kept while the file is unchanged (so the
    /// patched models built for it are reused too).
    ///
    /// # Errors
    /// The errors of [`Lora::open`].
    pub fn lora_file(&self, path: impl AsRef<Path>) -> Result<Arc<Lora>> {
        lock(&self.caches.loras)?.get_or_load(path.as_ref(), |p| Lora::open(p))
    }

    /// The hypernetwork in the file at `path`, loaded once and kept while the file is unchanged.
    ///
    /// # Errors
    /// The errors of [`Hypernetwork::open`].
    pub fn hypernetwork_file(&self, path: impl AsRef<Path>) -> Result<Arc<Hypernetwork>> {
        lock(&self.caches.hypernetworks)?.get_or_load(path.as_ref(), |p| Hypernetwork::open(p))
    }

    /// The LoRA a `<lora:NAME>` tag means: the file whose name without extension is `name`,
    /// else the `.safetensors` file whose `ss_output_name` metadata is `name`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the tag and the folders searched when no file matches;
    /// the errors of [`Lora::open`] for the file found.
    pub fn lora(&self, name: &str) -> Result<Arc<Lora>> {
        let path = match find_by_stem(&self.lora_dirs, name, &LORA_EXTENSIONS)? {
            Some(p) => p,
            None => find_by_output_name(&self.lora_dirs, name)?.ok_or_else(|| {
                not_found(
                    "lora",
                    name,
                    &self.lora_dirs,
                    "a file named NAME.safetensors",
                )
            })?,
        };
        lock(&self.caches.loras)?.get_or_load(&path, |p| Lora::open(p))
    }

    /// The hypernetwork a `<hypernet:NAME>` tag means: the `.pt` file whose name without
    /// extension is `name`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when no file matches; the errors of [`Hypernetwork::open`].
    pub fn hypernetwork(&self, name: &str) -> Result<Arc<Hypernetwork>> {
        let path = find_by_stem(&self.hypernetwork_dirs, name, &HYPERNETWORK_EXTENSIONS)?
            .ok_or_else(|| {
                not_found(
                    "hypernet",
                    name,
                    &self.hypernetwork_dirs,
                    "a file named NAME.pt",
                )
            })?;
        lock(&self.caches.hypernetworks)?.get_or_load(&path, |p| Hypernetwork::open(p))
    }
}

/// The embeddings of a folder, and the files in it that could not be read.
#[derive(Debug, Default)]
pub struct EmbeddingDir {
    /// The embeddings loaded, in path order.
    pub embeddings: Vec<Arc<Embedding>>,
    /// Each file that could not be read as an embedding, with why.
    pub skipped: Vec<(PathBuf, Error)>,
}

/// Loads every embedding file in `dir` (recursively), as A1111 loads its embeddings folder:
/// files that cannot be read are listed as skipped rather than failing the whole folder.
///
/// # Errors
/// Only when `dir` itself cannot be read.
pub fn load_embedding_dir(dir: impl AsRef<Path>) -> Result<EmbeddingDir> {
    let dir = dir.as_ref();
    let mut files = Vec::new();
    walk(dir, 0, &mut files, &mut 0)?;
    files.sort();
    let mut out = EmbeddingDir::default();
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // A1111 skips preview images stored beside the embeddings.
        if name.ends_with(".preview.png") || !has_extension(&path, &EMBEDDING_EXTENSIONS) {
            continue;
        }
        match Embedding::open(&path) {
            Ok(e) => out.embeddings.push(Arc::new(e)),
            Err(e) => out.skipped.push((path, e)),
        }
    }
    Ok(out)
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| Error::Internal("adapter cache lock poisoned by a panic".into()))
}

fn not_found(kind: &str, name: &str, dirs: &[PathBuf], expected: &str) -> Error {
    let searched = if dirs.is_empty() {
        format!("no {kind} folder is set")
    } else {
        format!(
            "searched {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Error::invalid_argument(
        "prompt",
        format!("<{kind}:{name}> names no file ({searched}; expected {expected})"),
    )
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Collects the regular files below `dir`, depth- and count-bounded.
fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>, seen: &mut usize) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut subdirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        *seen += 1;
        if *seen > MAX_FILES {
            return Err(Error::invalid_argument(
                "adapter folder",
                format!("{} holds more than {MAX_FILES} entries", dir.display()),
            ));
        }
        let path = entry.path();
        // Follows links to files and folders (std::fs::metadata), as A1111's os.walk does for
        // files; the depth bound stops link cycles.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => out.push(path),
            Ok(m) if m.is_dir() && depth < MAX_DEPTH => subdirs.push(path),
            _ => {}
        }
    }
    subdirs.sort();
    for sub in subdirs {
        walk(&sub, depth + 1, out, seen)?;
    }
    Ok(())
}

/// The first file (folders in order, files sorted) whose stem is `name` and whose extension is
/// one of `extensions`.
fn find_by_stem(dirs: &[PathBuf], name: &str, extensions: &[&str]) -> Result<Option<PathBuf>> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Ok(None);
    }
    for dir in dirs {
        let mut files = Vec::new();
        walk(dir, 0, &mut files, &mut 0)?;
        files.sort();
        if let Some(found) = files.into_iter().find(|p| {
            has_extension(p, extensions) && p.file_stem().and_then(|s| s.to_str()) == Some(name)
        }) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The first `.safetensors` file whose `ss_output_name` metadata is `name` (the header alone is
/// read, through the validated reader).
fn find_by_output_name(dirs: &[PathBuf], name: &str) -> Result<Option<PathBuf>> {
    for dir in dirs {
        let mut files = Vec::new();
        walk(dir, 0, &mut files, &mut 0)?;
        files.sort();
        for path in files
            .into_iter()
            .filter(|p| has_extension(p, &["safetensors"]))
        {
            let Ok(file) = SafetensorsFile::open(&path) else {
                continue;
            };
            if file.metadata().get("ss_output_name").map(String::as_str) == Some(name) {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_names_and_folders_are_named_in_the_error() {
        let lib = AdapterLibrary::new();
        let e = lib.lora("style").expect_err("no folder");
        assert!(e.to_string().contains("<lora:style>"), "{e}");
        assert!(e.to_string().contains("no lora folder"), "{e}");
        let dir = std::env::temp_dir().join(format!("sdrs-lib-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("dir");
        let lib = AdapterLibrary::new().with_hypernetwork_dir(&dir);
        let e = lib.hypernetwork("../x").expect_err("path-like name");
        assert!(e.to_string().contains("searched"), "{e}");
        std::fs::write(dir.join("sub/anime.pt"), b"not a pickle").expect("write");
        let e = lib.hypernetwork("anime").expect_err("bad file");
        assert!(e.to_string().contains("anime.pt"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
