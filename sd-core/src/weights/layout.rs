//! Finding a model's components on disk, whichever layout it is in.
//!
//! [`ModelFiles::open`] accepts either a diffusers folder (`model_index.json` and/or the
//! `unet/ vae/ text_encoder/ tokenizer/ scheduler/` sub-folders) or a single checkpoint file in
//! the original layout (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`),
//! and returns one [`WeightStore`] per component, all exposing diffusers names.
//!
//! File formats are recognised by their content, never by their extension:
//! [`open_tensor_source`] sniffs the first bytes and dispatches: safetensors files to
//! [`SafetensorsFile`], PyTorch pickle checkpoints (`.ckpt`/`.pt`/`.bin`, zip or legacy) to
//! [`CkptFile`], which reads them without running any of their code. Both expose the same
//! tensor names and metadata, so everything after this point is format-blind.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ckpt::{Access, CkptFile};
use super::names::{self, DetectedFamily, KeyMapping};
use super::pickle::Limits;
use super::safetensors::{ReadMode, SafetensorsFile, SafetensorsLimits, escape_untrusted};
use super::store::{TensorSource, WeightStore};
use crate::error::{Error, Result};

/// Largest JSON configuration or index file read, in bytes.
const MAX_JSON_BYTES: u64 = 16 << 20;

/// How a model is laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A diffusers folder: one sub-folder per component.
    Diffusers,
    /// One file in the original (CompVis/LDM) layout, renamed on the fly.
    SingleFile,
}

/// Options for [`ModelFiles::open`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Read the UNet from the EMA copy (`model_ema.*`) of a single-file checkpoint where it has
    /// one. Default: the non-EMA weights, as diffusers and A1111 use.
    pub prefer_ema: bool,
    /// Memory-map files (default) or read them with `read` calls (for files another process
    /// might truncate).
    pub read_mode: ReadMode,
    /// A diffusers weight variant to prefer (`"fp16"` picks `*.fp16.safetensors`). Without it,
    /// the plain file is used, falling back to any variant present.
    pub variant: Option<String>,
}

/// The components of a model, each readable under diffusers names.
#[derive(Debug)]
pub struct ModelFiles {
    /// The layout found.
    pub layout: Layout,
    /// The path that was opened.
    pub model_path: PathBuf,
    /// UNet weights.
    pub unet: WeightStore,
    /// VAE weights.
    pub vae: WeightStore,
    /// Text-encoder weights.
    pub text_encoder: WeightStore,
    /// `unet/config.json`, if present.
    pub unet_config: Option<serde_json::Value>,
    /// `vae/config.json`, if present.
    pub vae_config: Option<serde_json::Value>,
    /// `text_encoder/config.json`, if present.
    pub text_encoder_config: Option<serde_json::Value>,
    /// `scheduler/scheduler_config.json`, if present.
    pub scheduler_config: Option<serde_json::Value>,
    /// `model_index.json`, if present.
    pub model_index: Option<serde_json::Value>,
    /// The `tokenizer/` folder, if present.
    pub tokenizer_dir: Option<PathBuf>,
    /// Stored keys that no renaming rule matched (single-file layout), with full names.
    pub unmapped_keys: Vec<String>,
    /// Stored keys recognised and deliberately unused (the EMA copy not chosen, training
    /// buffers).
    pub ignored_keys: Vec<String>,
    /// Whether the UNet is read from the EMA copy.
    pub uses_ema: bool,
    /// String metadata of the single file (safetensors `__metadata__`; for a pickle checkpoint
    /// the root's scalar entries such as `global_step`), empty for folders.
    pub metadata: HashMap<String, String>,
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// safetensors: 8-byte header size followed by a JSON object.
    Safetensors,
    /// A zip archive (PyTorch ≥ 1.6 `torch.save`, a `.ckpt`/`.pt`/`.bin`).
    Zip,
    /// A raw pickle stream (PyTorch's legacy non-zip format starts with one).
    Pickle,
    /// A tar archive (PyTorch ≤ 0.1.9).
    Tar,
    /// A 7-zip archive.
    SevenZip,
    /// A GGUF file.
    Gguf,
    /// An empty file.
    Empty,
    /// None of the above.
    Unknown,
}

