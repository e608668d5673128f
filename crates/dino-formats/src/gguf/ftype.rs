//! `general.file_type`: llama.cpp's file types (`llama_ftype`), as `llama-quantize` names them,
//! and its fallback for rows that are not whole blocks of a type.

use dino_core::GgmlType;

/// A file type, as `llama-quantize` names them (`general.file_type` holds its number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum Ftype {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q2_K_S,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

impl Ftype {
    pub const ALL: [Ftype; 18] = [
        Ftype::F32,
        Ftype::F16,
        Ftype::BF16,
        Ftype::Q4_0,
        Ftype::Q4_1,
        Ftype::Q5_0,
        Ftype::Q5_1,
        Ftype::Q8_0,
        Ftype::Q2_K,
        Ftype::Q2_K_S,
        Ftype::Q3_K_S,
        Ftype::Q3_K_M,
        Ftype::Q3_K_L,
        Ftype::Q4_K_S,
        Ftype::Q4_K_M,
        Ftype::Q5_K_S,
        Ftype::Q5_K_M,
        Ftype::Q6_K,
    ];

    /// `llama_ftype`'s number, written as `general.file_type`.
    pub fn id(self) -> u32 {
        use Ftype::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q8_0 => 7,
            Q5_0 => 8,
            Q5_1 => 9,
            Q2_K => 10,
            Q3_K_S => 11,
            Q3_K_M => 12,
            Q3_K_L => 13,
            Q4_K_S => 14,
            Q4_K_M => 15,
            Q5_K_S => 16,
            Q5_K_M => 17,
            Q6_K => 18,
            Q2_K_S => 21,
            BF16 => 32,
        }
    }

    pub fn name(self) -> &'static str {
        use Ftype::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q2_K => "Q2_K",
            Q2_K_S => "Q2_K_S",
            Q3_K_S => "Q3_K_S",
            Q3_K_M => "Q3_K_M",
            Q3_K_L => "Q3_K_L",
            Q4_K_S => "Q4_K_S",
            Q4_K_M => "Q4_K_M",
            Q5_K_S => "Q5_K_S",
            Q5_K_M => "Q5_K_M",
            Q6_K => "Q6_K",
        }
    }

    /// A file type by name, any case; `Q3_K`, `Q4_K`, `Q5_K` mean their `_M` mixes, as in
    /// `llama-quantize`.
    pub fn parse(s: &str) -> Option<Ftype> {
        let u = s.trim().to_ascii_uppercase();
        let u = match u.as_str() {
            "Q3_K" => "Q3_K_M",
            "Q4_K" => "Q4_K_M",
            "Q5_K" => "Q5_K_M",
            other => other,
        };
        Ftype::ALL.into_iter().find(|f| f.name() == u)
    }

    /// The file type whose default type is `t` (for a K-quant, its `_S` mix, as llama.cpp's
    /// converter labels a file of one type); `None` for types no file type is named after.
    pub fn of_type(t: GgmlType) -> Option<Ftype> {
        use GgmlType as T;
        Some(match t {
            T::Q2_K => Ftype::Q2_K,
            T::Q3_K => Ftype::Q3_K_S,
            T::Q4_K => Ftype::Q4_K_S,
            T::Q5_K => Ftype::Q5_K_S,
            _ => Ftype::ALL
                .into_iter()
                .find(|f| f.default_type() == t && !f.name().contains("_K_"))?,
        })
    }

    /// The type of the tensors no rule raises (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        use Ftype::*;
        match self {
            F32 => GgmlType::F32,
            F16 => GgmlType::F16,
            BF16 => GgmlType::BF16,
            Q4_0 => GgmlType::Q4_0,
            Q4_1 => GgmlType::Q4_1,
            Q5_0 => GgmlType::Q5_0,
            Q5_1 => GgmlType::Q5_1,
            Q8_0 => GgmlType::Q8_0,
            Q2_K | Q2_K_S => GgmlType::Q2_K,
            Q3_K_S | Q3_K_M | Q3_K_L => GgmlType::Q3_K,
            Q4_K_S | Q4_K_M => GgmlType::Q4_K,
            Q5_K_S | Q5_K_M => GgmlType::Q5_K,
            Q6_K => GgmlType::Q6_K,
        }
    }
}

/// llama.cpp's fallback when a row of `ne0` elements is not a whole number of `want`'s blocks
/// (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, Q2_K/Q3_K → Q4_0, then F16).
pub fn fallback_type(want: GgmlType, ne0: u64) -> GgmlType {
    use GgmlType::*;
    let fits = |t: GgmlType| ne0.is_multiple_of(t.block_size() as u64);
    if fits(want) {
        return want;
    }
    let next = match want {
        Q4_K => Q5_0,
        Q5_K => Q5_1,
        Q6_K => Q8_0,
        Q2_K | Q3_K => Q4_0,
        _ => F16,
    };
    if fits(next) {
        next
    } else {
        F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ftype_names_and_ids() {
        assert_eq!(Ftype::parse("q4_k_m"), Some(Ftype::Q4_K_M));
        assert_eq!(Ftype::parse("Q4_K"), Some(Ftype::Q4_K_M));
        assert_eq!(Ftype::parse("q3_k"), Some(Ftype::Q3_K_M));
        assert_eq!(Ftype::parse("iq2_xs"), None);
        assert_eq!(Ftype::Q4_K_M.id(), 15);
        assert_eq!(Ftype::BF16.id(), 32);
        for f in Ftype::ALL {
            assert_eq!(Ftype::parse(f.name()), Some(f));
        }
    }
}
