//! `tokenizer.ggml.*` metadata → [`SpecRef`] (a borrowed [`crate::VocabSpec`]).

use std::borrow::Cow;

use dino_core::{Error, Result};
use dino_formats::gguf::{Array, Metadata};

use crate::SpecRef;

pub(crate) fn spec_from_metadata(md: &Metadata) -> Result<SpecRef<'_>> {
    let key = |k: &str| format!("tokenizer.ggml.{k}");
    Ok(SpecRef {
        model: md.get_str(&key("model"))?,
        pre: md.opt_str(&key("pre"))?,
        tokens: md.get_str_array(&key("tokens"))?,
        scores: scores(md, &key("scores"))?,
        token_types: md.opt_i32_array(&key("token_type"))?,
        merges: md.opt_str_array(&key("merges"))?,
        bos: md.opt_u32(&key("bos_token_id"))?,
        eos: md.opt_u32(&key("eos_token_id"))?,
        eot: md.opt_u32(&key("eot_token_id"))?,
        eom: md.opt_u32(&key("eom_token_id"))?,
        unk: md.opt_u32(&key("unknown_token_id"))?,
        pad: md.opt_u32(&key("padding_token_id"))?,
        add_bos: md.opt_bool(&key("add_bos_token"))?,
        add_eos: md.opt_bool(&key("add_eos_token"))?,
        add_space_prefix: md.opt_bool(&key("add_space_prefix"))?,
        name: md.opt_str("general.name")?,
    })
}

/// Scores are f32; llama.cpp also accepts i32.
fn scores<'a>(md: &'a Metadata, key: &str) -> Result<Option<Cow<'a, [f32]>>> {
    match md.opt_array(key)? {
        None => Ok(None),
        Some(Array::F32(v)) => Ok(Some(Cow::Borrowed(v))),
        Some(Array::I32(v)) => Ok(Some(v.iter().map(|&x| x as f32).collect())),
        Some(a) => Err(Error::format(
            key,
            format!(
                "expected array of f32, found array of {}",
                a.elem_type().name()
            ),
        )),
    }
}