impl FileKind {
    fn describe(self) -> &'static str {
        match self {
            FileKind::Safetensors => "a safetensors file",
            FileKind::Zip => "a zip archive (a PyTorch pickle checkpoint, .ckpt/.pt/.bin)",
            FileKind::Pickle => "a pickle stream (a legacy PyTorch checkpoint)",
            FileKind::Tar => "a tar archive (the pre-1.0 PyTorch format)",
            FileKind::SevenZip => "a 7-zip archive",
            FileKind::Gguf => "a GGUF file",
            FileKind::Empty => "an empty file",
            FileKind::Unknown => "not a known model format",
        }
    }
}

/// Recognises a file's format from its first bytes and its length.
pub fn sniff(head: &[u8], file_len: u64) -> FileKind {
    if head.is_empty() {
        return FileKind::Empty;
    }
    if let Some(n) = head.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
        let n = u64::from_le_bytes(n);
        let fits = n >= 2 && n.checked_add(8).is_some_and(|end| end <= file_len);
        let json_start = head
            .get(8..)
            .and_then(|rest| rest.iter().find(|b| !b.is_ascii_whitespace()))
            .is_some_and(|&b| b == b'{');
        if fits && json_start {
            return FileKind::Safetensors;
        }
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        FileKind::Zip
    } else if head.starts_with(b"7z\xbc\xaf\x27\x1c") {
        FileKind::SevenZip
    } else if head.starts_with(b"GGUF") {
        FileKind::Gguf
    } else if head.len() >= 2 && head.first() == Some(&0x80) && head.get(1).is_some_and(|&p| p <= 5)
    {
        FileKind::Pickle
    } else if head.get(257..262) == Some(b"ustar") {
        FileKind::Tar
    } else {
        FileKind::Unknown
    }
}

