//! The element-wise and reshaping ai.onnx.ml operators: Scaler, Normalizer,
//! Imputer, Binarizer, OneHotEncoder, LabelEncoder, ArrayFeatureExtractor,
//! ZipMap and FeatureVectorizer.

use std::collections::HashMap;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{Kernel, Parsed, attrs, f32_matrix, parsed, rows_of};

/// The input cast to f32, same shape.
fn as_f32(t: &Tensor) -> TractResult<Tensor> {
    Ok(t.cast_to::<f32>()?.into_owned())
}

/// Calls `f(index, value)` on every element of an f32 tensor.
fn each_f32(t: &mut Tensor, mut f: impl FnMut(usize, &mut f32)) -> TractResult<()> {
    let mut view = t.try_as_plain_ram_mut()?;
    view.as_slice_mut::<f32>()?
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| f(i, v));
    Ok(())
}

/// `Y = (X - offset) * scale`, per column (or one value for all).
#[derive(Debug)]
pub(crate) struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

pub(crate) fn scaler(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let a = attrs(ctx, node);
    parsed(Scaler {
        offset: a.floats("offset"),
        scale: a.floats("scale"),
    })
}

/// The value for column `c` of a per-column (or single, or absent) attribute.
fn per_column(values: &[f32], c: usize, absent: f32) -> f32 {
    match values.len() {
        0 => absent,
        1 => values[0],
        _ => values.get(c).copied().unwrap_or(absent),
    }
}

impl Kernel for Scaler {
    fn name(&self) -> &'static str {
        "Scaler"
    }
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.iter())))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut t = as_f32(&inputs[0])?;
        let cols = t.shape().last().copied().unwrap_or(1).max(1);
        each_f32(&mut t, |i, v| {
            let c = i % cols;
            *v = (*v - per_column(&self.offset, c, 0.0)) * per_column(&self.scale, c, 1.0);
        })?;
        Ok(tvec!(t.into_tvalue()))
    }
}

/// Row normalisation: MAX, L1 or L2.
#[derive(Debug)]
pub(crate) struct Normalizer {
    norm: String,
}

pub(crate) fn normalizer(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let a = attrs(ctx, node);
    let norm = a.string("norm", "MAX");
    if !matches!(norm.as_str(), "MAX" | "L1" | "L2") {
        return Err(a.bad(format!("unknown norm {norm:?}")));
    }
    parsed(Normalizer { norm })
}

impl Kernel for Normalizer {
    fn name(&self) -> &'static str {
        "Normalizer"
    }
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (n, f) = rows_of(&inputs[0].shape.to_tvec())?;
        Ok(tvec!(f32::fact([n, f])))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (n, f, x) = f32_matrix(&inputs[0])?;
        let mut out = x.into_owned();
        for row in out.chunks_mut(f.max(1)) {
            let d = match self.norm.as_str() {
                "MAX" => row.iter().map(|v| v.abs()).fold(0.0, f32::max),
                "L1" => row.iter().map(|v| v.abs()).sum(),
                _ => row.iter().map(|v| v * v).sum::<f32>().sqrt(),
            };
            let d = d.max(1e-30);
            row.iter_mut().for_each(|v| *v /= d);
        }
        Ok(tvec!(Tensor::from_shape(&[n, f], &out)?.into_tvalue()))
    }
}

/// Replaces a marker value (NaN by default) by a per-column value.
#[derive(Debug)]
pub(crate) struct Imputer {
    floats: Vec<f32>,
    replaced_float: f32,
    ints: Vec<i64>,
    replaced_int: i64,
}

pub(crate) fn imputer(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let a = attrs(ctx, node);
    let k = Imputer {
        floats: a.floats("imputed_value_floats"),
        replaced_float: a.float("replaced_value_float", 0.0),
        ints: a.ints("imputed_value_int64s"),
        replaced_int: a.int("replaced_value_int64", 0),
    };
    if k.floats.is_empty() && k.ints.is_empty() {
        return Err(a.bad("neither imputed_value_floats nor imputed_value_int64s"));
    }
    parsed(k)
}

