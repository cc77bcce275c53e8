//! Inputs the deployment fixes become constants, and an `If` whose
//! condition they decide is replaced by the branch it takes: tract types
//! both branches of an `If`, which fails when they disagree on shapes
//! (a voice model's 16 kHz and 8 kHz paths).

use tract_onnx::pb::{GraphProto, ModelProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::Factoid;

/// Replaces the sources named in `fixed` by constants and drops them from
/// the model's inputs.
pub(crate) fn apply_fixed(
    model: &mut InferenceModel,
    fixed: &[(String, Tensor)],
) -> TractResult<()> {
    if fixed.is_empty() {
        return Ok(());
    }
    let mut kept = vec![];
    for outlet in model.input_outlets()?.to_vec() {
        let name = model.node(outlet.node).name.clone();
        match fixed.iter().find(|(n, _)| *n == name) {
            Some((_, t)) => {
                let konst =
                    tract_onnx::tract_hir::ops::konst::Const::new(t.clone().into_arc_tensor())?;
                model.node_mut(outlet.node).op = Box::new(konst);
                model.set_outlet_fact(outlet, InferenceFact::from(t.clone()))?;
            }
            None => kept.push(outlet),
        }
    }
    model.set_input_outlets(&kept)
}

/// tract's name for a parsed node.
fn tract_name(node: &NodeProto) -> String {
    if !node.name.is_empty() {
        node.name.clone()
    } else {
        node.output.first().cloned().unwrap_or_default()
    }
}

/// The branch an `If` takes, if inference decided its condition.
fn decided_branch(model: &InferenceModel, node: &NodeProto) -> Option<GraphProto> {
    let id = model.node_by_name(tract_name(node)).ok()?.id;
    let cond = model.node(id).inputs.first()?;
    let value = model.outlet_fact(*cond).ok()?.value.concretize()?;
    let value = value.cast_to::<bool>().ok()?;
    let take_then = *value
        .try_as_plain_ram()
        .ok()?
        .as_slice::<bool>()
        .ok()?
        .first()?;
    let branch = if take_then {
        "then_branch"
    } else {
        "else_branch"
    };
    node.attribute
        .iter()
        .find(|a| a.name == branch)
        .and_then(|a| a.g.clone())
}

/// The model with every `If` decided by `fixed` inlined, or `None` when
/// there is nothing to fold.
pub(crate) fn fold_fixed_ifs(
    onnx: &tract_onnx::Onnx,
    proto: &ModelProto,
    fixed: &[(String, Tensor)],
) -> TractResult<Option<ModelProto>> {
    let has_if = |p: &ModelProto| {
        p.graph
            .as_ref()
            .is_some_and(|g| g.node.iter().any(|n| n.op_type == "If"))
    };
    if fixed.is_empty() || !has_if(proto) {
        return Ok(None);
    }
    let mut proto = proto.clone();
    let mut folded = false;
    // Inlining a branch can expose a nested If on the same inputs.
    for _ in 0..8 {
        let mut model = onnx.model_for_proto_model(&proto)?;
        apply_fixed(&mut model, fixed)?;
        // Analysis may stop at a branch that does not type; the facts it
        // found before (the condition's value) are what this needs.
        let _ = model.analyse(false);
        let Some(graph) = proto.graph.as_mut() else {
            break;
        };
        let mut nodes = Vec::with_capacity(graph.node.len());
        let mut changed = false;
        for node in std::mem::take(&mut graph.node) {
            let branch = (node.op_type == "If")
                .then(|| decided_branch(&model, &node))
                .flatten();
            let Some(branch) = branch else {
                nodes.push(node);
                continue;
            };
            graph.initializer.extend(branch.initializer);
            nodes.extend(branch.node);
            for (out, inner) in node.output.iter().zip(&branch.output) {
                nodes.push(NodeProto {
                    name: format!("{}/{out}", tract_name(&node)),
                    op_type: "Identity".into(),
                    input: vec![inner.name.clone()],
                    output: vec![out.clone()],
                    ..NodeProto::default()
                });
            }
            changed = true;
        }
        graph.node = nodes;
        folded |= changed;
        if !changed || !has_if(&proto) {
            break;
        }
    }
    Ok(folded.then_some(proto))
}
