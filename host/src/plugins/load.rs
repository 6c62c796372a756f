//! Finding plugin files, checking them (sha256 pin, api version, abi_stable
//! layout) and reading what they say about themselves.

use abi_stable::library::{LibraryError, lib_header_from_path};
use dtx_plugin_api::abi::{ConfigKeyInfo, HookSet, HostVtables, PluginModuleRef};
use dtx_plugin_api::compat::{ApiVersion, is_compatible};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// Environment variable with extra folders to search for plugins (`:`-separated
/// on Unix, `;` on Windows).
pub const PLUGIN_PATH_VAR: &str = "DTX_PLUGIN_PATH";

/// Why a plugin file could not be used.
///
/// ## Resolution
/// Each message says what to do: build the plugin (`cargo build --release -p
/// <crate>`), fix the path or `DTX_PLUGIN_PATH`, update the `sha256` pin, or
/// rebuild the plugin against this host's `dtx-plugin-api`.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LoadError {
    /// A bare library name matched no file in the search path.
    #[error(
        "no plugin library `{name}` found (looked for `{file}` in: {searched}){hint}",
        searched = display_dirs(.searched),
        hint = did_you_mean(.suggestion)
    )]
    NotFound {
        /// The name in the manifest.
        name: String,
        /// The platform file name searched for.
        file: String,
        /// Folders searched.
        searched: Vec<PathBuf>,
        /// The nearest plugin name found, if any.
        suggestion: Option<String>,
    },
    /// A library path does not exist.
    #[error("plugin library file `{}` does not exist", .path.display())]
    MissingFile {
        /// The resolved path.
        path: PathBuf,
    },
    /// The file could not be opened as a dynamic library.
    #[error("cannot open `{}` as a dynamic library: {message}", .path.display())]
    Open {
        /// File.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// The file is a library but exports no dtx plugin.
    #[error("`{}` is not a dtx plugin (it exports no plugin root module; did you forget `export_plugin!`?)", .path.display())]
    NotAPlugin {
        /// File.
        path: PathBuf,
    },
    /// The plugin was built against an incompatible `dtx-plugin-api`.
    #[error(
        "plugin `{}` was built against dtx-plugin-api {plugin_api}, which is not compatible with this host's {host_api}: rebuild the plugin against dtx-plugin-api {host_api} (a crate of its own: set `dtx-plugin-api = \"{host_api}\"`, or the path to this dtx's `plugin-api`, in its Cargo.toml, then `cargo build --release`; a crate of the dtx workspace: `cargo build --release -p <plugin crate>`)",
        .path.display()
    )]
    IncompatibleApi {
        /// File.
        path: PathBuf,
        /// The version the plugin was built against.
        plugin_api: String,
        /// The host's version.
        host_api: String,
    },
    /// abi_stable's layout check failed: same version, different types.
    #[error(
        "plugin `{}` (built against dtx-plugin-api {plugin_api}; host has {host_api}) shares types whose layout differs from the host's: {}\nrebuild it against this dtx's dtx-plugin-api (a crate of its own: `cargo build --release` after pointing its `dtx-plugin-api` dependency at this dtx's; in the dtx workspace: `cargo build --release -p <plugin crate>`); DTX_LAYOUT_DETAILS=1 prints abi_stable's full report",
        .path.display(), layout_summary(.details)
    )]
    Layout {
        /// File.
        path: PathBuf,
        /// The version the plugin claims.
        plugin_api: String,
        /// The host's version.
        host_api: String,
        /// abi_stable's report.
        details: String,
    },
    /// The file's sha256 differs from the manifest's pin.
    #[error(
        "plugin file `{}` does not match its sha256 pin:\n  expected {expected}\n  actual   {actual}\nrebuild or re-pin it (`sha256sum {}`)",
        .path.display(), .path.display()
    )]
    Sha256Mismatch {
        /// File.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Of the file.
        actual: String,
    },
    /// The plugin's root-module constructor failed or panicked.
    #[error("plugin `{}` failed to initialise: {message}", .path.display())]
    Init {
        /// File.
        path: PathBuf,
        /// What it said.
        message: String,
    },
    /// The file is not a whole, well-formed shared library for this
    /// platform (truncated, damaged, or another format): refused before it
    /// is mapped, since mapping it could kill the process with a signal.
    #[error("plugin library `{}` is damaged or not a shared library for this platform: {reason}", .path.display())]
    Damaged {
        /// File.
        path: PathBuf,
        /// What the check found.
        reason: String,
    },
    /// Reading the file failed.
    #[error("cannot read `{}`: {message}", .path.display())]
    Io {
        /// File.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "no folders".into();
    }
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn did_you_mean(s: &Option<String>) -> String {
    match s {
        Some(s) => format!("; did you mean `{s}`?"),
        None => String::new(),
    }
}

