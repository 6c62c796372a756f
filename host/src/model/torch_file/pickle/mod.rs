//! The pickle virtual machine, for the opcodes `torch.save` emits for a
//! state dict (protocols 2 to 5, and Python 2's byte strings): no Python
//! objects are created; a global is a name, a storage is its key and dtype, a
//! tensor rebuild is a [`TensorRef`], and any other call is an opaque value.

use super::TorchFileError;
use std::collections::HashMap;

/// A tensor as the pickle describes it: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TensorRef {
    /// The storage's key: its zip entry is `<name>/data/<key>`; the legacy
    /// format lists the keys in the order their data follows.
    pub storage: String,
    /// The storage's dtype, named as safetensors names them.
    pub dtype: &'static str,
    /// First element, in elements of the storage.
    pub offset: usize,
    /// `size`.
    pub shape: Vec<usize>,
    /// `stride()`, in elements.
    pub stride: Vec<usize>,
}

/// The safetensors name of a torch storage class.
fn storage_dtype(class: &str) -> Result<&'static str, TorchFileError> {
    Ok(match class {
        "FloatStorage" => "F32",
        "HalfStorage" => "F16",
        "BFloat16Storage" => "BF16",
        "DoubleStorage" => "F64",
        "LongStorage" => "I64",
        "IntStorage" => "I32",
        "ShortStorage" => "I16",
        "CharStorage" => "I8",
        "ByteStorage" => "U8",
        "BoolStorage" => "BOOL",
        other => return Err(bad!("unsupported storage type torch.{other}")),
    })
}

/// A storage key: a string in the files torch writes.
pub(super) fn storage_key(key: &Value) -> Result<String, TorchFileError> {
    match key {
        Value::Str(s) => Ok(s.clone()),
        Value::Int(n) => Ok(n.to_string()),
        v => Err(bad!("a storage key is {}", v.describe())),
    }
}

/// A value on the unpickler's stack.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    None,
    Bool(bool),
    /// Wide enough for the 80-bit magic number of the legacy format.
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A class or function, `module.name`.
    Global(String, String),
    /// A storage reference (persistent id): its key, dtype, and first
    /// element in the storage it views (0 but for torch < 0.4's views).
    Storage {
        key: String,
        dtype: &'static str,
        offset: usize,
    },
    Tensor(TensorRef),
    /// The result of a call dtx does not model, named by the callee.
    Object(String),
}

impl Value {
    pub(super) fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(m, n) => format!("the global {m}.{n}"),
            Value::Storage { .. } => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
            Value::Object(name) => format!("a {name} object"),
        }
    }

    fn usize(&self, what: &str) -> Result<usize, TorchFileError> {
        match self {
            Value::Int(n) => usize::try_from(*n)
                .map_err(|_| bad!("expected a non-negative int for {what}, found {n}")),
            v => Err(bad!(
                "expected a non-negative int for {what}, found {}",
                v.describe()
            )),
        }
    }

    fn usizes(&self, what: &str) -> Result<Vec<usize>, TorchFileError> {
        match self {
            Value::Tuple(items) | Value::List(items) => {
                items.iter().map(|v| v.usize(what)).collect()
            }
            v => Err(bad!("expected a tuple for {what}, found {}", v.describe())),
        }
    }
}

/// The pickle virtual machine, for the opcodes `torch.save` emits (protocols
/// 2 to 5). Memoised values are copies: a state dict never refers back to a
/// container it is still filling.
pub(super) struct Unpickler<'a> {
    data: &'a [u8],
    /// What `data` is, for errors: `data.pkl`, or the legacy file.
    source: &'static str,
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// The dtype of every storage key a persistent id has named.
    storages: HashMap<String, &'static str>,
}

impl<'a> Unpickler<'a> {
    /// An unpickler at the start of `data`, which errors call `source`.
    pub(super) fn new(data: &'a [u8], source: &'static str) -> Self {
        Unpickler {
            data,
            source,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            storages: HashMap::new(),
        }
    }

    /// The byte just past the last pickle run.
    pub(super) fn position(&self) -> usize {
        self.pos
    }

