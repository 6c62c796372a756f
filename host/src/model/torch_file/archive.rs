//! The zip format of `torch.save` (torch ≥ 1.6).
//!
//! The archive holds `<name>/data.pkl`, a pickle (protocol 2 by default) of
//! the state dict, and one `<name>/data/<key>` entry per storage, stored
//! uncompressed, little-endian.

use super::TorchFileError;
use super::pickle::Unpickler;
use super::{TorchTensor, state_dict_entries};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// The tensors of the zip-format checkpoint `file`, in file order.
pub(super) fn read(file: &Path) -> Result<Vec<(String, TorchTensor)>, TorchFileError> {
    let f = crate::util::fs::open(file).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(|e| {
        format!("not a torch.save checkpoint: a zip archive that cannot be read ({e})")
    })?;
    let pickle_name = zip
        .file_names()
        .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .map(str::to_owned)
        .ok_or("the archive has no data.pkl: not written by torch.save")?;
    let prefix = &pickle_name[..pickle_name.len() - "data.pkl".len()];
    let read_entry =
        |zip: &mut zip::ZipArchive<_>, name: &str| -> Result<Vec<u8>, TorchFileError> {
            let mut entry = zip
                .by_name(name)
                .map_err(|e| format!("cannot read `{name}` in the archive: {e}"))?;
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read `{name}` in the archive: {e}"))?;
            Ok(bytes)
        };
    if let Ok(order) = read_entry(&mut zip, &format!("{prefix}byteorder")) {
        let order = String::from_utf8_lossy(&order);
        if order.trim() != "little" {
            return Err(bad!(
                "the archive is `{}`-endian; dtx reads little-endian checkpoints",
                order.trim()
            ));
        }
    }
    let pickle = read_entry(&mut zip, &pickle_name)?;
    let root = Unpickler::new(&pickle, "data.pkl").load()?;
    let entries = state_dict_entries(root)?;

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (key, t) in entries {
        if !storages.contains_key(&t.storage) {
            let bytes = read_entry(&mut zip, &format!("{prefix}data/{}", t.storage))
                .map_err(|e| format!("`{key}`: {e}"))?;
            storages.insert(t.storage.clone(), bytes);
        }
        let tensor = t
            .gather(&storages[&t.storage])
            .map_err(|e| format!("`{key}`: {e}"))?;
        tensors.push((key, tensor));
    }
    Ok(tensors)
}
