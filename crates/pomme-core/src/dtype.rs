//! Element types, with their KServe v2 and NumPy names.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The element type of a tensor. `Bytes` holds variable-length byte strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
    Bytes,
}

impl DType {
    /// Every dtype, in a stable order.
    pub const ALL: [DType; 14] = [
        DType::Bool,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
        DType::Bytes,
    ];

    /// Size of one element in bytes; `None` for variable-length `Bytes`.
    pub const fn size_of(self) -> Option<usize> {
        Some(match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
            DType::Bytes => return None,
        })
    }

    /// The KServe v2 / Open Inference Protocol datatype name (`FP32`, `INT64`, ...).
    pub const fn kserve_name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "UINT8",
            DType::U16 => "UINT16",
            DType::U32 => "UINT32",
            DType::U64 => "UINT64",
            DType::I8 => "INT8",
            DType::I16 => "INT16",
            DType::I32 => "INT32",
            DType::I64 => "INT64",
            DType::F16 => "FP16",
            DType::BF16 => "BF16",
            DType::F32 => "FP32",
            DType::F64 => "FP64",
            DType::Bytes => "BYTES",
        }
    }

    /// Parses a KServe v2 datatype name.
    pub fn from_kserve(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.kserve_name() == name)
    }

    /// Triton's `config.pbtxt` name (`TYPE_FP32`, `TYPE_STRING`, ...).
    pub fn from_triton_config(name: &str) -> Option<DType> {
        match name.strip_prefix("TYPE_")? {
            "STRING" => Some(DType::Bytes),
            other => DType::from_kserve(other),
        }
    }

    /// The NumPy type string in little-endian form (`<f4`), `None` for `Bytes`
    /// (written as fixed-width `<U`/`|S` arrays). BF16 is `<V2`, the raw
    /// two-byte form NumPy writes for `ml_dtypes.bfloat16` arrays.
    pub const fn numpy_descr(self) -> Option<&'static str> {
        Some(match self {
            DType::Bool => "|b1",
            DType::U8 => "|u1",
            DType::U16 => "<u2",
            DType::U32 => "<u4",
            DType::U64 => "<u8",
            DType::I8 => "|i1",
            DType::I16 => "<i2",
            DType::I32 => "<i4",
            DType::I64 => "<i8",
            DType::F16 => "<f2",
            DType::F32 => "<f4",
            DType::F64 => "<f8",
            DType::BF16 => "<V2",
            DType::Bytes => return None,
        })
    }

    /// True for floating-point types.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kserve_name())
    }
}

/// A fixed-size element type that can be viewed as raw little-endian bytes.
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {
        $(impl Element for $t { const DTYPE: DType = DType::$d; })*
    };
}

element!(
    u8 => U8, u16 => U16, u32 => U32, u64 => U64,
    i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    half::f16 => F16, half::bf16 => BF16, f32 => F32, f64 => F64,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kserve_names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_kserve(d.kserve_name()), Some(d));
        }
        assert_eq!(DType::from_kserve("FLOAT"), None);
    }

    #[test]
    fn triton_config_names() {
        assert_eq!(DType::from_triton_config("TYPE_FP32"), Some(DType::F32));
        assert_eq!(DType::from_triton_config("TYPE_STRING"), Some(DType::Bytes));
        assert_eq!(DType::from_triton_config("FP32"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(DType::F32.size_of(), Some(4));
        assert_eq!(DType::BF16.size_of(), Some(2));
        assert_eq!(DType::Bytes.size_of(), None);
    }
}