    /// The dtype of every storage the pickles run so far refer to, by key.
    pub(super) fn storage_dtypes(&self) -> &HashMap<String, &'static str> {
        &self.storages
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], TorchFileError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or("the pickle ends early")?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, TorchFileError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, TorchFileError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, TorchFileError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, TorchFileError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }

    fn line(&mut self) -> Result<String, TorchFileError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("the pickle ends early")?;
        self.pos += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    fn string(&mut self, n: usize) -> Result<String, TorchFileError> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string is not UTF-8".into())
    }

    fn pop(&mut self) -> Result<Value, TorchFileError> {
        self.stack
            .pop()
            .ok_or_else(|| "the pickle stack underflows".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, TorchFileError> {
        let mark = self.marks.pop().ok_or("a pickle opcode expects a MARK")?;
        if mark > self.stack.len() {
            return Err("the pickle stack underflows".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn top(&mut self) -> Result<&mut Value, TorchFileError> {
        self.stack
            .last_mut()
            .ok_or_else(|| "the pickle stack underflows".into())
    }

    fn memo_get(&self, i: u32) -> Result<Value, TorchFileError> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| bad!("the pickle refers to memo entry {i}, never stored"))
    }

    fn memo_put(&mut self, i: u32) -> Result<(), TorchFileError> {
        let v = self
            .stack
            .last()
            .cloned()
            .ok_or("the pickle stack underflows")?;
        self.memo.insert(i, v);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), TorchFileError> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of values".into());
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        match self.top()? {
            Value::Dict(d) => {
                for (k, v) in pairs {
                    match d.iter_mut().find(|(old, _)| *old == k) {
                        Some(slot) => slot.1 = v,
                        None => d.push((k, v)),
                    }
                }
                Ok(())
            }
            // setting items on an opaque object: ignored
            Value::Object(_) => Ok(()),
            v => Err(bad!("SETITEMS on {}", v.describe())),
        }
    }

    /// The persistent id `('storage', torch.<Type>Storage, key, location,
    /// numel)`, to which the legacy format appends `view_metadata`: `None`,
    /// or for a view (torch < 0.4) `(view_key, offset, numel)` into the
    /// storage `key`.
    fn persistent(&mut self, pid: Value) -> Result<Value, TorchFileError> {
        if let Value::Tuple(items) = &pid
            && let [Value::Str(tag), Value::Global(_, class), key, rest @ ..] = items.as_slice()
            && tag == "storage"
        {
            let key = storage_key(key)?;
            let dtype = storage_dtype(class)?;
            let offset = match rest.get(2) {
                None | Some(Value::None) => 0,
                Some(Value::Tuple(view)) if view.len() == 3 => view[1].usize("a view's offset")?,
                Some(v) => return Err(bad!("a storage's view_metadata is {}", v.describe())),
            };
            self.storages.insert(key.clone(), dtype);
            return Ok(Value::Storage { key, dtype, offset });
        }
        Err(bad!(
            "unsupported persistent id {}: not a torch storage",
            pid.describe()
        ))
    }

    /// `func(*args)` for the callables a state dict uses.
    fn call(&self, func: Value, args: Value) -> Result<Value, TorchFileError> {
        let Value::Global(module, name) = &func else {
            return Ok(Value::Object("call".into()));
        };
        let args = match args {
            Value::Tuple(a) => a,
            v => return Err(bad!("{module}.{name} called with {}", v.describe())),
        };
        Ok(match (module.as_str(), name.as_str()) {
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2") => {
                let [storage, offset, size, stride, ..] = args.as_slice() else {
                    return Err(bad!("torch._utils.{name} with {} arguments", args.len()));
                };
                let Value::Storage {
                    key,
                    dtype,
                    offset: view_offset,
                } = storage
                else {
                    return Err(bad!(
                        "torch._utils.{name} of {}, not a storage",
                        storage.describe()
                    ));
                };
                let offset = view_offset
                    .checked_add(offset.usize("a storage offset")?)
                    .ok_or("a storage offset is too large")?;
                Value::Tensor(TensorRef {
                    storage: key.clone(),
                    dtype,
                    offset,
                    shape: size.usizes("a size")?,
                    stride: stride.usizes("a stride")?,
                })
            }
            // nn.Parameter(tensor, requires_grad, hooks)
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => args
                .into_iter()
                .next()
                .ok_or("torch._utils._rebuild_parameter without arguments")?,
            ("collections", "OrderedDict") | ("builtins", "dict") => Value::Dict(Vec::new()),
            _ => Value::Object(format!("{module}.{name}")),
        })
    }

    /// Runs the pickle that starts at [`Self::position`] to its STOP and
    /// returns the value it built; the position is then just past it, where
    /// the legacy format puts the next pickle. Stack and memo start empty,
    /// as each of `torch.save`'s `pickle.dump`s starts a new pickler.
    pub(super) fn load(&mut self) -> Result<Value, TorchFileError> {
        self.stack.clear();
        self.marks.clear();
        self.memo.clear();
        loop {
            let at = self.pos;
            let op = self
                .u8()
                .map_err(|e| format!("{}, byte {at}: {e}", self.source))?;
            self.step(op)
                .map_err(|e| format!("{}, opcode 0x{op:02x} at byte {at}: {e}", self.source))?;
            if op == b'.' {
                return self.pop();
            }
        }
    }
}