impl Kernel for Imputer {
    fn name(&self) -> &'static str {
        "Imputer"
    }
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dt = if self.floats.is_empty() {
            DatumType::I64
        } else {
            DatumType::F32
        };
        Ok(tvec!(dt.fact(inputs[0].shape.iter())))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let cols = inputs[0].shape().last().copied().unwrap_or(1).max(1);
        if self.floats.is_empty() {
            let mut t = inputs[0].cast_to::<i64>()?.into_owned();
            let ints: Vec<f32> = self.ints.iter().map(|&i| i as f32).collect();
            let mut view = t.try_as_plain_ram_mut()?;
            for (i, v) in view.as_slice_mut::<i64>()?.iter_mut().enumerate() {
                if *v == self.replaced_int {
                    *v = per_column(&ints, i % cols, 0.0) as i64;
                }
            }
            return Ok(tvec!(t.into_tvalue()));
        }
        let mut t = as_f32(&inputs[0])?;
        let nan = self.replaced_float.is_nan();
        each_f32(&mut t, |i, v| {
            if (nan && v.is_nan()) || *v == self.replaced_float {
                *v = per_column(&self.floats, i % cols, 0.0);
            }
        })?;
        Ok(tvec!(t.into_tvalue()))
    }
}

/// `1` where `x > threshold`, else `0`, in the input's type.
#[derive(Debug)]
pub(crate) struct Binarizer {
    threshold: f32,
}

pub(crate) fn binarizer(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    parsed(Binarizer {
        threshold: attrs(ctx, node).float("threshold", 0.0),
    })
}

impl Kernel for Binarizer {
    fn name(&self) -> &'static str {
        "Binarizer"
    }
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.iter())))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let dt = inputs[0].datum_type();
        let x = inputs[0].cast_to::<f64>()?;
        let th = f64::from(self.threshold);
        let out: Vec<f64> = x
            .try_as_plain_ram()?
            .as_slice::<f64>()?
            .iter()
            .map(|&v| if v > th { 1.0 } else { 0.0 })
            .collect();
        let out = Tensor::from_shape(inputs[0].shape(), &out)?
            .cast_to_dt(dt)?
            .into_owned();
        Ok(tvec!(out.into_tvalue()))
    }
}

/// Categories looked up by int or by string.
#[derive(Debug)]
enum Keys {
    Int(HashMap<i64, usize>),
    Str(HashMap<String, usize>),
    /// Float keys by the bits of their f64 value (NaN canonicalised).
    Float(HashMap<u64, usize>),
}

/// Each key's first position.
fn first_index<K: Eq + std::hash::Hash>(keys: impl IntoIterator<Item = K>) -> HashMap<K, usize> {
    let mut map = HashMap::new();
    for (i, k) in keys.into_iter().enumerate() {
        map.entry(k).or_insert(i);
    }
    map
}

fn float_key(v: f64) -> u64 {
    if v.is_nan() {
        f64::NAN.to_bits()
    } else {
        (v + 0.0).to_bits()
    }
}

impl Keys {
    fn from_tensor(t: &Tensor) -> TractResult<Keys> {
        Ok(match t.datum_type() {
            DatumType::String => {
                let v = t.try_as_plain_ram()?.as_slice::<String>()?.to_vec();
                Keys::Str(first_index(v))
            }
            DatumType::F32 | DatumType::F64 => {
                let v = t.cast_to::<f64>()?;
                let v = v.try_as_plain_ram()?.as_slice::<f64>()?.to_vec();
                Keys::Float(first_index(v.into_iter().map(float_key)))
            }
            _ => {
                let v = t.cast_to::<i64>()?;
                let v = v.try_as_plain_ram()?.as_slice::<i64>()?.to_vec();
                Keys::Int(first_index(v))
            }
        })
    }

    fn len(&self) -> usize {
        match self {
            Keys::Int(m) => m.len(),
            Keys::Str(m) => m.len(),
            Keys::Float(m) => m.len(),
        }
    }

    /// The index of every input value (None when it is not a key).
    fn lookup(&self, x: &Tensor) -> TractResult<Vec<Option<usize>>> {
        Ok(match self {
            Keys::Str(m) => {
                let v = x.try_as_plain_ram()?;
                v.as_slice::<String>()?
                    .iter()
                    .map(|s| m.get(s).copied())
                    .collect()
            }
            Keys::Float(m) => {
                let v = x.cast_to::<f64>()?;
                let v = v.try_as_plain_ram()?;
                v.as_slice::<f64>()?
                    .iter()
                    .map(|&f| m.get(&float_key(f)).copied())
                    .collect()
            }
            Keys::Int(m) => {
                let v = x.cast_to::<i64>()?;
                let v = v.try_as_plain_ram()?;
                v.as_slice::<i64>()?
                    .iter()
                    .map(|i| m.get(i).copied())
                    .collect()
            }
        })
    }
}

/// One-hot over a category list: `(..., categories)` floats.
#[derive(Debug)]
pub(crate) struct OneHotEncoder {
    keys: Keys,
    zeros: bool,
}