/// What a loaded plugin says about itself, in host types.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginDescription {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// One-line description.
    pub description: String,
    /// The api version it was built against.
    pub api_version: String,
    /// Hooks it implements.
    pub hooks: HookSet,
    /// Injection points it asks for (names or globs).
    pub injection_points: Vec<String>,
    /// Config keys.
    pub config: Vec<ConfigKeyDescription>,
}

/// One config key of a plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigKeyDescription {
    /// Key.
    pub key: String,
    /// Type.
    pub ty: String,
    /// Default, as TOML text ("" when required).
    pub default: String,
    /// Help.
    pub help: String,
}

impl From<&ConfigKeyInfo> for ConfigKeyDescription {
    fn from(k: &ConfigKeyInfo) -> Self {
        ConfigKeyDescription {
            key: k.key.to_string(),
            ty: k.ty.to_string(),
            default: k.default.to_string(),
            help: k.help.to_string(),
        }
    }
}

/// A checked, loaded plugin library.
pub struct PluginLibrary {
    /// Its file.
    pub path: PathBuf,
    /// SHA-256 of the bytes that were loaded (lowercase hex).
    pub sha256: String,
    /// The file's length and modification time when it was loaded, to tell
    /// cheaply whether it changed on disk since.
    stamp: Option<(u64, std::time::SystemTime)>,
    /// Its root module.
    pub module: PluginModuleRef,
    /// What it says about itself.
    pub description: PluginDescription,
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary")
            .field("path", &self.path)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// The platform file name of a library called `name` (`libname.so`,
/// `libname.dylib`, `name.dll`); `-` becomes `_` as cargo does.
pub fn library_file_name(name: &str) -> String {
    format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}

/// The folders searched for a bare library name, in order: the manifest's
/// folder, each folder of `DTX_PLUGIN_PATH`, the folder of the `dtx` executable.
pub fn search_dirs(manifest_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = manifest_dir {
        dirs.push(d.to_path_buf());
    }
    if let Some(paths) = std::env::var_os(PLUGIN_PATH_VAR) {
        dirs.extend(std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()));
    }
    if let Some(exe_dir) = crate::util::exe_dir() {
        dirs.push(exe_dir);
    }
    dirs.dedup();
    dirs
}

/// Whether `library` names a file (has a separator or a library extension)
/// rather than a bare name.
pub fn is_path(library: &str) -> bool {
    library.contains('/')
        || library.contains('\\')
        || [".so", ".dylib", ".dll"]
            .iter()
            .any(|ext| library.ends_with(ext))
}

/// Resolves a manifest's `library` to a file.
pub fn resolve_library(
    library: &str,
    dirs: &[PathBuf],
    base: Option<&Path>,
) -> Result<PathBuf, LoadError> {
    if is_path(library) {
        let p = PathBuf::from(library);
        let p = match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        };
        return if p.is_file() {
            Ok(p)
        } else {
            Err(LoadError::MissingFile { path: p })
        };
    }
    let file = library_file_name(library);
    for d in dirs {
        let candidate = d.join(&file);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let known: Vec<String> = dirs.iter().flat_map(|d| library_names_in(d)).collect();
    Err(LoadError::NotFound {
        name: library.to_owned(),
        file,
        searched: dirs.to_vec(),
        suggestion: crate::util::nearest(library, known.iter().map(String::as_str))
            .map(str::to_owned),
    })
}

