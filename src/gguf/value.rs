//! GGUF metadata values and the ordered key/value map that holds them.
//!
//! The variants mirror `enum gguf_type` one to one, so a value read from a file is written back
//! with exactly the same type: llama.cpp's loader checks KV types strictly (a `u32` key stored as
//! `i32` fails to load), which rules out any "helpful" numeric widening here. Arrays are a
//! separate enum because GGUF has no nested arrays; the type system then forbids them too.
//! [`Metadata`] keeps insertion order because the order of KVs in a file is visible (in `info`
//! output and byte-for-byte comparisons) even though the loader does not care about it.

use std::fmt;

/// The `enum gguf_type` ids, which are part of the file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    /// The type with this id, or `None` for ids ggml does not define.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// ggml's name for the type (`gguf_type_name`).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "str",
            Array => "arr",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// Bytes of one element on disk; `None` for strings and arrays, which are variable-sized.
    pub fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A homogeneous array value. There is no nested variant: ggml rejects arrays of arrays.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// Generates `Value::as_x(&self) -> Option<x>` accessors that match only the exact variant.
macro_rules! scalar_accessors {
    ($($fn:ident: $variant:ident => $ty:ty),* $(,)?) => {
        $(
            #[doc = concat!("The value if it is stored as `", stringify!($variant), "` (no conversions).")]
            pub fn $fn(&self) -> Option<$ty> {
                match self {
                    Value::$variant(v) => Some(*v),
                    _ => None,
                }
            }
        )*
    };
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// ggml's name for the stored type, e.g. `u32`, `str`, `arr`.
    pub fn type_name(&self) -> &'static str {
        self.value_type().name()
    }

    scalar_accessors! {
        as_u8: U8 => u8, as_i8: I8 => i8, as_u16: U16 => u16, as_i16: I16 => i16,
        as_u32: U32 => u32, as_i32: I32 => i32, as_f32: F32 => f32, as_bool: Bool => bool,
        as_u64: U64 => u64, as_i64: I64 => i64, as_f64: F64 => f64,
    }

    /// The string if this is a `String` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Any integer type widened to `i128` (handy for displays and range checks; the loader
    /// itself is strict about types, so do not use this to decide what to write).
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }
}

/// Generates `Array::as_xs(&self) -> Option<&[x]>` accessors.
macro_rules! slice_accessors {
    ($($fn:ident: $variant:ident => $ty:ty),* $(,)?) => {
        $(
            #[doc = concat!("The elements if this is an array of `", stringify!($variant), "`.")]
            pub fn $fn(&self) -> Option<&[$ty]> {
                match self {
                    Array::$variant(v) => Some(v),
                    _ => None,
                }
            }
        )*
    };
}

/// Applies `$body` to the inner vector of any array variant.
macro_rules! each_array {
    ($self:expr, $v:ident => $body:expr) => {
        match $self {
            Array::U8($v) => $body,
            Array::I8($v) => $body,
            Array::U16($v) => $body,
            Array::I16($v) => $body,
            Array::U32($v) => $body,
            Array::I32($v) => $body,
            Array::F32($v) => $body,
            Array::Bool($v) => $body,
            Array::String($v) => $body,
            Array::U64($v) => $body,
            Array::I64($v) => $body,
            Array::F64($v) => $body,
        }
    };
}

impl Array {
    pub fn len(&self) -> usize {
        each_array!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// ggml's name for the element type, e.g. `str` for a token list.
    pub fn type_name(&self) -> &'static str {
        self.elem_type().name()
    }

    slice_accessors! {
        as_u8s: U8 => u8, as_i8s: I8 => i8, as_u16s: U16 => u16, as_i16s: I16 => i16,
        as_u32s: U32 => u32, as_i32s: I32 => i32, as_f32s: F32 => f32, as_bools: Bool => bool,
        as_strings: String => String, as_u64s: U64 => u64, as_i64s: I64 => i64,
        as_f64s: F64 => f64,
    }

    /// Writes elements `[0, n)` separated by ", ".
    fn fmt_elems(&self, f: &mut fmt::Formatter<'_>, n: usize) -> fmt::Result {
        fn list<T>(
            f: &mut fmt::Formatter<'_>,
            v: &[T],
            n: usize,
            one: impl Fn(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
        ) -> fmt::Result {
            for (i, x) in v.iter().take(n).enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                one(f, x)?;
            }
            Ok(())
        }
        match self {
            Array::String(v) => list(f, v, n, |f, s| write!(f, "{s:?}")),
            Array::U8(v) => list(f, v, n, |f, x| write!(f, "{x}")),
            Array::I8(v) => list(f, v, n, |f, x| write!(f, "{x}")),
            Array::U16(v) => list(f, v, n, |f, x| write!(f, "{x}")),
            Array::I16(v) => list(f, v, n, |f, x| write!(f, "{x}")),
            Array::U32(v) => list(f, v, n, |f, x| write!(f, "{x}")),
            Array::I32(v) => list(f, v, n, |f, x| write!(f, "{x}")),
            Array::F32(v) => list(f, v, n, |f, x| write!(f, "{x}")),
            Array::Bool(v) => list(f, v, n, |f, x| write!(f, "{x}")),
            Array::U64(v) => list(f, v, n, |f, x| write!(f, "{x}")),
            Array::I64(v) => list(f, v, n, |f, x| write!(f, "{x}")),
            Array::F64(v) => list(f, v, n, |f, x| write!(f, "{x}")),
        }
    }
}