/// Opens a weight file as a [`TensorSource`], choosing the reader from the file's content.
///
/// # Errors
/// [`Error::FileNotFound`] / [`Error::Io`]; [`Error::Unsupported`] naming the file and what it
/// looks like when it is a format without a reader here; [`Error::InvalidFile`] for a malformed
/// file; [`Error::Checkpoint`] naming what a pickle checkpoint holds that was refused (a global,
/// an opcode, a malformed record) and where.
pub fn open_tensor_source(path: &Path, mode: ReadMode) -> Result<Arc<dyn TensorSource>> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::invalid_file(
            path,
            "is a directory, expected a weight file",
        ));
    }
    if !meta.is_file() {
        return Err(Error::invalid_file(path, "not a regular file"));
    }
    let mut head = Vec::with_capacity(512);
    f.by_ref()
        .take(512)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    drop(f);
    let kind = sniff(&head, meta.len());
    match kind {
        FileKind::Safetensors => Ok(Arc::new(SafetensorsFile::open_with(
            path,
            mode,
            &SafetensorsLimits::default(),
        )?)),
        FileKind::Zip | FileKind::Pickle => {
            // The content decides again inside the checkpoint reader, which recognises the
            // torch zip and legacy formats by their exact magic and refuses everything else
            // with a named error. No code in the file ever runs.
            let access = match mode {
                ReadMode::Mmap => Access::Mmap,
                ReadMode::Buffered => Access::Read,
            };
            Ok(Arc::new(CkptFile::open_with(
                path,
                &Limits::default(),
                access,
            )?))
        }
        FileKind::Tar | FileKind::SevenZip | FileKind::Gguf => Err(Error::Unsupported(format!(
            "{}: {}, which is not a supported weight format",
            path.display(),
            kind.describe()
        ))),
        FileKind::Empty => Err(Error::invalid_file(path, "an empty file (0 bytes)")),
        FileKind::Unknown => {
            let hex: String = head.iter().take(16).map(|b| format!("{b:02x} ")).collect();
            Err(Error::invalid_file(
                path,
                format!(
                    "{} ({} bytes, starts with {})",
                    kind.describe(),
                    meta.len(),
                    hex.trim_end()
                ),
            ))
        }
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut text = String::new();
    f.take(MAX_JSON_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(path, e))?;
    if text.len() as u64 > MAX_JSON_BYTES {
        return Err(Error::InvalidConfig {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_JSON_BYTES} bytes"),
        });
    }
    serde_json::from_str(&text).map_err(|e| Error::InvalidConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn read_json_opt(path: &Path) -> Result<Option<serde_json::Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Opens the weights of one diffusers component folder (`unet/`, `vae/`, `text_encoder/`).
fn open_component(dir: &Path, stems: &[&str], opts: &LoadOptions) -> Result<WeightStore> {
    if !dir.is_dir() {
        return Err(Error::UnknownLayout {
            path: dir.to_path_buf(),
            reason: "component folder is missing".to_string(),
        });
    }
    let mut candidates: Vec<String> = Vec::new();
    for stem in stems {
        if let Some(v) = &opts.variant {
            candidates.push(format!("{stem}.{v}.safetensors"));
            candidates.push(format!("{stem}.safetensors.index.{v}.json"));
            candidates.push(format!("{stem}.{v}.safetensors.index.json"));
        }
        candidates.push(format!("{stem}.safetensors"));
        candidates.push(format!("{stem}.safetensors.index.json"));
    }
    for stem in stems {
        candidates.push(format!("{stem}.fp16.safetensors"));
        candidates.push(format!("{stem}.safetensors.index.fp16.json"));
        candidates.push(format!("{stem}.fp16.safetensors.index.json"));
    }
    for stem in stems {
        // Pickle weights: routed through the content sniffing, which names the format.
        candidates.push(format!("{stem}.bin"));
    }
    for name in &candidates {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let mut store = if name.ends_with(".json") {
            open_sharded(&path, opts)?
        } else {
            WeightStore::from_source(open_tensor_source(&path, opts.read_mode)?)
        };
        add_legacy_aliases(&mut store);
        return Ok(store);
    }
    Err(Error::UnknownLayout {
        path: dir.to_path_buf(),
        reason: format!(
            "no weight file found (looked for {})",
            candidates.join(", ")
        ),
    })
}

/// Opens a sharded checkpoint through its `*.safetensors.index.json` (`weight_map`: tensor name
/// → shard file in the same folder).
fn open_sharded(index_path: &Path, opts: &LoadOptions) -> Result<WeightStore> {
    let index = read_json(index_path)?;
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::invalid_file(index_path, "no `weight_map` object"))?;
    let mut by_shard: HashMap<&str, Vec<&str>> = HashMap::new();
    for (tensor, shard) in map {
        let shard = shard.as_str().ok_or_else(|| {
            Error::invalid_file(
                index_path,
                format!(
                    "`weight_map` entry `{}` is not a file name",
                    escape_untrusted(tensor)
                ),
            )
        })?;
        let plain = Path::new(shard)
            .file_name()
            .is_some_and(|f| f == std::ffi::OsStr::new(shard));
        if !plain || shard == ".." || shard == "." {
            return Err(Error::invalid_file(
                index_path,
                format!(
                    "shard name `{}` is not a plain file name in the same folder",
                    escape_untrusted(shard)
                ),
            ));
        }
        by_shard.entry(shard).or_default().push(tensor);
    }
    let mut shards: Vec<_> = by_shard.into_iter().collect();
    shards.sort();
    let mut store = WeightStore::new();
    for (shard, tensors) in shards {
        let path = dir.join(shard);
        let source = open_tensor_source(&path, opts.read_mode)?;
        for t in &tensors {
            if source.tensor_info(t).is_none() {
                return Err(Error::invalid_file(
                    index_path,
                    format!(
                        "`weight_map` puts `{}` in {shard}, which has no such tensor",
                        escape_untrusted(t)
                    ),
                ));
            }
        }
        store.add_source(
            source,
            tensors.into_iter().map(|t| (t.to_string(), t.to_string())),
        );
    }
    Ok(store)
}

/// Older diffusers VAE files name attention weights `query/key/value/proj_attn`; expose them
/// under the current names too.
fn add_legacy_aliases(store: &mut WeightStore) {
    let aliases: Vec<(String, String)> = store
        .names()
        .filter_map(|n| names::legacy_diffusers_vae_alias(n).map(|a| (a, n.to_string())))
        .filter(|(a, _)| !store.contains(a))
        .collect();
    if !aliases.is_empty() {
        store.add_aliases(aliases);
    }
}

