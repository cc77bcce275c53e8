//! NumPy's `.npy` and `.npz` formats: the binary form of inference requests
//! and answers, and of reference data at push. One reader for both, so a
//! file `drover model push --reference` accepts is exactly a body the agent
//! accepts.
//!
//! `.npy`: little-endian (or byte-order-free) `f4 f8 i1 i2 i4 i8 u1 u2 u4
//! b1` and `<U` strings, C order, header versions 1–3. `.npz`: a zip
//! archive of `.npy` members (what `np.savez` and `np.savez_compressed`
//! write: stored or deflated), each member one array named by its file
//! name without `.npy`. Everything read is untrusted: every length is
//! checked against the bytes present and a caller's limit on decoded bytes
//! (so a deflate bomb stops at the limit), and nothing panics.

use std::io::Read as _;

use tract_onnx::prelude::{DatumType, Tensor};

/// One array read from `.npy` bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Dimensions (C order).
    pub shape: Vec<usize>,
    /// The values, flattened.
    pub data: NpyData,
}

/// The values of an [`NpyArray`]. Integer types narrower than 64 bits are
/// widened to `i64`, as Drover converts them to the model's element type
/// anyway.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// `f4`.
    F32(Vec<f32>),
    /// `f8`.
    F64(Vec<f64>),
    /// Any integer type.
    I64(Vec<i64>),
    /// `b1`.
    Bool(Vec<bool>),
    /// `<U` (UTF-32) strings.
    String(Vec<String>),
}

