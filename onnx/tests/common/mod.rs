//! Shared by the integration tests: `.npy` reading and output comparison.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use drover_onnx::Tensor;
use tract_onnx::prelude::*;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Reads a `.npy` file (little-endian f4/f8/i8/i4/b1/u1 and `<U` strings).
pub fn read_npy(path: &Path) -> Tensor {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}: not npy", path.display());
    let (header_len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    let data = &bytes[start + header_len..];
    let field = |key: &str| {
        let at = header
            .find(key)
            .unwrap_or_else(|| panic!("{header}: no {key}"))
            + key.len();
        header[at..]
            .trim_start_matches([' ', ':', '\''])
            .to_string()
    };
    let descr = field("'descr'");
    let descr = &descr[..descr.find('\'').unwrap()];
    assert!(
        field("'fortran_order'").starts_with("False"),
        "{}: fortran order",
        path.display()
    );
    let shape_txt = field("'shape'");
    let shape: Vec<usize> = shape_txt[1..shape_txt.find(')').unwrap()]
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let n: usize = shape.iter().product();
    fn le<const N: usize>(d: &[u8]) -> Vec<[u8; N]> {
        d.chunks_exact(N).map(|c| c.try_into().unwrap()).collect()
    }
    match descr {
        "<f4" => Tensor::from_shape(
            &shape,
            &le::<4>(data)
                .into_iter()
                .map(f32::from_le_bytes)
                .take(n)
                .collect::<Vec<_>>(),
        ),
        "<f8" => Tensor::from_shape(
            &shape,
            &le::<8>(data)
                .into_iter()
                .map(f64::from_le_bytes)
                .take(n)
                .collect::<Vec<_>>(),
        ),
        "<i8" => Tensor::from_shape(
            &shape,
            &le::<8>(data)
                .into_iter()
                .map(i64::from_le_bytes)
                .take(n)
                .collect::<Vec<_>>(),
        ),
        "<i4" => Tensor::from_shape(
            &shape,
            &le::<4>(data)
                .into_iter()
                .map(i32::from_le_bytes)
                .take(n)
                .collect::<Vec<_>>(),
        ),
        "|b1" => Tensor::from_shape(
            &shape,
            &data[..n].iter().map(|b| *b != 0).collect::<Vec<_>>(),
        ),
        "|u1" => Tensor::from_shape(&shape, &data[..n]),
        d if d.starts_with("<U") => {
            let width: usize = d[2..].parse().unwrap();
            let strings: Vec<String> = data
                .chunks_exact(width * 4)
                .take(n)
                .map(|c| {
                    le::<4>(c)
                        .into_iter()
                        .map(u32::from_le_bytes)
                        .take_while(|&u| u != 0)
                        .filter_map(char::from_u32)
                        .collect()
                })
                .collect();
            let t = tensor1(&strings);
            t.into_shape(&shape)
        }
        other => panic!("{}: unsupported npy dtype {other}", path.display()),
    }
    .unwrap()
}

/// Compares one output: exact for labels (ints, strings, bools), floats
/// within 1e-4 relative or 1e-5 absolute. Returns a description of the
/// first difference.
pub fn compare(what: &str, got: &Tensor, want: &Tensor) -> Result<(), String> {
    let got_shape: Vec<usize> = got.shape().to_vec();
    let want_shape: Vec<usize> = want.shape().to_vec();
    let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    if got_shape != want_shape && squeeze(&got_shape) != squeeze(&want_shape) {
        return Err(format!(
            "{what}: shape {got_shape:?}, expected {want_shape:?}"
        ));
    }
    let want_dt = want.datum_type();
    if want_dt.is_float() {
        let g = got.cast_to::<f64>().map_err(|e| format!("{what}: {e}"))?;
        let w = want.cast_to::<f64>().unwrap();
        let g = g.try_as_plain_ram().unwrap();
        let w = w.try_as_plain_ram().unwrap();
        for (i, (a, b)) in g
            .as_slice::<f64>()
            .unwrap()
            .iter()
            .zip(w.as_slice::<f64>().unwrap())
            .enumerate()
        {
            let ok = (a.is_nan() && b.is_nan())
                || (a - b).abs() <= 1e-5
                || (a - b).abs() <= 1e-4 * b.abs();
            if !ok {
                return Err(format!("{what}[{i}]: {a}, expected {b}"));
            }
        }
        return Ok(());
    }
    if want_dt == DatumType::String {
        let g = got.try_as_plain_ram().map_err(|e| format!("{what}: {e}"))?;
        let g = g.as_slice::<String>().map_err(|e| format!("{what}: {e}"))?;
        let w = want.try_as_plain_ram().unwrap();
        let w = w.as_slice::<String>().unwrap();
        if g != w {
            return Err(format!("{what}: {g:?}, expected {w:?}"));
        }
        return Ok(());
    }
    let g = got.cast_to::<i64>().map_err(|e| format!("{what}: {e}"))?;
    let w = want.cast_to::<i64>().unwrap();
    let g = g
        .try_as_plain_ram()
        .unwrap()
        .as_slice::<i64>()
        .unwrap()
        .to_vec();
    let w = w
        .try_as_plain_ram()
        .unwrap()
        .as_slice::<i64>()
        .unwrap()
        .to_vec();
    if g != w {
        return Err(format!("{what}: {g:?}, expected {w:?}"));
    }
    Ok(())
}