/// Bare names of the dynamic libraries in `dir` (`libfoo.so` → `foo`).
pub fn library_names_in(dir: &Path) -> Vec<String> {
    let (pre, suf) = (std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix(pre)?.strip_suffix(suf).map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// Lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, LoadError> {
    let bytes = crate::util::fs::read(path).map_err(|e| LoadError::Io {
        path: path.into(),
        message: e.to_string(),
    })?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Loads and checks a plugin file: the sha256 pin (before any of its code runs),
/// The first difference abi_stable's layout report names, in one line: the
/// type, what differs, and the two sides (its report runs to hundreds of
/// lines, the useful one near the end). With `DTX_LAYOUT_DETAILS=1`, the
/// whole report follows.
pub fn layout_summary(details: &str) -> String {
    let at = details.find("\nError:");
    let what = at.map(|i| {
        let rest: Vec<&str> = details[i + 1..].lines().take(5).map(str::trim).collect();
        match rest.as_slice() {
            [e, "Expected:", x, "Found:", y, ..] => {
                format!(
                    "{} (expected {x}, found {y})",
                    e.trim_start_matches("Error:")
                )
            }
            [e, ..] => e.trim_start_matches("Error:").to_owned(),
            [] => String::new(),
        }
    });
    let ty = at.and_then(|i| {
        let before = &details[..i];
        let block = before.rfind("Layout of expected type:")?;
        before[block..]
            .lines()
            .find_map(|l| l.trim().strip_prefix("type:"))
            .map(str::to_owned)
    });
    let mut out = match (ty, what) {
        (Some(t), Some(w)) => format!("type `{t}`: {w}"),
        (None, Some(w)) => w,
        _ => "abi_stable found no single difference".to_owned(),
    };
    if std::env::var_os("DTX_LAYOUT_DETAILS").is_some() {
        out.push('\n');
        out.push_str(details);
    }
    out
}

/// the api version (one tested rule, [`is_compatible`]) and abi_stable's layout
/// check; then hands it the host's vtables and reads its description.
///
/// Libraries are never unloaded (as abi_stable does); loading the same file twice
/// returns the first result.
pub fn load_library(
    path: &Path,
    sha256: Option<&str>,
    vtables: HostVtables,
) -> Result<Arc<PluginLibrary>, LoadError> {
    type Loaded = HashMap<PathBuf, Result<Arc<PluginLibrary>, LoadError>>;
    static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);
    let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let cache = loaded.get_or_insert_with(HashMap::new);
    if let Some(r) = cache.get(&key) {
        let lib = r.clone()?;
        check_pin(path, sha256, &lib.sha256)?;
        return Ok(lib);
    }
    // Read once: the checks, the pin and the mapped copy all see these bytes.
    let bytes = crate::util::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoadError::MissingFile { path: path.into() },
        _ => LoadError::Io {
            path: path.into(),
            message: e.to_string(),
        },
    })?;
    check_object_file(path, &bytes)?;
    let actual = hex_sha256(&bytes);
    check_pin(path, sha256, &actual)?;
    let stamp = std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.len(), m.modified().ok()?)));
    let r = load_private_copy(path, &bytes, vtables).map(|mut lib| {
        lib.sha256 = actual;
        lib.stamp = stamp;
        Arc::new(lib)
    });
    match &r {
        Ok(lib) => tracing::info!(file = %lib.path.display(), "plugin library loaded"),
        Err(e) => tracing::debug!(file = %path.display(), "plugin library refused: {e}"),
    }
    cache.insert(key, r.clone());
    r
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn check_pin(path: &Path, expected: Option<&str>, actual: &str) -> Result<(), LoadError> {
    match expected {
        Some(expected) if !actual.eq_ignore_ascii_case(expected) => {
            Err(LoadError::Sha256Mismatch {
                path: path.into(),
                expected: expected.to_owned(),
                actual: actual.to_owned(),
            })
        }
        _ => Ok(()),
    }
}

/// The object-file format this platform's loader maps.
const NATIVE_FORMAT: object::BinaryFormat = if cfg!(target_os = "macos") {
    object::BinaryFormat::MachO
} else if cfg!(windows) {
    object::BinaryFormat::Pe
} else {
    object::BinaryFormat::Elf
};