impl NpyData {
    /// How many values.
    pub fn len(&self) -> usize {
        match self {
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::Bool(v) => v.len(),
            NpyData::String(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f64 (strings: none).
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        Some(match self {
            NpyData::F32(v) => v.iter().map(|x| f64::from(*x)).collect(),
            NpyData::F64(v) => v.clone(),
            NpyData::I64(v) => v.iter().map(|x| *x as f64).collect(),
            NpyData::Bool(v) => v.iter().map(|x| f64::from(u8::from(*x))).collect(),
            NpyData::String(_) => return None,
        })
    }
}

impl NpyArray {
    /// As a tract tensor of the array's own element type.
    pub fn to_tensor(&self) -> Result<Tensor, NpyError> {
        let err = |e: tract_onnx::prelude::TractError| NpyError::Invalid(e.to_string());
        Ok(match &self.data {
            NpyData::F32(v) => Tensor::from_shape(&self.shape, v).map_err(err)?,
            NpyData::F64(v) => Tensor::from_shape(&self.shape, v).map_err(err)?,
            NpyData::I64(v) => Tensor::from_shape(&self.shape, v).map_err(err)?,
            NpyData::Bool(v) => Tensor::from_shape(&self.shape, v).map_err(err)?,
            NpyData::String(v) => tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(
                self.shape.clone(),
                v.clone(),
            )
            .map_err(|e| NpyError::Invalid(e.to_string()))?
            .into(),
        })
    }
}

/// Why bytes are not a readable `.npy` / `.npz`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NpyError {
    /// Not an `.npy` (magic string or header wrong).
    #[error("not an .npy array: {0}")]
    NotNpy(String),
    /// Not an `.npz` (no zip directory, or a member that is not `.npy`).
    #[error("not an .npz archive: {0}")]
    NotNpz(String),
    /// An element type Drover does not read (big-endian, complex, objects).
    #[error("unsupported .npy element type {0:?}")]
    UnsupportedType(String),
    /// Fortran-ordered arrays are not read (save with `np.ascontiguousarray`).
    #[error("Fortran-ordered arrays are not supported")]
    FortranOrder,
    /// The array or archive says more than the bytes hold, or values are
    /// malformed.
    #[error("malformed: {0}")]
    Invalid(String),
    /// Decoding would exceed the caller's limit on decoded bytes.
    #[error("decoded data exceeds the {0}-byte limit")]
    TooLarge(usize),
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// Whether `bytes` start like an `.npy` array.
pub fn is_npy(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Whether `bytes` start like a zip archive (an `.npz`).
pub fn is_npz(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

fn header_field<'a>(header: &'a str, key: &str) -> Result<&'a str, NpyError> {
    let quoted = format!("'{key}'");
    let at = header
        .find(&quoted)
        .ok_or_else(|| NpyError::NotNpy(format!("header has no {quoted}")))?;
    let rest = header[at + quoted.len()..].trim_start();
    let rest = rest
        .strip_prefix(':')
        .ok_or_else(|| NpyError::NotNpy(format!("header: no ':' after {quoted}")))?;
    Ok(rest.trim_start())
}

/// Reads one `.npy` array.
pub fn read_npy(bytes: &[u8]) -> Result<NpyArray, NpyError> {
    if !is_npy(bytes) {
        return Err(NpyError::NotNpy("no \\x93NUMPY magic".into()));
    }
    let major = *bytes
        .get(6)
        .ok_or_else(|| NpyError::NotNpy("truncated".into()))?;
    let (header_len, start) = match major {
        1 => {
            let b = bytes
                .get(8..10)
                .ok_or_else(|| NpyError::NotNpy("truncated".into()))?;
            (usize::from(u16::from_le_bytes([b[0], b[1]])), 10usize)
        }
        2 | 3 => {
            let b = bytes
                .get(8..12)
                .ok_or_else(|| NpyError::NotNpy("truncated".into()))?;
            let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (usize::try_from(n).unwrap_or(usize::MAX), 12)
        }
        v => return Err(NpyError::NotNpy(format!("format version {v}"))),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .ok_or_else(|| NpyError::NotNpy("header longer than the data".into()))?;
    let header =
        std::str::from_utf8(header).map_err(|_| NpyError::NotNpy("header is not UTF-8".into()))?;
    let data = &bytes[start + header_len..];

    let descr = header_field(header, "descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| NpyError::NotNpy("descr is not a string".into()))?;
    let fortran = header_field(header, "fortran_order")?;
    if fortran.starts_with("True") {
        return Err(NpyError::FortranOrder);
    }
    let shape_txt = header_field(header, "shape")?;
    let shape_txt = shape_txt
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| NpyError::NotNpy("shape is not a tuple".into()))?;
    let shape = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| NpyError::NotNpy(format!("shape entry {s:?}")))
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .ok_or_else(|| NpyError::Invalid("shape overflows".into()))?;

    let (order, kind) = descr.split_at(descr.len().min(1));
    if order == ">" && !kind.ends_with('1') {
        return Err(NpyError::UnsupportedType(descr.into()));
    }
    if !matches!(order, "<" | "|" | "=") {
        return Err(NpyError::UnsupportedType(descr.into()));
    }
    let width: usize = if let Some(n) = kind.strip_prefix('U') {
        let chars: usize = n
            .parse()
            .map_err(|_| NpyError::UnsupportedType(descr.into()))?;
        chars
            .checked_mul(4)
            .ok_or_else(|| NpyError::UnsupportedType(descr.into()))?
    } else {
        kind.get(1..)
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| NpyError::UnsupportedType(descr.into()))?
    };
    let need = count
        .checked_mul(width)
        .ok_or_else(|| NpyError::Invalid("size overflows".into()))?;
    let data = data.get(..need).ok_or_else(|| {
        NpyError::Invalid(format!(
            "shape {shape:?} of {descr} needs {need} bytes, {} present",
            data.len()
        ))
    })?;
    fn le<const N: usize>(d: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        d.chunks_exact(N).map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        })
    }
    let values = match kind {
        "f4" => NpyData::F32(le::<4>(data).map(f32::from_le_bytes).collect()),
        "f8" => NpyData::F64(le::<8>(data).map(f64::from_le_bytes).collect()),
        "i8" => NpyData::I64(le::<8>(data).map(i64::from_le_bytes).collect()),
        "i4" => NpyData::I64(
            le::<4>(data)
                .map(|b| i64::from(i32::from_le_bytes(b)))
                .collect(),
        ),
        "i2" => NpyData::I64(
            le::<2>(data)
                .map(|b| i64::from(i16::from_le_bytes(b)))
                .collect(),
        ),
        "i1" => NpyData::I64(data.iter().map(|b| i64::from(*b as i8)).collect()),
        "u4" => NpyData::I64(
            le::<4>(data)
                .map(|b| i64::from(u32::from_le_bytes(b)))
                .collect(),
        ),
        "u2" => NpyData::I64(
            le::<2>(data)
                .map(|b| i64::from(u16::from_le_bytes(b)))
                .collect(),
        ),
        "u1" => NpyData::I64(data.iter().map(|b| i64::from(*b)).collect()),
        "b1" => NpyData::Bool(data.iter().map(|b| *b != 0).collect()),
        k if k.starts_with('U') => {
            let per = width.max(1);
            let mut out = Vec::with_capacity(count);
            for item in data.chunks(per).take(count) {
                let mut s = String::new();
                for c in le::<4>(item).map(u32::from_le_bytes) {
                    if c == 0 {
                        break;
                    }
                    s.push(char::from_u32(c).ok_or_else(|| {
                        NpyError::Invalid(format!("{c:#x} is not a Unicode scalar"))
                    })?);
                }
                out.push(s);
            }
            if width == 0 {
                out = vec![String::new(); count];
            }
            NpyData::String(out)
        }
        _ => return Err(NpyError::UnsupportedType(descr.into())),
    };
    Ok(NpyArray {
        shape,
        data: values,
    })
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, NpyError> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| NpyError::NotNpz("truncated".into()))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, NpyError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| NpyError::NotNpz("truncated".into()))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, NpyError> {
    b.get(at..at + 8)
        .map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        })
        .ok_or_else(|| NpyError::NotNpz("truncated".into()))
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Reads every array of an `.npz`, in archive order, by name (the member
/// name without `.npy`). At most `limit` bytes are decoded in total.
pub fn read_npz(bytes: &[u8], limit: usize) -> Result<Vec<(String, NpyArray)>, NpyError> {
    // End of central directory: 22 bytes plus a comment of up to 64 KiB.
    let lowest = bytes.len().saturating_sub(22 + 65_535);
    let eocd = (lowest..=bytes.len().saturating_sub(22))
        .rev()
        .find(|&i| bytes.get(i..i + 4) == Some(b"PK\x05\x06"))
        .ok_or_else(|| NpyError::NotNpz("no end of central directory".into()))?;
    let mut entries = u64::from(u16_at(bytes, eocd + 10)?);
    let mut dir_offset = u64::from(u32_at(bytes, eocd + 16)?);
    if entries == 0xFFFF || dir_offset == 0xFFFF_FFFF {
        // ZIP64: the locator sits just before the end record.
        let loc = eocd
            .checked_sub(20)
            .filter(|l| bytes.get(*l..l + 4) == Some(b"PK\x06\x07"))
            .ok_or_else(|| NpyError::NotNpz("ZIP64 locator missing".into()))?;
        let rec = to_usize(u64_at(bytes, loc + 8)?);
        if bytes.get(rec..rec + 4) != Some(b"PK\x06\x06") {
            return Err(NpyError::NotNpz("ZIP64 end record missing".into()));
        }
        entries = u64_at(bytes, rec + 32)?;
        dir_offset = u64_at(bytes, rec + 48)?;
    }
    let mut at = to_usize(dir_offset);
    let mut out = Vec::new();
    let mut budget = limit;
    for _ in 0..entries {
        if bytes.get(at..at + 4) != Some(b"PK\x01\x02") {
            return Err(NpyError::NotNpz("bad central directory entry".into()));
        }
        let method = u16_at(bytes, at + 10)?;
        let mut csize = u64::from(u32_at(bytes, at + 20)?);
        let mut usize_ = u64::from(u32_at(bytes, at + 24)?);
        let name_len = usize::from(u16_at(bytes, at + 28)?);
        let extra_len = usize::from(u16_at(bytes, at + 30)?);
        let comment_len = usize::from(u16_at(bytes, at + 32)?);
        let mut local = u64::from(u32_at(bytes, at + 42)?);
        let name = bytes
            .get(at + 46..at + 46 + name_len)
            .ok_or_else(|| NpyError::NotNpz("truncated".into()))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| NpyError::NotNpz("member name is not UTF-8".into()))?
            .to_string();
        let extra = bytes
            .get(at + 46 + name_len..at + 46 + name_len + extra_len)
            .ok_or_else(|| NpyError::NotNpz("truncated".into()))?;
        // ZIP64 extra field: the 64-bit values of the fields saturated above, in order.
        let mut e = 0;
        while e + 4 <= extra.len() {
            let id = u16_at(extra, e)?;
            let len = usize::from(u16_at(extra, e + 2)?);
            if id == 1 {
                let mut p = e + 4;
                for field in [&mut usize_, &mut csize, &mut local] {
                    if *field == 0xFFFF_FFFF {
                        *field = u64_at(extra, p)?;
                        p += 8;
                    }
                }
            }
            e += 4 + len;
        }
        at += 46 + name_len + extra_len + comment_len;

        let local = to_usize(local);
        if bytes.get(local..local + 4) != Some(b"PK\x03\x04") {
            return Err(NpyError::NotNpz(format!("{name}: bad local header")));
        }
        let lname = usize::from(u16_at(bytes, local + 26)?);
        let lextra = usize::from(u16_at(bytes, local + 28)?);
        let start = local + 30 + lname + lextra;
        let raw = bytes
            .get(start..start.saturating_add(to_usize(csize)))
            .ok_or_else(|| NpyError::NotNpz(format!("{name}: data truncated")))?;
        if to_usize(usize_) > budget {
            return Err(NpyError::TooLarge(limit));
        }
        let data = match method {
            0 => raw.to_vec(),
            8 => {
                let mut d = Vec::new();
                flate2::read::DeflateDecoder::new(raw)
                    .take(budget as u64 + 1)
                    .read_to_end(&mut d)
                    .map_err(|e| NpyError::NotNpz(format!("{name}: {e}")))?;
                d
            }
            m => {
                return Err(NpyError::NotNpz(format!(
                    "{name}: compression method {m} (only stored and deflate)"
                )));
            }
        };
        budget = budget
            .checked_sub(data.len())
            .ok_or(NpyError::TooLarge(limit))?;
        let Some(array_name) = name.strip_suffix(".npy") else {
            return Err(NpyError::NotNpz(format!("member {name:?} is not an .npy")));
        };
        let array = read_npy(&data).map_err(|e| match e {
            NpyError::NotNpy(m) => NpyError::NotNpz(format!("{name}: {m}")),
            other => other,
        })?;
        out.push((array_name.to_string(), array));
    }
    Ok(out)
}

fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("{one},"),
        _ => shape
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}");
    // Data starts on a 64-byte boundary, the header ends with a newline.
    let total = 10 + h.len() + 1;
    h.push_str(&" ".repeat((64 - total % 64) % 64));
    h.push('\n');
    let mut out = Vec::with_capacity(10 + h.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&u16::try_from(h.len()).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out
}

/// Writes a tensor as `.npy` (f32, f64, i32, i64, bool, string; other types
/// are cast to f32).
pub fn write_npy(t: &Tensor) -> Result<Vec<u8>, NpyError> {
    let err = |e: tract_onnx::prelude::TractError| NpyError::Invalid(e.to_string());
    let shape = t.shape();
    macro_rules! plain {
        ($ty:ty, $descr:expr) => {{
            let view = t.try_as_plain_ram().map_err(err)?;
            let v = view.as_slice::<$ty>().map_err(err)?;
            let mut out = npy_header($descr, shape);
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
            out
        }};
    }
    Ok(match t.datum_type() {
        DatumType::F32 => plain!(f32, "<f4"),
        DatumType::F64 => plain!(f64, "<f8"),
        DatumType::I64 => plain!(i64, "<i8"),
        DatumType::I32 => plain!(i32, "<i4"),
        DatumType::Bool => {
            let view = t.try_as_plain_ram().map_err(err)?;
            let v = view.as_slice::<bool>().map_err(err)?;
            let mut out = npy_header("|b1", shape);
            out.extend(v.iter().map(|b| u8::from(*b)));
            out
        }
        DatumType::String => {
            let view = t.try_as_plain_ram().map_err(err)?;
            let v = view.as_slice::<String>().map_err(err)?;
            let width = v
                .iter()
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
                .max(1);
            let mut out = npy_header(&format!("<U{width}"), shape);
            for s in v {
                let mut n = 0;
                for c in s.chars() {
                    out.extend_from_slice(&u32::from(c).to_le_bytes());
                    n += 1;
                }
                for _ in n..width {
                    out.extend_from_slice(&0u32.to_le_bytes());
                }
            }
            out
        }
        _ => {
            let c = t.cast_to::<f32>().map_err(err)?;
            return write_npy(&c);
        }
    })
}

