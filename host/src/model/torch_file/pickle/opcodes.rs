//! The pickle opcodes the reader implements, one function per group
//! (framing, numbers, text, collections, objects, memo), dispatched by
//! [`Unpickler::step`].

use super::super::TorchFileError;
use super::{Unpickler, Value};

impl Unpickler<'_> {
    pub(super) fn step(&mut self, op: u8) -> Result<(), TorchFileError> {
        match op {
            0x80 | 0x95 | b'.' | b'(' => self.framing(op),
            b'N' | 0x88 | 0x89 | b'J' | b'K' | b'M' | 0x8a | b'G' => self.number(op),
            b'X' | b'T' | 0x8c | b'U' | 0x8d | b'C' | b'B' | 0x8e => self.text(op),
            b'}' | b']' | b')' | b't' | 0x85..=0x87 | b'l' | b'd' | b'a' | b'e' | b's' | b'u' => {
                self.collection(op)
            }
            b'c' | 0x93 | b'Q' | b'R' | 0x81 | b'b' => self.object(op),
            b'q' | b'r' | 0x94 | b'h' | b'j' => self.memo(op),
            other => Err(unsupported(other)),
        }
    }

    /// PROTO, FRAME, STOP and MARK.
    fn framing(&mut self, op: u8) -> Result<(), TorchFileError> {
        match op {
            0x80 => {
                self.u8()?; // PROTO
            }
            0x95 => {
                self.u64()?; // FRAME
            }
            b'.' => {} // STOP
            b'(' => self.marks.push(self.stack.len()),
            other => return Err(unsupported(other)),
        }
        Ok(())
    }

    /// None, booleans, integers and floats.
    fn number(&mut self, op: u8) -> Result<(), TorchFileError> {
        match op {
            b'N' => self.stack.push(Value::None),
            0x88 => self.stack.push(Value::Bool(true)),
            0x89 => self.stack.push(Value::Bool(false)),
            b'J' => {
                let n = self.u32()? as i32;
                self.stack.push(Value::Int(i128::from(n)));
            }
            b'K' => {
                let n = self.u8()?;
                self.stack.push(Value::Int(i128::from(n)));
            }
            b'M' => {
                let n = self.u16()?;
                self.stack.push(Value::Int(i128::from(n)));
            }
            0x8a => {
                // LONG1: n-byte little-endian two's complement
                let n = usize::from(self.u8()?);
                let bytes = self.take(n)?;
                if n > 16 {
                    return Err(bad!("an integer of {n} bytes"));
                }
                let mut v: i128 = 0;
                for (i, &b) in bytes.iter().enumerate() {
                    v |= i128::from(b) << (8 * i);
                }
                if n > 0 && n < 16 && bytes[n - 1] & 0x80 != 0 {
                    v -= 1i128 << (8 * n);
                }
                self.stack.push(Value::Int(v));
            }
            b'G' => {
                let b = self.take(8)?;
                let v = f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                self.stack.push(Value::Float(v));
            }
            other => return Err(unsupported(other)),
        }
        Ok(())
    }

    /// Strings and bytes.
    fn text(&mut self, op: u8) -> Result<(), TorchFileError> {
        match op {
            // BINUNICODE; BINSTRING, a Python 2 `str`, which torch.load
            // decodes as UTF-8
            b'X' | b'T' => {
                let n = self.u32()? as usize;
                let s = self.string(n)?;
                self.stack.push(Value::Str(s));
            }
            // SHORT_BINUNICODE; SHORT_BINSTRING, as BINSTRING
            0x8c | b'U' => {
                let n = usize::from(self.u8()?);
                let s = self.string(n)?;
                self.stack.push(Value::Str(s));
            }
            0x8d => {
                let n = usize::try_from(self.u64()?).map_err(|_| "a string too long")?;
                let s = self.string(n)?;
                self.stack.push(Value::Str(s));
            }
            b'C' | b'B' | 0x8e => {
                let n = match op {
                    b'C' => usize::from(self.u8()?),
                    b'B' => self.u32()? as usize,
                    _ => usize::try_from(self.u64()?).map_err(|_| "bytes too long")?,
                };
                let b = self.take(n)?.to_vec();
                self.stack.push(Value::Bytes(b));
            }
            other => return Err(unsupported(other)),
        }
        Ok(())
    }

    /// Tuples, lists and dicts, and adding to them.
    fn collection(&mut self, op: u8) -> Result<(), TorchFileError> {
        match op {
            b'}' => self.stack.push(Value::Dict(Vec::new())),
            b']' => self.stack.push(Value::List(Vec::new())),
            b')' => self.stack.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if self.stack.len() < n {
                    return Err("the pickle stack underflows".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::List(items));
            }
            b'd' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Dict(Vec::new()));
                self.set_items(items)?;
            }
            b'a' => {
                let v = self.pop()?;
                if let Value::List(l) = self.top()? {
                    l.push(v);
                }
            }
            b'e' => {
                let items = self.pop_mark()?;
                if let Value::List(l) = self.top()? {
                    l.extend(items);
                }
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![k, v])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)?;
            }
            other => return Err(unsupported(other)),
        }
        Ok(())
    }

    /// Globals, persistent ids (tensor storages), calls, NEWOBJ and BUILD.
    fn object(&mut self, op: u8) -> Result<(), TorchFileError> {
        match op {
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                    _ => return Err("STACK_GLOBAL of non-strings".into()),
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.persistent(pid)?;
                self.stack.push(v);
            }
            b'R' => {
                let args = self.pop()?;
                let func = self.pop()?;
                let v = self.call(func, args)?;
                self.stack.push(v);
            }
            0x81 => {
                // NEWOBJ cls args
                self.pop()?;
                let cls = self.pop()?;
                let name = match cls {
                    Value::Global(m, n) => format!("{m}.{n}"),
                    v => v.describe(),
                };
                self.stack.push(Value::Object(name));
            }
            b'b' => {
                // BUILD: the state (an OrderedDict's `_metadata`, a
                // parameter's attributes) does not change any tensor.
                self.pop()?;
            }
            other => return Err(unsupported(other)),
        }
        Ok(())
    }

    /// The memo: PUT and GET.
    fn memo(&mut self, op: u8) -> Result<(), TorchFileError> {
        match op {
            b'q' => {
                let i = self.u8()?;
                self.memo_put(u32::from(i))?;
            }
            b'r' => {
                let i = self.u32()?;
                self.memo_put(i)?;
            }
            0x94 => {
                let i = u32::try_from(self.memo.len()).map_err(|_| "memo too large")?;
                self.memo_put(i)?;
            }
            b'h' => {
                let i = self.u8()?;
                let v = self.memo_get(u32::from(i))?;
                self.stack.push(v);
            }
            b'j' => {
                let i = self.u32()?;
                let v = self.memo_get(i)?;
                self.stack.push(v);
            }
            other => return Err(unsupported(other)),
        }
        Ok(())
    }
}

/// The error for an opcode the reader does not implement.
fn unsupported(op: u8) -> TorchFileError {
    bad!("unsupported pickle opcode 0x{op:02x}")
}
