//! Scalar F32 / F16 / BF16 rows: conversion to and from f32 and dot products.
//!
//! Rows are raw little-endian bytes (4 or 2 per element), so nothing here assumes alignment.
//! Dot products multiply in f32 and accumulate in f64, as ggml's generic `ggml_vec_dot_f32`,
//! `ggml_vec_dot_f16` and `ggml_vec_dot_bf16` (`ggml_float` is `double`).

use crate::quant::blocks::{bf16_bits_to_f32, f16_from_le, f16_to_le, f32_to_bf16_bits};

#[inline(always)]
fn f32_at(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

pub fn f32_to_bytes(src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), src.len() * 4);
    for (o, &v) in dst.chunks_exact_mut(4).zip(src) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

pub fn bytes_to_f32(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len() * 4);
    for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32_at(b);
    }
}

pub fn f32_to_f16(src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), src.len() * 2);
    for (o, &v) in dst.chunks_exact_mut(2).zip(src) {
        o.copy_from_slice(&f16_to_le(v));
    }
}

pub fn f16_to_f32(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len() * 2);
    for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = f16_from_le([b[0], b[1]]);
    }
}

pub fn f32_to_bf16(src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(dst.len(), src.len() * 2);
    for (o, &v) in dst.chunks_exact_mut(2).zip(src) {
        o.copy_from_slice(&f32_to_bf16_bits(v).to_le_bytes());
    }
}

pub fn bf16_to_f32(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len() * 2);
    for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

pub fn vec_dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert!(w.len() >= n * 4 && a.len() >= n * 4);
    let mut sum = 0.0f64;
    for (x, y) in w.chunks_exact(4).zip(a.chunks_exact(4)).take(n) {
        sum += (f32_at(x) * f32_at(y)) as f64;
    }
    sum as f32
}

pub fn vec_dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert!(w.len() >= n * 2 && a.len() >= n * 2);
    let mut sum = 0.0f64;
    for (x, y) in w.chunks_exact(2).zip(a.chunks_exact(2)).take(n) {
        sum += (f16_from_le([x[0], x[1]]) * f16_from_le([y[0], y[1]])) as f64;
    }
    sum as f32
}

pub fn vec_dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    debug_assert!(w.len() >= n * 2 && a.len() >= n * 2);
    let mut sum = 0.0f64;
    for (x, y) in w.chunks_exact(2).zip(a.chunks_exact(2)).take(n) {
        let xv = bf16_bits_to_f32(u16::from_le_bytes([x[0], x[1]]));
        let yv = bf16_bits_to_f32(u16::from_le_bytes([y[0], y[1]]));
        sum += (xv * yv) as f64;
    }
    sum as f32
}
