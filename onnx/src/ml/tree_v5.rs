//! TreeEnsemble (ai.onnx.ml 5): the same flat forest, read from the
//! unified attributes (leaves addressed apart from branches, modes and
//! splits as tensors, set membership).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::attrs::Attrs;
use super::transform::PostTransform;
use super::tree::{Forest, LEAF, Mode, NAN_TRUE, Node, TreeRegressor};
use super::{Parsed, attrs, parsed};

fn tensor_values<T: Datum + Copy>(a: &Attrs, name: &str) -> TractResult<Vec<T>> {
    match a.tensor(name)? {
        Some(t) => Ok(t
            .cast_to::<T>()?
            .try_as_plain_ram()?
            .as_slice::<T>()?
            .to_vec()),
        None => Ok(vec![]),
    }
}

fn mode(code: i64) -> Option<Mode> {
    Some(match code {
        0 => Mode::Leq,
        1 => Mode::Lt,
        2 => Mode::Gte,
        3 => Mode::Gt,
        4 => Mode::Eq,
        5 => Mode::Neq,
        6 => Mode::Member,
        _ => return None,
    })
}

pub(crate) fn tree_ensemble(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let a = attrs(ctx, node);
    let features = a.indices("nodes_featureids")?;
    let n = features.len();
    let splits: Vec<f32> = tensor_values(&a, "nodes_splits")?;
    let modes: Vec<i64> = tensor_values(&a, "nodes_modes")?;
    let yes = a.indices("nodes_truenodeids")?;
    let no = a.indices("nodes_falsenodeids")?;
    let yes_leaf = a.ints("nodes_trueleafs");
    let no_leaf = a.ints("nodes_falseleafs");
    let nan_true = a.ints("nodes_missing_value_tracks_true");
    let targets = a.indices("leaf_targetids")?;
    let weights: Vec<f32> = tensor_values(&a, "leaf_weights")?;
    let n_targets = usize::try_from(a.int("n_targets", 1))
        .map_err(|e| a.bad(e))?
        .max(1);
    let lens = [
        splits.len(),
        modes.len(),
        yes.len(),
        no.len(),
        yes_leaf.len(),
        no_leaf.len(),
    ];
    if lens.iter().any(|&l| l != n) || (!nan_true.is_empty() && nan_true.len() != n) {
        return Err(a.bad("node attributes differ in length"));
    }
    if weights.len() != targets.len() || targets.iter().any(|&t| t >= n_targets) {
        return Err(a.bad("leaf_targetids / leaf_weights do not match n_targets"));
    }
    let leaves = targets.len();
    let index = |id: usize, leaf: bool| -> TractResult<u32> {
        let (i, bound) = if leaf { (n + id, n + leaves) } else { (id, n) };
        if i < bound && i <= LEAF as usize {
            Ok(i as u32)
        } else {
            Err(a.bad(format!("child {id} out of range")))
        }
    };
    // Set members follow each other in node order, each set ended by a NaN.
    let mut membership = tensor_values::<f32>(&a, "membership_values")?.into_iter();
    let mut nodes = Vec::with_capacity(n + leaves);
    let mut node_modes = Vec::with_capacity(n + leaves);
    let mut members = vec![vec![]; n + leaves];
    for i in 0..n {
        let m = mode(modes[i]).ok_or_else(|| a.bad(format!("unknown node mode {}", modes[i])))?;
        if m == Mode::Member {
            members[i] = membership.by_ref().take_while(|v| !v.is_nan()).collect();
        }
        let feature = u32::try_from(features[i]).ok().filter(|&f| f < LEAF);
        let feature =
            feature.ok_or_else(|| a.bad(format!("feature id {} out of range", features[i])))?;
        let nan = nan_true.get(i).is_some_and(|&v| v != 0);
        nodes.push(Node {
            feature: feature | if nan { NAN_TRUE } else { 0 },
            threshold: splits[i],
            yes: index(yes[i], yes_leaf[i] != 0)?,
            no: index(no[i], no_leaf[i] != 0)?,
        });
        node_modes.push(m);
    }
    for l in 0..leaves {
        nodes.push(Node {
            feature: LEAF,
            threshold: 0.0,
            yes: l as u32,
            no: l as u32 + 1,
        });
        node_modes.push(Mode::Leaf);
    }
    let roots = a
        .indices("tree_roots")?
        .into_iter()
        .map(|r| {
            // A tree that is a single leaf: both children name the same leaf.
            let single = yes_leaf.get(r) == Some(&1)
                && no_leaf.get(r) == Some(&1)
                && yes.get(r) == no.get(r);
            match yes.get(r) {
                Some(&leaf) if single => index(leaf, true),
                _ => index(r, false),
            }
        })
        .collect::<TractResult<Vec<u32>>>()?;
    let leaf_target = targets.iter().map(|&t| t as u32).collect();
    let forest = Forest::assemble(&a, nodes, node_modes, members, roots, leaf_target, weights)?;
    let post = match a.int("post_transform", 0) {
        0 => PostTransform::None,
        1 => PostTransform::Softmax,
        2 => PostTransform::Logistic,
        3 => PostTransform::SoftmaxZero,
        4 => PostTransform::Probit,
        other => return Err(a.bad(format!("unknown post_transform {other}"))),
    };
    let k = TreeRegressor::new(forest, n_targets, a.int("aggregate_function", 1), post)
        .map_err(|e| a.bad(e))?;
    parsed(k)
}
