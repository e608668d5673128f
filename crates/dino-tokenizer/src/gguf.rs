//! `tokenizer.ggml.*` metadata → [`VocabSpec`].

use dino_core::{Error, Result};
use dino_formats::gguf::{Array, Metadata};

use crate::VocabSpec;

pub(crate) fn spec_from_metadata(md: &Metadata) -> Result<VocabSpec> {
    let key = |k: &str| format!("tokenizer.ggml.{k}");
    Ok(VocabSpec {
        model: md.get_str(&key("model"))?.to_string(),
        pre: md.opt_str(&key("pre"))?.map(str::to_string),
        tokens: md.get_str_array(&key("tokens"))?.to_vec(),
        scores: scores(md, &key("scores"))?,
        token_types: md.opt_i32_array(&key("token_type"))?.map(<[i32]>::to_vec),
        merges: md.opt_str_array(&key("merges"))?.map(<[String]>::to_vec),
        bos: md.opt_u32(&key("bos_token_id"))?,
        eos: md.opt_u32(&key("eos_token_id"))?,
        eot: md.opt_u32(&key("eot_token_id"))?,
        eom: md.opt_u32(&key("eom_token_id"))?,
        unk: md.opt_u32(&key("unknown_token_id"))?,
        pad: md.opt_u32(&key("padding_token_id"))?,
        add_bos: md.opt_bool(&key("add_bos_token"))?,
        add_eos: md.opt_bool(&key("add_eos_token"))?,
        add_space_prefix: md.opt_bool(&key("add_space_prefix"))?,
        name: md.opt_str("general.name")?.map(str::to_string),
    })
}

/// Scores are f32; llama.cpp also accepts i32.
fn scores(md: &Metadata, key: &str) -> Result<Option<Vec<f32>>> {
    match md.opt_array(key)? {
        None => Ok(None),
        Some(Array::F32(v)) => Ok(Some(v.clone())),
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