/// Checks that `bytes` are a whole shared library of this platform's format
/// before anything maps them: the header parses, it is a dynamic library,
/// and every segment and section lies inside the file (a truncated file
/// fails here instead of raising SIGBUS when its pages are touched).
/// A bit flipped inside code or data passes: pin `sha256` to catch that.
pub fn check_object_file(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    use object::{Object, ObjectSection, ObjectSegment};
    let damaged = |reason: String| LoadError::Damaged {
        path: path.into(),
        reason,
    };
    if bytes.len() < 64 {
        return Err(damaged(format!(
            "it is {} bytes long, too short for a shared library",
            bytes.len()
        )));
    }
    let file = object::File::parse(bytes).map_err(|e| damaged(format!("{e}")))?;
    if file.format() != NATIVE_FORMAT {
        return Err(damaged(format!(
            "it is a {:?} file; this platform loads {NATIVE_FORMAT:?} libraries",
            file.format()
        )));
    }
    if file.kind() != object::ObjectKind::Dynamic {
        return Err(damaged(format!(
            "it is a {:?} object, not a shared library (build the plugin crate as a `cdylib`)",
            file.kind()
        )));
    }
    let len = bytes.len() as u64;
    let outside = |what: &str, (offset, size): (u64, u64)| {
        (offset.checked_add(size).is_none_or(|end| end > len)).then(|| {
            damaged(format!(
                "{what} at bytes {offset}..{} lies past the end of the file ({len} bytes): the file is truncated",
                offset.saturating_add(size)
            ))
        })
    };
    for seg in file.segments() {
        if let Some(e) = outside("a segment", seg.file_range()) {
            return Err(e);
        }
    }
    for sec in file.sections() {
        if let Some(range) = sec.file_range()
            && let Some(e) = outside(&format!("section `{}`", sec.name().unwrap_or("?")), range)
        {
            return Err(e);
        }
    }
    Ok(())
}

/// Maps a private copy of `bytes` (so the file at `path` may be replaced or
/// truncated while the process runs without the mapped code changing under
/// it) and loads it as [`load_uncached`] does; messages name `path`. On
/// Unix the copy is unlinked as soon as it is mapped.
fn load_private_copy(
    path: &Path,
    bytes: &[u8],
    vtables: HostVtables,
) -> Result<PluginLibrary, LoadError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let io = |e: std::io::Error| LoadError::Io {
        path: path.into(),
        message: format!("making a private copy to load: {e}"),
    };
    let dir = std::env::temp_dir().join(format!("dtx-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io)?;
    let name = path
        .file_name()
        .map_or_else(|| "plugin".into(), |n| n.to_string_lossy().into_owned());
    let copy = dir.join(format!("{}-{name}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&copy, bytes).map_err(io)?;
    let r = load_uncached(path, &copy, vtables);
    if cfg!(unix) {
        let _ = std::fs::remove_file(&copy);
        let _ = std::fs::remove_dir(&dir);
    }
    r
}

impl PluginLibrary {
    /// When the file this library was loaded from has changed on disk since
    /// (other contents), a sentence saying so; the process keeps running
    /// the code it loaded.
    pub fn changed_on_disk(&self) -> Option<String> {
        let now = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)));
        if now.is_some() && now == self.stamp {
            return None;
        }
        let changed = match crate::util::fs::read(&self.path) {
            Ok(bytes) => hex_sha256(&bytes) != self.sha256,
            Err(_) => true,
        };
        changed.then(|| {
            format!(
                "plugin library `{}` changed on disk while this process ran; it kept running the version it loaded (sha256 {})",
                self.path.display(),
                self.sha256
            )
        })
    }
}

