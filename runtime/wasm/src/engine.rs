//! One wasmtime [`Engine`] per process, the linker with every host
//! capability, a compiled-component cache on disk, `InstancePre`s reused
//! across runs, and the upstreams' rate limiters and circuit breakers.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use crate::bindings::{source_v0_1, source_v0_2, WitVersion};
use crate::host;
use crate::host::data::HostState;
use crate::host::resilience::Upstreams;
use sluice_core::limits::{EPOCH_TICK, MAX_WASM_STACK_BYTES};

/// Environment variable naming the compiled-component cache directory.
pub const CACHE_DIR_ENV: &str = "SLUICE_CACHE_DIR";

/// Sub-directory of the user's cache directory used when none is given.
pub const DEFAULT_CACHE_SUBDIR: &str = "sluice/components";

/// Failures loading or compiling a component.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot read component {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path} is not a WebAssembly component: {reason}")]
    NotAComponent { path: String, reason: String },
    #[error("{path} does not compile: {reason}")]
    Compile { path: String, reason: String },
    #[error("{path} does not implement the world sluice:connector/source@{version}: {reason}")]
    WrongWorld {
        path: String,
        version: WitVersion,
        reason: String,
    },
    /// Neither version's exports, or imports of another version: one line
    /// naming the versions this host loads.
    #[error(
        "{path} does not implement the world sluice:connector/source of a version this host \
         supports ({found}); this host supports {}",
        WitVersion::supported()
    )]
    UnsupportedVersion { path: String, found: String },
    #[error("engine setup failed: {0}")]
    Engine(String),
}

/// Where a loaded component's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Already loaded in this process (`InstancePre` reused).
    Memory,
    /// Deserialised from the on-disk cache.
    Disk,
    /// Compiled now (and written to the cache, if enabled).
    Compiled,
}

/// A component linked and ready to instantiate, per the WIT version it
/// was built against.
#[derive(Clone)]
pub enum SourcePre {
    V0_1(source_v0_1::SourcePre<HostState>),
    V0_2(source_v0_2::SourcePre<HostState>),
}

impl SourcePre {
    /// The WIT version of `sluice:connector` the component implements.
    pub fn wit_version(&self) -> WitVersion {
        match self {
            SourcePre::V0_1(_) => WitVersion::V0_1,
            SourcePre::V0_2(_) => WitVersion::V0_2,
        }
    }
}

/// A component ready to instantiate.
pub struct Loaded {
    pub path: PathBuf,
    /// SHA-256 of the component bytes, hex.
    pub hash: String,
    pub pre: SourcePre,
    pub cache: CacheOutcome,
    pub load_time: Duration,
}

/// Options for [`Runtime::new`].
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Compiled-component cache; `None` disables it.
    pub cache_dir: Option<PathBuf>,
}

impl RuntimeOptions {
    /// The cache directory from `SLUICE_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/sluice/components`, else `~/.cache/sluice/components`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os(CACHE_DIR_ENV) {
            return Some(PathBuf::from(dir));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join(DEFAULT_CACHE_SUBDIR))
    }
}

/// Engine settings that change compiled code; for measurement only (the
/// defaults are what Sluice runs with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    /// Meter fuel (instructions). Off only to measure what metering costs:
    /// runs then have no instruction budget, only the wall-clock deadline.
    pub fuel_metering: bool,
    /// Interrupt guests at the wall-clock deadline via epochs. Off only to
    /// measure what it costs: a guest spinning without host calls then runs
    /// until its fuel is spent (host waits stay bounded by the deadline).
    pub epoch_interruption: bool,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            fuel_metering: true,
            epoch_interruption: true,
        }
    }
}

/// The process-wide runtime: engine, linker, caches, epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    /// `engine.precompile_compatibility_hash()` folded to 64 bits: covers the
    /// wasmtime version and every engine setting that affects compiled code.
    engine_key: u64,
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    fuel_metering: bool,
    epoch_interruption: bool,
    /// Rate limiters and circuit breakers of upstream hosts, shared by
    /// every run of this runtime.
    upstreams: Arc<Upstreams>,
}

