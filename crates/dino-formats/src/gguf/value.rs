use dino_core::{Error, Result};
use std::collections::HashMap;
use std::fmt;

/// GGUF metadata value type ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
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

    /// The fewest bytes one value of this type occupies in a file (a string is at least its
    /// u64 length; an array at least its u32 type and u64 count). Used to bound counts read
    /// from the file before anything is allocated.
    pub fn min_encoded_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

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
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
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

/// A homogeneous metadata array; arrays of arrays nest.
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
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

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
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// Element `i` as an i64, for integer arrays.
    pub fn int_at(&self, i: usize) -> Option<i64> {
        Some(match self {
            Array::U8(v) => *v.get(i)? as i64,
            Array::I8(v) => *v.get(i)? as i64,
            Array::U16(v) => *v.get(i)? as i64,
            Array::I16(v) => *v.get(i)? as i64,
            Array::U32(v) => *v.get(i)? as i64,
            Array::I32(v) => *v.get(i)? as i64,
            Array::U64(v) => i64::try_from(*v.get(i)?).ok()?,
            Array::I64(v) => *v.get(i)?,
            _ => return None,
        })
    }
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

    /// Any integer value as i128 (wide enough for every GGUF integer type).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v as i128,
            Value::I8(v) => v as i128,
            Value::U16(v) => v as i128,
            Value::I16(v) => v as i128,
            Value::U32(v) => v as i128,
            Value::I32(v) => v as i128,
            Value::U64(v) => v as i128,
            Value::I64(v) => v as i128,
            _ => return None,
        })
    }

    /// Any numeric value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_int().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    /// Short human form: arrays show their type, length and first few items.
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
            Value::String(s) => {
                let mut short: String = s.chars().take(80).collect();
                if short.len() < s.len() {
                    short.push('…');
                }
                write!(f, "{short:?}")
            }
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Array(a) => {
                write!(f, "[{}; {}]", a.elem_type().name(), a.len())?;
                let preview: Vec<String> = match a {
                    Array::String(v) => v.iter().take(5).map(|s| format!("{s:?}")).collect(),
                    Array::F32(v) => v.iter().take(5).map(|x| x.to_string()).collect(),
                    Array::F64(v) => v.iter().take(5).map(|x| x.to_string()).collect(),
                    Array::Bool(v) => v.iter().take(5).map(|x| x.to_string()).collect(),
                    Array::Array(_) => Vec::new(),
                    _ => (0..a.len().min(5))
                        .filter_map(|i| a.int_at(i).map(|x| x.to_string()))
                        .collect(),
                };
                if !preview.is_empty() {
                    write!(f, " {}", preview.join(", "))?;
                    if a.len() > preview.len() {
                        write!(f, ", …")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Metadata key/value pairs in file order, with typed accessors. Accessor errors name the key
/// and, where it is known, the file.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    context: String,
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// An empty set; `context` (usually the file path) prefixes accessor errors.
    pub fn new(context: impl Into<String>) -> Self {
        Metadata {
            context: context.into(),
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Insert or replace `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        if let Some(&i) = self.index.get(&key) {
            self.entries[i].1 = value;
        } else {
            self.index.insert(key.clone(), self.entries.len());
            self.entries.push((key, value));
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn ctx(&self, key: &str) -> String {
        if self.context.is_empty() {
            format!("metadata key '{key}'")
        } else {
            format!("{}: metadata key '{key}'", self.context)
        }
    }

    fn missing(&self, key: &str) -> Error {
        Error::MissingKey {
            context: self.context.clone(),
            key: key.to_string(),
        }
    }

    fn wrong(&self, key: &str, want: &str, v: &Value) -> Error {
        Error::format(
            self.ctx(key),
            format!("expected {want}, found {}", v.value_type().name()),
        )
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "string", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_int_in(&self, key: &str, lo: i128, hi: i128, want: &str) -> Result<Option<i128>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let x = v.as_int().ok_or_else(|| self.wrong(key, want, v))?;
                if x < lo || x > hi {
                    return Err(Error::format(
                        self.ctx(key),
                        format!("value {x} out of range for {want}"),
                    ));
                }
                Ok(Some(x))
            }
        }
    }

    /// Any integer type whose value fits in u32.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        Ok(self
            .opt_int_in(key, 0, u32::MAX as i128, "u32")?
            .map(|x| x as u32))
    }

    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.opt_u32(key)?.ok_or_else(|| self.missing(key))
    }

    /// Any integer type whose value fits in u64.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        Ok(self
            .opt_int_in(key, 0, u64::MAX as i128, "u64")?
            .map(|x| x as u64))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.opt_u64(key)?.ok_or_else(|| self.missing(key))
    }

    /// Any integer type whose value fits in i64.
    pub fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        Ok(self
            .opt_int_in(key, i64::MIN as i128, i64::MAX as i128, "i64")?
            .map(|x| x as i64))
    }

    /// Any numeric type, as f32.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| self.wrong(key, "number", v)),
        }
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "bool", v)),
        }
    }

    pub fn opt_array(&self, key: &str) -> Result<Option<&Array>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "array", v)),
        }
    }

    pub fn opt_str_array(&self, key: &str) -> Result<Option<&[String]>> {
        match self.opt_array(key)? {
            None => Ok(None),
            Some(Array::String(v)) => Ok(Some(v)),
            Some(a) => Err(Error::format(
                self.ctx(key),
                format!(
                    "expected array of string, found array of {}",
                    a.elem_type().name()
                ),
            )),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        self.opt_str_array(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn opt_f32_array(&self, key: &str) -> Result<Option<&[f32]>> {
        match self.opt_array(key)? {
            None => Ok(None),
            Some(Array::F32(v)) => Ok(Some(v)),
            Some(a) => Err(Error::format(
                self.ctx(key),
                format!(
                    "expected array of f32, found array of {}",
                    a.elem_type().name()
                ),
            )),
        }
    }

    pub fn opt_i32_array(&self, key: &str) -> Result<Option<&[i32]>> {
        match self.opt_array(key)? {
            None => Ok(None),
            Some(Array::I32(v)) => Ok(Some(v)),
            Some(a) => Err(Error::format(
                self.ctx(key),
                format!(
                    "expected array of i32, found array of {}",
                    a.elem_type().name()
                ),
            )),
        }
    }

    /// An integer array of any element type, as u64s (negative values are an error).
    pub fn opt_u64_array(&self, key: &str) -> Result<Option<Vec<u64>>> {
        match self.opt_array(key)? {
            None => Ok(None),
            Some(a) => {
                let mut out = Vec::with_capacity(a.len());
                for i in 0..a.len() {
                    let x = a
                        .int_at(i)
                        .and_then(|x| u64::try_from(x).ok())
                        .ok_or_else(|| {
                            Error::format(
                                self.ctx(key),
                                format!("element {i} is not a non-negative integer"),
                            )
                        })?;
                    out.push(x);
                }
                Ok(Some(out))
            }
        }
    }

    /// `{arch}.{suffix}`, e.g. `arch_key("llama", "context_length")`.
    pub fn arch_key(arch: &str, suffix: &str) -> String {
        format!("{arch}.{suffix}")
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }
}