mod opcodes;

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pickle: &[u8]) -> Result<Value, TorchFileError> {
        Unpickler::new(pickle, "data.pkl").load()
    }

    #[test]
    fn truncated_and_unknown_pickles_are_errors_not_panics() {
        // PROTO 2, EMPTY_DICT, then the pickle stops short.
        let err = load(b"\x80\x02}(X\x05\x00\x00\x00ab")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "data.pkl, opcode 0x58 at byte 4: the pickle ends early"
        );
        let err = load(b"\x80\x02").unwrap_err().to_string();
        assert_eq!(err, "data.pkl, byte 2: the pickle ends early");
        let err = load(b"\x80\x02\xff").unwrap_err().to_string();
        assert_eq!(
            err,
            "data.pkl, opcode 0xff at byte 2: unsupported pickle opcode 0xff"
        );
        let err = load(b"s").unwrap_err().to_string();
        assert!(err.contains("underflows"), "{err}");
        // LONG1 of -2 (one byte 0xfe), then STOP.
        assert_eq!(load(b"\x8a\x01\xfe.").unwrap(), Value::Int(-2));
    }

    /// The first pickle of a legacy file, as `pickletools.dis` shows it in
    /// `tests/fixtures/adm/reader_legacy.pt`: LONG1 of 10 bytes.
    #[test]
    fn long1_reads_the_legacy_magic_number() {
        let pickle = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
        assert_eq!(
            load(pickle).unwrap(),
            Value::Int(0x1950_a86a_20f9_469c_fc6c)
        );
        let err =
            load(b"\x8a\x11\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00.")
                .unwrap_err()
                .to_string();
        assert!(err.ends_with("an integer of 17 bytes"), "{err}");
    }

    /// Consecutive pickles, each with its own memo, as the legacy format
    /// writes them; Python 2's SHORT_BINSTRING reads as a string.
    #[test]
    fn pickles_run_one_after_another_with_fresh_memos() {
        // ['a'] memoised as 0; then 'b' memoised as 0 and fetched back.
        let data = b"\x80\x02]q\x00X\x01\x00\x00\x00aa.\x80\x02U\x01bq\x00h\x00\x86.";
        let mut pickles = Unpickler::new(data, "the file");
        assert_eq!(
            pickles.load().unwrap(),
            Value::List(vec![Value::Str("a".into())])
        );
        assert_eq!(pickles.position(), 13);
        assert_eq!(
            pickles.load().unwrap(),
            Value::Tuple(vec![Value::Str("b".into()), Value::Str("b".into())])
        );
        assert_eq!(pickles.position(), data.len());
        let err = pickles.load().unwrap_err().to_string();
        assert_eq!(
            err,
            format!("the file, byte {}: the pickle ends early", data.len())
        );
    }

    /// torch < 0.4 saved a storage view as `view_metadata` `(view_key,
    /// offset, numel)`: a tensor in it starts `offset` elements into the
    /// root storage.
    #[test]
    fn a_legacy_storage_view_adds_its_offset() {
        let mut u = Unpickler::new(b"", "the file");
        let pid = |view: Value| {
            Value::Tuple(vec![
                Value::Str("storage".into()),
                Value::Global("torch".into(), "HalfStorage".into()),
                Value::Str("140".into()),
                Value::Str("cpu".into()),
                Value::Int(10),
                view,
            ])
        };
        let view = Value::Tuple(vec![Value::Str("150".into()), Value::Int(4), Value::Int(6)]);
        let storage = u.persistent(pid(view)).unwrap();
        let rebuild = Value::Global("torch._utils".into(), "_rebuild_tensor_v2".into());
        let args = Value::Tuple(vec![
            storage,
            Value::Int(1),
            Value::Tuple(vec![Value::Int(2)]),
            Value::Tuple(vec![Value::Int(1)]),
        ]);
        assert_eq!(
            u.call(rebuild, args).unwrap(),
            Value::Tensor(TensorRef {
                storage: "140".into(),
                dtype: "F16",
                offset: 5,
                shape: vec![2],
                stride: vec![1],
            })
        );
        assert_eq!(u.storage_dtypes()["140"], "F16");
        assert_eq!(
            u.persistent(pid(Value::None)).unwrap(),
            Value::Storage {
                key: "140".into(),
                dtype: "F16",
                offset: 0,
            }
        );
        let err = u.persistent(pid(Value::Int(3))).unwrap_err().to_string();
        assert_eq!(err, "a storage's view_metadata is an int");
    }
}