pub(crate) fn one_hot_encoder(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let a = attrs(ctx, node);
    let ints = a.ints("cats_int64s");
    let strings = a.strings("cats_strings");
    let keys = if !ints.is_empty() {
        Keys::from_tensor(&tensor1(&ints))?
    } else if !strings.is_empty() {
        Keys::from_tensor(&tensor1(&strings))?
    } else {
        return Err(a.bad("neither cats_int64s nor cats_strings"));
    };
    parsed(OneHotEncoder {
        keys,
        zeros: a.int("zeros", 1) != 0,
    })
}

impl Kernel for OneHotEncoder {
    fn name(&self) -> &'static str {
        "OneHotEncoder"
    }
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.to_tvec();
        shape.push(self.keys.len().into());
        Ok(tvec!(f32::fact(shape)))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let n = self.keys.len();
        let found = self.keys.lookup(&inputs[0])?;
        let mut out = vec![0f32; found.len() * n];
        for (i, f) in found.iter().enumerate() {
            match f {
                Some(j) => out[i * n + j] = 1.0,
                None if !self.zeros => bail!("OneHotEncoder: a value is not a category"),
                None => {}
            }
        }
        let mut shape: TVec<usize> = inputs[0].shape().into();
        shape.push(n);
        Ok(tvec!(Tensor::from_shape(&shape, &out)?.into_tvalue()))
    }
}

/// Maps keys to values (ints, floats or strings), with a default.
#[derive(Debug)]
pub(crate) struct LabelEncoder {
    keys: Keys,
    values: Tensor,
    default: Tensor,
}

pub(crate) fn label_encoder(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let a = attrs(ctx, node);
    let keys = if let Some(t) = a.tensor("keys_tensor")? {
        t
    } else if a.has("keys_int64s") {
        tensor1(&a.ints("keys_int64s"))
    } else if a.has("keys_floats") {
        tensor1(&a.floats("keys_floats"))
    } else if a.has("keys_strings") {
        tensor1(&a.strings("keys_strings"))
    } else if a.has("classes_strings") {
        // ai.onnx.ml v1: strings <-> their index.
        tensor1(&a.strings("classes_strings"))
    } else {
        return Err(a.bad("no keys"));
    };
    let (values, default) = if let Some(t) = a.tensor("values_tensor")? {
        let default = match a.tensor("default_tensor")? {
            Some(d) => d,
            None if t.datum_type() == DatumType::String => tensor0("_Unused".to_string()),
            None => Tensor::zero_scalar_dt(t.datum_type())?,
        };
        (t, default)
    } else if a.has("values_int64s") {
        (
            tensor1(&a.ints("values_int64s")),
            tensor0(a.int("default_int64", -1)),
        )
    } else if a.has("values_floats") {
        (
            tensor1(&a.floats("values_floats")),
            tensor0(a.float("default_float", -0.0)),
        )
    } else if a.has("values_strings") {
        (
            tensor1(&a.strings("values_strings")),
            tensor0(a.string("default_string", "_Unused")),
        )
    } else if a.has("classes_strings") {
        let n = a.strings("classes_strings").len() as i64;
        (
            tensor1(&(0..n).collect::<Vec<_>>()),
            tensor0(a.int("default_int64", -1)),
        )
    } else {
        return Err(a.bad("no values"));
    };
    if keys.len() != values.len() {
        return Err(a.bad(format!("{} keys for {} values", keys.len(), values.len())));
    }
    parsed(LabelEncoder {
        keys: Keys::from_tensor(&keys)?,
        values,
        default,
    })
}