fn load_uncached(
    path: &Path,
    file: &Path,
    vtables: HostVtables,
) -> Result<PluginLibrary, LoadError> {
    let host = ApiVersion::current();
    let header = lib_header_from_path(file).map_err(|e| match e {
        LibraryError::OpenError { err, .. } => LoadError::Open {
            path: path.into(),
            // the loader names the private copy; the user knows the original
            message: err
                .to_string()
                .replace(&file.display().to_string(), &path.display().to_string()),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin { path: path.into() },
        other => LoadError::Open {
            path: path.into(),
            message: other.to_string(),
        },
    })?;
    let claimed = header.version_strings();
    let plugin_api = claimed.version.to_string();
    let compatible = ApiVersion::parse(&plugin_api).is_some_and(|v| is_compatible(v, host));
    if !compatible {
        return Err(LoadError::IncompatibleApi {
            path: path.into(),
            plugin_api,
            host_api: host.to_string(),
        });
    }
    let module = header
        .check_layout::<PluginModuleRef>()
        .map_err(|e| match e {
            LibraryError::AbiInstability(details) => LoadError::Layout {
                path: path.into(),
                plugin_api: plugin_api.clone(),
                host_api: host.to_string(),
                details: details.to_string(),
            },
            other => LoadError::Init {
                path: path.into(),
                message: other.to_string(),
            },
        })?;
    describe_module(path, module, plugin_api, vtables)
}

/// A plugin compiled into this process (its crate linked as a library, as
/// the `dtx-plugin-testing` harness links it): the module
/// `dtx_plugin_api::__private::root_module::<P>()` gives, handed the
/// host's vtables and described like a loaded file, under the pseudo-path
/// `<in-process NAME>`. No file, no layout check: the plugin and the host
/// share one `dtx-plugin-api`.
pub fn in_process_library(
    module: PluginModuleRef,
    vtables: HostVtables,
) -> Result<Arc<PluginLibrary>, LoadError> {
    let api = ApiVersion::current().to_string();
    let mut lib = describe_module(Path::new("<in-process>"), module, api, vtables)?;
    lib.path = PathBuf::from(format!("<in-process {}>", lib.description.name));
    Ok(Arc::new(lib))
}

/// Hands `module` the host's vtables and reads its description.
fn describe_module(
    path: &Path,
    module: PluginModuleRef,
    plugin_api: String,
    vtables: HostVtables,
) -> Result<PluginLibrary, LoadError> {
    let init = std::panic::catch_unwind(|| {
        (module.init_host())(vtables);
        (module.info())()
    });
    let info = init.map_err(|_| LoadError::Init {
        path: path.into(),
        message: "panicked while describing itself".into(),
    })?;
    Ok(PluginLibrary {
        path: path.to_path_buf(),
        sha256: String::new(),
        stamp: None,
        module,
        description: PluginDescription {
            name: info.name.to_string(),
            version: info.version.to_string(),
            description: info.description.to_string(),
            api_version: plugin_api,
            hooks: info.hooks,
            injection_points: info
                .injection_points
                .iter()
                .map(|s| s.to_string())
                .collect(),
            config: info.config.iter().map(ConfigKeyDescription::from).collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_and_paths_are_told_apart() {
        assert!(!is_path("dtx_plugin_example"));
        assert!(is_path("./plugins/libx.so"));
        assert!(is_path("libx.dylib"));
        assert!(is_path("x.dll"));
    }

    #[test]
    fn file_names_follow_the_platform_and_cargo() {
        let f = library_file_name("dtx-plugin-sdft");
        assert!(f.contains("dtx_plugin_sdft"), "{f}");
    }

    #[test]
    fn missing_bare_name_lists_the_folders_searched() {
        let dir = std::env::temp_dir().join("dtx-load-test-empty");
        std::fs::create_dir_all(&dir).unwrap();
        let err = resolve_library("nothing_here", std::slice::from_ref(&dir), None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no plugin library `nothing_here`"), "{msg}");
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
    }

    #[test]
    fn missing_path_is_reported_as_a_file() {
        let err = resolve_library("./nope/libnope.so", &[], Some(Path::new("/tmp"))).unwrap_err();
        assert_eq!(
            err,
            LoadError::MissingFile {
                path: PathBuf::from("/tmp/./nope/libnope.so")
            }
        );
    }

    #[test]
    fn a_layout_report_is_summarised_in_one_line() {
        // the shape of abi_stable 0.11's report, cut down: the useful line
        // comes after hundreds of others
        let report = "Compared <this>:\n    --- Type Layout ---\n    type:PrefixRef<'a, PluginModule>\n\
            Layout of expected type:\n    --- Type Layout ---\n    type:PluginInfo\n    size:168 align:8\n\
            Layout of found type:\n    --- Type Layout ---\n    type:PluginInfo\n\n\n\
            Error:incompatible package versions\nExpected:\n    0.4.0\nFound:\n    0.3.0\n1 error(s)inside:\n";
        assert_eq!(
            layout_summary(report),
            "type `PluginInfo`: incompatible package versions (expected 0.4.0, found 0.3.0)"
        );
        assert_eq!(
            layout_summary("nothing"),
            "abi_stable found no single difference"
        );
    }
}