/// Writes named tensors as an `.npz` (stored members `NAME.npy`, what
/// `np.savez` writes).
pub fn write_npz<'a>(
    arrays: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Vec<u8>, NpyError> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    let mut count: u16 = 0;
    for (name, t) in arrays {
        let data = write_npy(t)?;
        let file = format!("{name}.npy");
        let crc = crc32fast::hash(&data);
        let size = u32::try_from(data.len())
            .map_err(|_| NpyError::Invalid(format!("{name}: larger than 4 GiB")))?;
        let offset = u32::try_from(out.len())
            .map_err(|_| NpyError::Invalid("archive larger than 4 GiB".into()))?;
        let name_len = u16::try_from(file.len())
            .map_err(|_| NpyError::Invalid(format!("{name}: name too long")))?;
        // Local header: version 2.0, no flags, stored, no time.
        out.extend_from_slice(b"PK\x03\x04");
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&[0; 2 + 2 + 4]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(file.as_bytes());
        out.extend_from_slice(&data);

        central.extend_from_slice(b"PK\x01\x02");
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&[0; 2 + 2 + 4]);
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&name_len.to_le_bytes());
        central.extend_from_slice(&[0; 2 + 2 + 2 + 2 + 4]);
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(file.as_bytes());
        count = count
            .checked_add(1)
            .ok_or_else(|| NpyError::Invalid("too many arrays".into()))?;
    }
    let dir_offset = u32::try_from(out.len())
        .map_err(|_| NpyError::Invalid("archive larger than 4 GiB".into()))?;
    let dir_len = u32::try_from(central.len())
        .map_err(|_| NpyError::Invalid("directory larger than 4 GiB".into()))?;
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&dir_len.to_le_bytes());
    out.extend_from_slice(&dir_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fixtures/npz")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn reads_what_numpy_writes() {
        // fixtures/npz/make_npz.py: np.savez and np.savez_compressed of the same arrays.
        for file in ["savez.npz", "savez_compressed.npz"] {
            let arrays = read_npz(&fixture(file), 1 << 20).unwrap();
            let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["image", "ids", "mask", "words", "u8"], "{file}");
            let image = &arrays[0].1;
            assert_eq!(image.shape, [2, 3, 4, 5]);
            let NpyData::F32(v) = &image.data else {
                panic!("{:?}", image.data)
            };
            assert_eq!(v.len(), 120);
            assert_eq!(v[7], 7.0 * 0.5 - 1.0);
            assert_eq!(arrays[1].1.data, NpyData::I64(vec![3, -1, 7]));
            assert_eq!(arrays[2].1.data, NpyData::Bool(vec![true, false]));
            assert_eq!(arrays[2].1.shape, [1, 2]);
            assert_eq!(
                arrays[3].1.data,
                NpyData::String(vec!["ab".into(), "ünï".into(), String::new()])
            );
            assert_eq!(arrays[4].1.data, NpyData::I64(vec![0, 128, 255]));
        }
        let one = read_npy(&fixture("scalar_f8.npy")).unwrap();
        assert_eq!(one.shape, Vec::<usize>::new());
        assert_eq!(one.data, NpyData::F64(vec![2.5]));
    }

    #[test]
    fn round_trips_through_the_writer() {
        let a = Tensor::from_shape(&[2, 2], &[1.0f32, -2.0, 3.5, 0.0]).unwrap();
        let b = Tensor::from_shape(&[3], &[1i64, 2, 3]).unwrap();
        let s: Tensor = tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(
            vec![2],
            vec!["x".to_string(), "héllo".to_string()],
        )
        .unwrap()
        .into();
        let z = write_npz([("a", &a), ("b", &b), ("s", &s)]).unwrap();
        let back = read_npz(&z, 1 << 20).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[0].1.to_tensor().unwrap(), a);
        assert_eq!(back[1].1.to_tensor().unwrap(), b);
        assert_eq!(back[2].1.to_tensor().unwrap(), s);
        assert_eq!(read_npy(&write_npy(&a).unwrap()).unwrap().shape, [2, 2]);
    }

    #[test]
    fn malformed_input_is_a_typed_error_never_a_panic() {
        let good = fixture("savez_compressed.npz");
        assert!(matches!(read_npz(&good, 100), Err(NpyError::TooLarge(100))));
        // Every truncation and a sweep of single-byte corruptions.
        for cut in 0..good.len() {
            let _ = read_npz(&good[..cut], 1 << 20);
        }
        for i in (0..good.len()).step_by(3) {
            let mut bad = good.clone();
            bad[i] ^= 0xA5;
            let _ = read_npz(&bad, 1 << 20);
        }
        let npy = write_npy(&Tensor::from_shape(&[2, 3], &[0f32; 6]).unwrap()).unwrap();
        for cut in 0..npy.len() {
            assert!(read_npy(&npy[..cut]).is_err(), "cut {cut}");
        }
        let header = "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }";
        let mut big_endian = b"\x93NUMPY\x01\x00".to_vec();
        big_endian.extend_from_slice(&(header.len() as u16).to_le_bytes());
        big_endian.extend_from_slice(header.as_bytes());
        big_endian.extend_from_slice(&[0; 4]);
        assert!(matches!(
            read_npy(&big_endian),
            Err(NpyError::UnsupportedType(_))
        ));
        assert!(matches!(
            read_npz(b"PK\x03\x04junk", 10),
            Err(NpyError::NotNpz(_))
        ));
        assert!(matches!(read_npy(b"nope"), Err(NpyError::NotNpy(_))));
    }
}