/// transformers 5 saves a `CLIPTextModel` without the `text_model.` prefix (`embeddings.*`,
/// `encoder.*`, `final_layer_norm.*`); expose such tensors under the prefixed names the text
/// encoder reads, as the single-file path does.
fn add_clip_text_aliases(store: &mut WeightStore) {
    let keys: Vec<&str> = store.names().collect();
    let aliases: Vec<(String, String)> = names::map_clip_text_keys(&keys)
        .pairs
        .into_iter()
        .filter(|(alias, stored)| alias != stored && !store.contains(alias))
        .collect();
    if !aliases.is_empty() {
        store.add_aliases(aliases);
    }
}

impl ModelFiles {
    /// Opens a model: a diffusers folder or a single file in the original layout.
    ///
    /// # Errors
    /// [`Error::FileNotFound`] if `path` does not exist; [`Error::UnknownLayout`] if it matches
    /// no layout; [`Error::InvalidFile`] naming the file and the missing prefix when a component
    /// is absent from a single file; [`Error::Unsupported`] for formats or families without a
    /// reader; any error from reading the files.
    pub fn open(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<ModelFiles> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            Self::open_diffusers(path, opts)
        } else {
            Self::open_single_file(path, opts)
        }
    }

    fn open_diffusers(dir: &Path, opts: &LoadOptions) -> Result<ModelFiles> {
        let model_index = read_json_opt(&dir.join("model_index.json"))?;
        if model_index.is_none() && !dir.join("unet").is_dir() {
            return Err(Error::UnknownLayout {
                path: dir.to_path_buf(),
                reason: "a folder without model_index.json or unet/: not a diffusers model"
                    .to_string(),
            });
        }
        let unet = open_component(&dir.join("unet"), &["diffusion_pytorch_model"], opts)?;
        let vae = open_component(&dir.join("vae"), &["diffusion_pytorch_model"], opts)?;
        let mut text_encoder = open_component(
            &dir.join("text_encoder"),
            &["model", "diffusion_pytorch_model"],
            opts,
        )?;
        add_clip_text_aliases(&mut text_encoder);
        let tokenizer = dir.join("tokenizer");
        Ok(ModelFiles {
            layout: Layout::Diffusers,
            model_path: dir.to_path_buf(),
            unet,
            vae,
            text_encoder,
            unet_config: read_json_opt(&dir.join("unet").join("config.json"))?,
            vae_config: read_json_opt(&dir.join("vae").join("config.json"))?,
            text_encoder_config: read_json_opt(&dir.join("text_encoder").join("config.json"))?,
            scheduler_config: read_json_opt(&dir.join("scheduler").join("scheduler_config.json"))?,
            model_index,
            tokenizer_dir: tokenizer.is_dir().then_some(tokenizer),
            unmapped_keys: Vec::new(),
            ignored_keys: Vec::new(),
            uses_ema: false,
            metadata: HashMap::new(),
        })
    }

    fn open_single_file(path: &Path, opts: &LoadOptions) -> Result<ModelFiles> {
        let source = open_tensor_source(path, opts.read_mode)?;
        let keys = source.tensor_names();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let family = match names::detect_family(key_refs.iter().copied()) {
            DetectedFamily::Supported(f) => f,
            DetectedFamily::Sd2 => {
                return Err(Error::Unsupported(format!(
                    "{}: a Stable Diffusion 2.x single-file checkpoint (OpenCLIP text encoder); \
                     use its diffusers folder",
                    path.display()
                )));
            }
            DetectedFamily::Sdxl => {
                return Err(Error::Unsupported(format!(
                    "{}: an SDXL single-file checkpoint; use its diffusers folder",
                    path.display()
                )));
            }
            DetectedFamily::Unknown => {
                let sample: Vec<String> = key_refs
                    .iter()
                    .take(3)
                    .map(|k| escape_untrusted(k))
                    .collect();
                return Err(Error::UnknownLayout {
                    path: path.to_path_buf(),
                    reason: format!(
                        "no `{}` keys: not a full checkpoint in the original layout (first \
                         keys: {})",
                        names::LDM_UNET_PREFIX,
                        sample.join(", ")
                    ),
                });
            }
        };
        let KeyMapping {
            unet,
            vae,
            text_encoder,
            ignored,
            unmapped,
            uses_ema,
        } = names::map_single_file(&key_refs, family, opts.prefer_ema);
        let component = |pairs: Vec<(String, String)>, prefix: &str, what: &str| {
            if pairs.is_empty() {
                return Err(Error::invalid_file(
                    path,
                    format!("no {what} weights: no tensors under `{prefix}`"),
                ));
            }
            let mut store = WeightStore::new();
            store.add_source(Arc::clone(&source), pairs);
            Ok(store)
        };
        let unet = component(unet, names::LDM_UNET_PREFIX, "UNet")?;
        let vae = component(vae, names::LDM_VAE_PREFIX, "VAE")?;
        let text_encoder = component(text_encoder, names::LDM_SD1_TEXT_PREFIX, "text encoder")?;
        Ok(ModelFiles {
            layout: Layout::SingleFile,
            model_path: path.to_path_buf(),
            unet,
            vae,
            text_encoder,
            unet_config: None,
            vae_config: None,
            text_encoder_config: None,
            scheduler_config: None,
            model_index: None,
            tokenizer_dir: None,
            unmapped_keys: unmapped,
            ignored_keys: ignored,
            uses_ema,
            metadata: source.metadata(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::weights::safetensors::{WriteDType, write_safetensors};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn temp_dir() -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("sdrs-layout-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn write(path: &Path, names: &[&str]) {
        let vals = [1.0f32, 2.0];
        let tensors: Vec<(&str, &[usize], &[f32])> = names
            .iter()
            .map(|n| (*n, &[2usize][..], &vals[..]))
            .collect();
        write_safetensors(path, &tensors, WriteDType::F16, None).unwrap();
    }
    fn err_of(r: Result<ModelFiles>) -> Error {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn files_are_routed_by_content_not_extension() {
        let d = temp_dir();
        let zip = d.0.join("model.safetensors");
        std::fs::write(&zip, b"PK\x03\x04archive/data.pkl....").unwrap();
        // A zip goes to the checkpoint reader (whatever its name), which names its problem.
        let e = err_of(ModelFiles::open(&zip, &LoadOptions::default()));
        let msg = e.to_string();
        assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
        assert!(
            msg.contains("model.safetensors") && msg.contains("zip container"),
            "{msg}"
        );

        // A pickle stream that is not a torch checkpoint's exact magic is refused by name.
        let legacy = d.0.join("model.ckpt");
        std::fs::write(&legacy, [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc]).unwrap();
        let msg = err_of(ModelFiles::open(&legacy, &LoadOptions::default())).to_string();
        assert!(msg.contains("not a torch checkpoint"), "{msg}");

        let junk = d.0.join("junk.bin");
        std::fs::write(&junk, [0x13u8, 0x37, 0xde, 0xad, 0xbe, 0xef, 0, 1, 2]).unwrap();
        let msg = err_of(ModelFiles::open(&junk, &LoadOptions::default())).to_string();
        assert!(
            msg.contains("junk.bin") && msg.contains("13 37 de ad"),
            "{msg}"
        );

        let empty = d.0.join("empty.safetensors");
        std::fs::write(&empty, b"").unwrap();
        let msg = err_of(ModelFiles::open(&empty, &LoadOptions::default())).to_string();
        assert!(msg.contains("empty file"), "{msg}");

        // S14: a valid safetensors file whose header size is 0x280 starts with `80 02`, like a
        // pickle; it must still be read as safetensors.
        let mut h = String::from(r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#);
        while h.len() < 0x280 {
            h.push(' ');
        }
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(h.as_bytes());
        assert_eq!(&bytes[..2], &[0x80, 0x02]);
        let st = d.0.join("looks-like-pickle.ckpt");
        std::fs::write(&st, &bytes).unwrap();
        assert_eq!(sniff(&bytes, bytes.len() as u64), FileKind::Safetensors);
        let src = open_tensor_source(&st, ReadMode::Mmap).unwrap();
        assert_eq!(src.tensor_names(), ["a"]);
    }

    #[test]
    fn single_file_missing_component_names_file_and_prefix() {
        let d = temp_dir();
        let f = d.0.join("unet-only.safetensors");
        write(
            &f,
            &[
                "model.diffusion_model.input_blocks.0.0.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.weight",
            ],
        );
        let msg = err_of(ModelFiles::open(&f, &LoadOptions::default())).to_string();
        assert!(
            msg.contains("unet-only.safetensors") && msg.contains("`first_stage_model.`"),
            "{msg}"
        );
        let g = d.0.join("diffusers-unet.safetensors");
        write(&g, &["conv_in.weight"]);
        let e = err_of(ModelFiles::open(&g, &LoadOptions::default()));
        assert!(matches!(e, Error::UnknownLayout { .. }), "{e}");
    }

    #[test]
    fn single_file_with_ema_choice() -> Result<()> {
        let d = temp_dir();
        let f = d.0.join("ema.safetensors");
        write(
            &f,
            &[
                "model.diffusion_model.out.2.weight",
                "model_ema.diffusion_modelout2weight",
                "first_stage_model.quant_conv.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.weight",
            ],
        );
        let plain = ModelFiles::open(&f, &LoadOptions::default())?;
        assert!(!plain.uses_ema && plain.unet.contains("conv_out.weight"));
        assert_eq!(plain.ignored_keys, ["model_ema.diffusion_modelout2weight"]);
        let ema = ModelFiles::open(
            &f,
            &LoadOptions {
                prefer_ema: true,
                ..LoadOptions::default()
            },
        )?;
        assert!(ema.uses_ema && ema.unet.describe().contains("ema.safetensors"));
        Ok(())
    }

    #[test]
    fn diffusers_folder_variants_shards_and_missing_parts() -> Result<()> {
        let d = temp_dir();
        let root = &d.0;
        for c in ["unet", "vae", "text_encoder"] {
            std::fs::create_dir_all(root.join(c)).unwrap();
        }
        std::fs::write(root.join("model_index.json"), b"{\"_class_name\": \"X\"}").unwrap();
        // unet: fp16 variant only
        write(
            &root.join("unet/diffusion_pytorch_model.fp16.safetensors"),
            &["conv_in.weight"],
        );
        // vae: legacy attention names
        write(
            &root.join("vae/diffusion_pytorch_model.safetensors"),
            &["encoder.mid_block.attentions.0.query.weight"],
        );
        // text encoder: two shards
        write(
            &root.join("text_encoder/model-00001-of-00002.safetensors"),
            &["a.weight"],
        );
        write(
            &root.join("text_encoder/model-00002-of-00002.safetensors"),
            &["b.weight"],
        );
        std::fs::write(
            root.join("text_encoder/model.safetensors.index.json"),
            br#"{"weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                                "b.weight": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let m = ModelFiles::open(root, &LoadOptions::default())?;
        assert_eq!(m.layout, Layout::Diffusers);
        assert!(m.unet.contains("conv_in.weight"));
        assert!(m.vae.contains("encoder.mid_block.attentions.0.to_q.weight"));
        assert!(m.text_encoder.contains("a.weight") && m.text_encoder.contains("b.weight"));
        assert!(m.unet_config.is_none() && m.tokenizer_dir.is_none());

        // A shard outside the folder is refused.
        std::fs::write(
            root.join("text_encoder/model.safetensors.index.json"),
            br#"{"weight_map": {"a.weight": "../x.safetensors"}}"#,
        )
        .unwrap();
        let msg = err_of(ModelFiles::open(root, &LoadOptions::default())).to_string();
        assert!(msg.contains("not a plain file name"), "{msg}");

        // A missing component folder is named.
        std::fs::remove_dir_all(root.join("text_encoder")).unwrap();
        let msg = err_of(ModelFiles::open(root, &LoadOptions::default())).to_string();
        assert!(
            msg.contains("text_encoder") && msg.contains("missing"),
            "{msg}"
        );

        // A bad config is named.
        std::fs::write(root.join("model_index.json"), b"{nope").unwrap();
        let e = err_of(ModelFiles::open(root, &LoadOptions::default()));
        assert!(matches!(e, Error::InvalidConfig { .. }), "{e}");

        let empty = temp_dir();
        let e = err_of(ModelFiles::open(&empty.0, &LoadOptions::default()));
        assert!(matches!(e, Error::UnknownLayout { .. }), "{e}");
        let e = err_of(ModelFiles::open(
            empty.0.join("nope"),
            &LoadOptions::default(),
        ));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        Ok(())
    }
}