/// Elements shown by `Display` before an array is cut short with `...`.
const DISPLAY_ELEMS: usize = 8;

/// `[str; 102400] ["<s>", "a", ...]`: the element type and length, then the first few elements.
/// The alternate form (`{:#}`) prints every element.
impl fmt::Display for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.len();
        let shown = if f.alternate() {
            n
        } else {
            n.min(DISPLAY_ELEMS)
        };
        write!(f, "[{}; {}] [", self.type_name(), n)?;
        self.fmt_elems(f, shown)?;
        if shown < n {
            f.write_str(", ...")?;
        }
        f.write_str("]")
    }
}

/// Scalars print plainly, strings quoted and escaped (so a chat template stays on one line),
/// arrays as in [`Array`]'s `Display`.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::String(s) => write!(f, "{s:?}"),
            Value::Array(a) => fmt::Display::fmt(a, f),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
        }
    }
}

/// `From` for scalars and vectors, so callers can write `meta.insert("k", 3u32)`.
macro_rules! from_impls {
    ($($variant:ident: $ty:ty),* $(,)?) => {
        $(
            impl From<$ty> for Value {
                fn from(v: $ty) -> Value {
                    Value::$variant(v)
                }
            }
            impl From<Vec<$ty>> for Array {
                fn from(v: Vec<$ty>) -> Array {
                    Array::$variant(v)
                }
            }
            impl From<Vec<$ty>> for Value {
                fn from(v: Vec<$ty>) -> Value {
                    Value::Array(Array::$variant(v))
                }
            }
        )*
    };
}

from_impls! {
    U8: u8, I8: i8, U16: u16, I16: i16, U32: u32, I32: i32, F32: f32, Bool: bool,
    String: String, U64: u64, I64: i64, F64: f64,
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.to_string())
    }
}

impl From<Vec<&str>> for Value {
    fn from(v: Vec<&str>) -> Value {
        Value::Array(Array::String(v.into_iter().map(String::from).collect()))
    }
}

impl From<Array> for Value {
    fn from(a: Array) -> Value {
        Value::Array(a)
    }
}

/// The KV section of a GGUF file: unique keys in file order.
///
/// Lookups are linear; a model has a few dozen keys, so a hash index would cost more than it saves.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
}

impl Metadata {
    pub fn new() -> Metadata {
        Metadata::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key`: replaces the value in place (keeping the key's position) if present, else
    /// appends. Returns the old value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        let key = key.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                self.entries.push((key, value));
                None
            }
        }
    }

    /// [`Metadata::insert`] for chaining: `meta.set("a", 1u32).set("b", "x")`.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<Value>) -> &mut Metadata {
        self.insert(key, value);
        self
    }

    /// Removes `key`, keeping the order of the others.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Appends without the uniqueness check; the reader uses it after checking duplicates itself
    /// (so that loading stays linear in the number of keys).
    pub(crate) fn push_unchecked(&mut self, key: String, value: Value) {
        self.entries.push((key, value));
    }
}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a str, &'a Value);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a Value)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Metadata {
        let mut m = Metadata::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_in_place_and_remove_keeps_order() {
        let mut m = Metadata::new();
        m.set("a", 1u32).set("b", "x").set("c", true);
        assert_eq!(m.insert("b", 2.5f32), Some(Value::from("x")));
        assert_eq!(m.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(m.get("b").and_then(Value::as_f32), Some(2.5));
        assert_eq!(m.remove("a"), Some(Value::U32(1)));
        assert_eq!(m.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(m.remove("zz"), None);
    }

    #[test]
    fn accessors_do_not_convert() {
        assert_eq!(Value::U32(7).as_u32(), Some(7));
        assert_eq!(Value::I32(7).as_u32(), None);
        assert_eq!(Value::I32(-7).as_integer(), Some(-7));
        assert_eq!(Value::from("s").as_str(), Some("s"));
        let a = Value::from(vec![1.0f32, 2.0]);
        assert_eq!(
            a.as_array().and_then(Array::as_f32s),
            Some(&[1.0f32, 2.0][..])
        );
        assert_eq!(a.type_name(), "arr");
        assert_eq!(a.as_array().map(Array::type_name), Some("f32"));
    }

    #[test]
    fn display_summarises_long_arrays() {
        let toks: Vec<String> = (0..102400).map(|i| format!("t{i}")).collect();
        let v = Value::from(toks);
        assert_eq!(
            v.to_string(),
            r#"[str; 102400] ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", ...]"#
        );
        assert_eq!(Value::from(vec![1u8, 2]).to_string(), "[u8; 2] [1, 2]");
        assert_eq!(
            format!("{:#}", Value::from(vec![true; 9]))
                .matches("true")
                .count(),
            9
        );
        assert_eq!(Value::from("a\nb").to_string(), r#""a\nb""#);
        assert_eq!(Value::F32(0.5).to_string(), "0.5");
    }

    #[test]
    fn type_ids_round_trip() {
        for id in 0..13 {
            assert_eq!(ValueType::from_id(id).map(ValueType::id), Some(id));
        }
        assert_eq!(ValueType::from_id(13), None);
    }
}