impl Runtime {
    pub fn new(options: RuntimeOptions) -> Result<Self, RuntimeError> {
        Self::with_settings(options, EngineSettings::default())
    }

    /// A runtime with non-default engine settings (measurement only).
    pub fn with_settings(
        options: RuntimeOptions,
        settings: EngineSettings,
    ) -> Result<Self, RuntimeError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(settings.fuel_metering)
            .epoch_interruption(settings.epoch_interruption)
            .max_wasm_stack(MAX_WASM_STACK_BYTES);
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        link(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        spawn_epoch_ticker(&engine);
        let engine_key = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            h.finish()
        };
        Ok(Runtime {
            engine,
            linker,
            cache_dir: options.cache_dir,
            engine_key,
            loaded: Mutex::new(HashMap::new()),
            fuel_metering: settings.fuel_metering,
            epoch_interruption: settings.epoch_interruption,
            upstreams: Arc::new(Upstreams::new()),
        })
    }

    /// Whether guests are interrupted by epochs (always, except when
    /// measuring).
    pub fn epoch_interruption(&self) -> bool {
        self.epoch_interruption
    }

    /// Whether runs meter fuel (always, except when measuring).
    pub fn fuel_metering(&self) -> bool {
        self.fuel_metering
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The process-wide rate limiters and circuit breakers.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// Load the component at `path`: from this process's memory, the disk
    /// cache, or by compiling it.
    pub fn load(&self, path: &Path) -> Result<Arc<Loaded>, RuntimeError> {
        let start = Instant::now();
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|error| RuntimeError::Read {
            path: shown.clone(),
            error,
        })?;
        let hash = hex::encode(Sha256::digest(&bytes));
        if let Some(l) = self
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
        {
            return Ok(Arc::new(Loaded {
                path: path.to_path_buf(),
                hash,
                pre: l.pre.clone(),
                cache: CacheOutcome::Memory,
                load_time: start.elapsed(),
            }));
        }
        check_header(&bytes).map_err(|reason| RuntimeError::NotAComponent {
            path: shown.clone(),
            reason,
        })?;
        let (component, cache) = self.compile_cached(&bytes, &hash, &shown)?;
        let version = wit_version(&self.engine, &component).map_err(|found| {
            RuntimeError::UnsupportedVersion {
                path: shown.clone(),
                found,
            }
        })?;
        let wrong_world = |e: wasmtime::Error| RuntimeError::WrongWorld {
            path: shown.clone(),
            version,
            reason: format!("{e:#}"),
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let pre = match version {
            WitVersion::V0_1 => {
                SourcePre::V0_1(source_v0_1::SourcePre::new(instance_pre).map_err(wrong_world)?)
            }
            WitVersion::V0_2 => {
                SourcePre::V0_2(source_v0_2::SourcePre::new(instance_pre).map_err(wrong_world)?)
            }
        };
        let loaded = Arc::new(Loaded {
            path: path.to_path_buf(),
            hash: hash.clone(),
            pre,
            cache,
            load_time: start.elapsed(),
        });
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash, loaded.clone());
        Ok(loaded)
    }

    fn cache_file(&self, hash: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join(format!("{hash}-{:016x}.cwasm", self.engine_key)))
    }

    fn compile_cached(
        &self,
        bytes: &[u8],
        hash: &str,
        shown: &str,
    ) -> Result<(Component, CacheOutcome), RuntimeError> {
        let file = self.cache_file(hash);
        if let Some(file) = file.as_ref() {
            // Read the entry into memory rather than mapping it: a file that
            // another process truncates or rewrites in place can then never
            // fault under us.
            if let Ok(artifact) = std::fs::read(file) {
                // SAFETY: the entry was written by `precompile_component` of
                // an engine with the same compatibility hash (it is in the
                // file name), into a cache directory the operator owns;
                // wasmtime re-checks the header and refuses artifacts that
                // are not its own or are incompatible.
                match unsafe { Component::deserialize(&self.engine, &artifact) } {
                    Ok(c) => return Ok((c, CacheOutcome::Disk)),
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "ignoring unusable cache entry")
                    }
                }
            }
        }
        let compile_err = |e: wasmtime::Error| RuntimeError::Compile {
            path: shown.to_string(),
            reason: format!("{e:#}"),
        };
        let Some(file) = file else {
            return Ok((
                Component::new(&self.engine, bytes).map_err(compile_err)?,
                CacheOutcome::Compiled,
            ));
        };
        let artifact = self
            .engine
            .precompile_component(bytes)
            .map_err(compile_err)?;
        if let Err(e) = write_atomically(&file, &artifact) {
            tracing::warn!(file = %file.display(), error = %e, "cannot write component cache");
        }
        // SAFETY: `artifact` was just produced by this engine.
        let component =
            unsafe { Component::deserialize(&self.engine, &artifact) }.map_err(compile_err)?;
        Ok((component, CacheOutcome::Compiled))
    }
}

fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file.file_name().and_then(|n| n.to_str()).unwrap_or("cache"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

/// The bare functions a `@0.1.0` component exports.
const V0_1_EXPORTS: [&str; 4] = ["spec", "check", "discover", "read"];

/// The package every Sluice interface belongs to.
const PACKAGE: &str = "sluice:connector";

/// Which version of `sluice:connector` `component` implements, from its
/// exports: `@0.2.0`'s `connector` interface, or `@0.1.0`'s bare
/// functions. Every `sluice:connector` interface it imports must be of
/// that version too. Else what it has instead, for the error line.
fn wit_version(engine: &Engine, component: &Component) -> Result<WitVersion, String> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let version = if exports
        .iter()
        .any(|e| e == source_v0_2::CONNECTOR_INTERFACE)
    {
        WitVersion::V0_2
    } else if exports.iter().any(|e| V0_1_EXPORTS.contains(&e.as_str())) {
        WitVersion::V0_1
    } else {
        let ours: Vec<&str> = exports
            .iter()
            .chain(&imports)
            .map(String::as_str)
            .filter(|n| n.starts_with(PACKAGE))
            .collect();
        return Err(if !ours.is_empty() {
            format!("it uses {}", ours.join(", "))
        } else if exports.is_empty() {
            "it exports nothing".to_string()
        } else {
            format!("it exports {}", exports.join(", "))
        });
    };
    let suffix = format!("@{}", version.as_str());
    if let Some(other) = imports
        .iter()
        .find(|n| n.starts_with(PACKAGE) && !n.ends_with(&suffix))
    {
        return Err(format!(
            "its exports are of sluice:connector{suffix}, but it imports {other}"
        ));
    }
    Ok(version)
}

const CORE_MODULE: &str = "it is a core WebAssembly module; connectors must be components \
    (build for wasm32-unknown-unknown with wasm-component-ld, or run wasm-tools component new)";

/// A component starts with `\0asm` and the component-model version/layer
/// (`0d 00 01 00`); a core module has version `01 00 00 00`.
fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        // The text format (tests, hand-written adversaries).
        if let Some(text) = std::str::from_utf8(bytes).ok().map(str::trim_start) {
            if text.starts_with("(component") {
                return Ok(());
            }
            if text.starts_with("(module") {
                return Err(CORE_MODULE.into());
            }
        }
        return Err("no WebAssembly header (truncated, or not a .wasm file)".into());
    }
    match &bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(CORE_MODULE.into()),
        v => Err(format!("unsupported WebAssembly version/layer {v:02x?}")),
    }
}

fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host::add_types_to_linker(linker)?;
    host::http::add_to_linker(linker, |s| &mut s.http)?;
    host::state::add_to_linker(linker, |s| &mut s.state)?;
    host::sink::add_to_linker(linker, |s| &mut s.sink)?;
    host::log::add_to_linker(linker, |s| &mut s.log)?;
    // WASI 0.2, locked down by each store's `WasiCtx` (see sandbox::WasiState).
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    Ok(())
}

/// Advance the engine's epoch every [`EPOCH_TICK`] until the engine is gone.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("sluice-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })
        .expect("spawn epoch ticker");
}