impl Kernel for LabelEncoder {
    fn name(&self) -> &'static str {
        "LabelEncoder"
    }
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.values.datum_type().fact(inputs[0].shape.iter())))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let found = self.keys.lookup(&inputs[0])?;
        let picks: Vec<Tensor> = found
            .iter()
            .map(|f| match f {
                Some(i) => self.values.nth(*i),
                None => Ok(self.default.clone()),
            })
            .collect::<TractResult<_>>()?;
        let out = if picks.is_empty() {
            Tensor::zero_dt(self.values.datum_type(), inputs[0].shape())?
        } else {
            let rows: Vec<Tensor> = picks
                .into_iter()
                .map(|t| t.into_shape(&[1]))
                .collect::<TractResult<_>>()?;
            Tensor::stack_tensors(0, &rows)?.into_shape(inputs[0].shape())?
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

/// Picks columns of the last axis by index (second input).
#[derive(Debug)]
pub(crate) struct ArrayFeatureExtractor;

pub(crate) fn array_feature_extractor(_: &ParsingContext, _: &NodeProto) -> Parsed {
    parsed(ArrayFeatureExtractor)
}

impl Kernel for ArrayFeatureExtractor {
    fn name(&self) -> &'static str {
        "ArrayFeatureExtractor"
    }
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0].shape.to_tvec();
        let picked: TDim = inputs[1].shape.iter().product();
        let shape: TVec<TDim> = match x.len() {
            0 => bail!("ArrayFeatureExtractor on a scalar"),
            1 => tvec![1.into(), picked],
            n => x[..n - 1]
                .iter()
                .cloned()
                .chain(std::iter::once(picked))
                .collect(),
        };
        Ok(tvec!(inputs[0].datum_type.fact(shape)))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let idx = inputs[1].cast_to::<i64>()?;
        let idx = idx.try_as_plain_ram()?.as_slice::<i64>()?.to_vec();
        let last = x.shape().last().copied().unwrap_or(0);
        let idx: Vec<usize> = idx
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .filter(|&u| u < last)
                    .ok_or_else(|| format_err!("ArrayFeatureExtractor: index {i} out of 0..{last}"))
            })
            .collect::<TractResult<_>>()?;
        let rows = x.len() / last.max(1);
        let flat = x.clone().into_tensor().into_shape(&[rows, last])?;
        let cols: Vec<Tensor> = idx
            .iter()
            .map(|&i| flat.slice(1, i, i + 1))
            .collect::<TractResult<_>>()?;
        let mut out = if cols.is_empty() {
            Tensor::zero_dt(x.datum_type(), &[rows, 0])?
        } else {
            Tensor::stack_tensors(1, &cols)?
        };
        let mut shape: TVec<usize> = x.shape().into();
        if shape.len() == 1 {
            shape.insert(0, 1);
        }
        if let Some(l) = shape.last_mut() {
            *l = idx.len();
        }
        out.set_shape(&shape)?;
        Ok(tvec!(out.into_tvalue()))
    }
}

/// ZipMap: the probabilities tensor passes through; the class labels live
/// in the model's schema (a seq(map) is served as probabilities + labels).
#[derive(Debug)]
pub(crate) struct ZipMap;

pub(crate) fn zipmap(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    attrs(ctx, node).class_labels()?;
    parsed(ZipMap)
}

impl Kernel for ZipMap {
    fn name(&self) -> &'static str {
        "ZipMap"
    }
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.iter())))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(tvec!(as_f32(&inputs[0])?.into_tvalue()))
    }
}

/// Concatenates its inputs' columns (each cut or zero-padded to its
/// declared width) into one f32 matrix.
#[derive(Debug)]
pub(crate) struct FeatureVectorizer {
    dims: Vec<usize>,
}

pub(crate) fn feature_vectorizer(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let a = attrs(ctx, node);
    let dims = a.indices("inputdimensions")?;
    if dims.len() != node.input.len() {
        return Err(a.bad(format!(
            "{} inputdimensions for {} inputs",
            dims.len(),
            node.input.len()
        )));
    }
    parsed(FeatureVectorizer { dims })
}

impl Kernel for FeatureVectorizer {
    fn name(&self) -> &'static str {
        "FeatureVectorizer"
    }
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let first = inputs.first().context("FeatureVectorizer without inputs")?;
        let n = match first.shape.to_tvec().as_slice() {
            [] => bail!("FeatureVectorizer on a scalar"),
            [n] | [n, _] => n.clone(),
            other => bail!("FeatureVectorizer: expected 1-D or 2-D inputs, got {other:?}"),
        };
        Ok(tvec!(f32::fact([
            n,
            self.dims.iter().sum::<usize>().into()
        ])))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let n = inputs
            .first()
            .and_then(|t| t.shape().first().copied())
            .unwrap_or(0);
        let width: usize = self.dims.iter().sum();
        let mut out = vec![0f32; n * width];
        let mut offset = 0;
        for (t, &d) in inputs.iter().zip(&self.dims) {
            let cols = if t.rank() == 1 {
                1
            } else {
                t.shape().get(1).copied().unwrap_or(0)
            };
            let x = as_f32(t)?;
            let x = x.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
            for r in 0..n {
                for c in 0..cols.min(d) {
                    out[r * width + offset + c] = x.get(r * cols + c).copied().unwrap_or(0.0);
                }
            }
            offset += d;
        }
        Ok(tvec!(Tensor::from_shape(&[n, width], &out)?.into_tvalue()))
    }
}
