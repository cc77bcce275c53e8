//! TreeEnsembleClassifier and TreeEnsembleRegressor over one flat node array.
//!
//! Every tree's nodes sit in one `Vec<Node>` of 16-byte records (feature,
//! threshold, both children), because a traversal step reads all four
//! fields of one node: one cache line holds four nodes, where separate
//! arrays would touch four lines per step. The rarely needed comparison
//! modes live in a side array read only when a model uses a mode other
//! than `BRANCH_LEQ`. Leaves point into flat (target, weight) arrays. A
//! batch is scored tree by tree, so each tree stays in cache for all rows.

use std::collections::HashMap;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::attrs::{Attrs, Labels};
use super::linear::argmax;
use super::transform::PostTransform;
use super::{Kernel, Parsed, attrs, f32_matrix, parsed, rows_of};

/// `feature` value marking a leaf.
pub(super) const LEAF: u32 = 0x7FFF_FFFF;
/// Bit of `feature` set when a missing (NaN) value follows the true branch.
pub(super) const NAN_TRUE: u32 = 0x8000_0000;

/// One node: a branch (`feature`, `threshold`, children) or a leaf
/// (`feature == LEAF`, `yes..no` the range of its weights).
#[derive(Clone, Copy, Debug)]
pub(super) struct Node {
    pub(super) feature: u32,
    pub(super) threshold: f32,
    pub(super) yes: u32,
    pub(super) no: u32,
}

/// Branch comparisons, `x CMP threshold` going to `yes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    /// Membership in a set of values (TreeEnsemble, ai.onnx.ml 5).
    Member,
    Leaf,
}

fn parse_mode(s: &str) -> Option<Mode> {
    Some(match s {
        "BRANCH_LEQ" => Mode::Leq,
        "BRANCH_LT" => Mode::Lt,
        "BRANCH_GTE" => Mode::Gte,
        "BRANCH_GT" => Mode::Gt,
        "BRANCH_EQ" => Mode::Eq,
        "BRANCH_NEQ" => Mode::Neq,
        "LEAF" => Mode::Leaf,
        _ => return None,
    })
}

/// A parsed ensemble.
#[derive(Debug)]
pub(crate) struct Forest {
    nodes: Vec<Node>,
    /// Per node; `None` when every branch is `BRANCH_LEQ`.
    modes: Option<Vec<Mode>>,
    /// Per node, the set a `Member` node tests (empty for the others).
    members: Vec<Vec<f32>>,
    roots: Vec<u32>,
    leaf_target: Vec<u32>,
    leaf_weight: Vec<f32>,
    /// Smallest input width every node's feature fits.
    min_features: usize,
}

impl Forest {
    /// Parses the node and leaf attributes; `leaf` is "class" or "target".
    fn parse(a: &Attrs, leaf: &str, n_targets: usize) -> TractResult<Forest> {
        let tree_ids = a.ints("nodes_treeids");
        let node_ids = a.ints("nodes_nodeids");
        let features = a.indices("nodes_featureids")?;
        let modes = a.strings("nodes_modes");
        let values = a.floats_or_tensor("nodes_values")?;
        let yes_ids = a.ints("nodes_truenodeids");
        let no_ids = a.ints("nodes_falsenodeids");
        let nan_true = a.ints("nodes_missing_value_tracks_true");
        let n = tree_ids.len();
        if n == 0 {
            return Err(a.bad("no nodes"));
        }
        for (name, len) in [
            ("nodes_nodeids", node_ids.len()),
            ("nodes_featureids", features.len()),
            ("nodes_modes", modes.len()),
            ("nodes_values", values.len()),
            ("nodes_truenodeids", yes_ids.len()),
            ("nodes_falsenodeids", no_ids.len()),
        ] {
            if len != n {
                return Err(a.bad(format!("{name} has {len} entries for {n} nodes")));
            }
        }
        if !nan_true.is_empty() && nan_true.len() != n {
            return Err(a.bad("nodes_missing_value_tracks_true length"));
        }
        let index: HashMap<(i64, i64), u32> = tree_ids
            .iter()
            .zip(&node_ids)
            .enumerate()
            .map(|(i, (&t, &d))| ((t, d), i as u32))
            .collect();
        if index.len() != n {
            return Err(a.bad("duplicate (tree, node) ids"));
        }
        let child = |tree: i64, id: i64| {
            index.get(&(tree, id)).copied().ok_or_else(|| {
                a.bad(format!(
                    "tree {tree} has no node {id} (referenced as a child)"
                ))
            })
        };
        // Leaf weights grouped by node, in attribute order.
        let l_tree = a.ints(&format!("{leaf}_treeids"));
        let l_node = a.ints(&format!("{leaf}_nodeids"));
        let l_id = a.indices(&format!("{leaf}_ids"))?;
        let l_w = a.floats_or_tensor(&format!("{leaf}_weights"))?;
        if l_node.len() != l_tree.len() || l_id.len() != l_tree.len() || l_w.len() != l_tree.len() {
            return Err(a.bad(format!("{leaf}_* attributes differ in length")));
        }
        let mut per_leaf: HashMap<u32, Vec<(u32, f32)>> = HashMap::new();
        for i in 0..l_tree.len() {
            let node = child(l_tree[i], l_node[i])?;
            if l_id[i] >= n_targets {
                return Err(a.bad(format!(
                    "{leaf}_ids holds {} for {n_targets} outputs",
                    l_id[i]
                )));
            }
            per_leaf
                .entry(node)
                .or_default()
                .push((l_id[i] as u32, l_w[i]));
        }
        let mut nodes = Vec::with_capacity(n);
        let mut node_modes = Vec::with_capacity(n);
        let mut leaf_target = vec![];
        let mut leaf_weight = vec![];
        let mut roots = vec![];
        let mut seen_trees = HashMap::new();
        for i in 0..n {
            if seen_trees.insert(tree_ids[i], ()).is_none() {
                roots.push(i as u32);
            }
            let mode = parse_mode(&modes[i])
                .ok_or_else(|| a.bad(format!("unsupported node mode {:?}", modes[i])))?;
            node_modes.push(mode);
            if mode == Mode::Leaf {
                let start = leaf_target.len() as u32;
                for (t, w) in per_leaf.remove(&(i as u32)).unwrap_or_default() {
                    leaf_target.push(t);
                    leaf_weight.push(w);
                }
                nodes.push(Node {
                    feature: LEAF,
                    threshold: 0.0,
                    yes: start,
                    no: leaf_target.len() as u32,
                });
            } else {
                let feature = u32::try_from(features[i])
                    .ok()
                    .filter(|&f| f < LEAF)
                    .ok_or_else(|| a.bad(format!("feature id {} out of range", features[i])))?;
                let nan = nan_true.get(i).is_some_and(|&v| v != 0);
                nodes.push(Node {
                    feature: feature | if nan { NAN_TRUE } else { 0 },
                    threshold: values[i],
                    yes: child(tree_ids[i], yes_ids[i])?,
                    no: child(tree_ids[i], no_ids[i])?,
                });
            }
        }
        if let Some(node) = per_leaf.keys().next() {
            return Err(a.bad(format!("weights attached to branch node {node}")));
        }
        Forest::assemble(
            a,
            nodes,
            node_modes,
            vec![],
            roots,
            leaf_target,
            leaf_weight,
        )
    }

    /// Finishes a forest: the feature bound, the fast path when every branch
    /// is `BRANCH_LEQ`, and the acyclic check.
    pub(super) fn assemble(
        a: &Attrs,
        nodes: Vec<Node>,
        node_modes: Vec<Mode>,
        members: Vec<Vec<f32>>,
        roots: Vec<u32>,
        leaf_target: Vec<u32>,
        leaf_weight: Vec<f32>,
    ) -> TractResult<Forest> {
        let min_features = nodes
            .iter()
            .filter(|n| n.feature != LEAF)
            .map(|n| (n.feature & !NAN_TRUE) as usize + 1)
            .max()
            .unwrap_or(0);
        let all_leq = node_modes
            .iter()
            .all(|m| matches!(m, Mode::Leq | Mode::Leaf));
        let forest = Forest {
            nodes,
            modes: (!all_leq).then_some(node_modes),
            members,
            roots,
            leaf_target,
            leaf_weight,
            min_features,
        };
        forest.check_acyclic().map_err(|e| a.bad(e))?;
        Ok(forest)
    }

    /// Every tree must be a tree: a walk from a root visits each node at
    /// most once (so evaluation always ends).
    fn check_acyclic(&self) -> Result<(), String> {
        let mut visited = vec![false; self.nodes.len()];
        for &root in &self.roots {
            let mut stack = vec![root];
            while let Some(i) = stack.pop() {
                let seen = visited
                    .get_mut(i as usize)
                    .ok_or("child index out of range")?;
                if *seen {
                    return Err(format!(
                        "node {i} is reached twice (a cycle or shared subtree)"
                    ));
                }
                *seen = true;
                let node = self.nodes[i as usize];
                if node.feature != LEAF {
                    stack.push(node.yes);
                    stack.push(node.no);
                }
            }
        }
        Ok(())
    }

    /// The leaf a row reaches in the tree rooted at `root`.
    #[inline(always)]
    fn leaf_leq(&self, root: u32, row: &[f32]) -> Node {
        let mut node = self.nodes[root as usize];
        while node.feature != LEAF {
            let x = row[(node.feature & !NAN_TRUE) as usize];
            let yes = x <= node.threshold || (x.is_nan() && node.feature & NAN_TRUE != 0);
            node = self.nodes[if yes { node.yes } else { node.no } as usize];
        }
        node
    }

    /// The same walk for models with other comparison modes.
    fn leaf_general(&self, modes: &[Mode], root: u32, row: &[f32]) -> Node {
        let mut i = root as usize;
        loop {
            let node = self.nodes[i];
            if node.feature == LEAF {
                return node;
            }
            let x = row[(node.feature & !NAN_TRUE) as usize];
            let t = node.threshold;
            let yes = if x.is_nan() {
                node.feature & NAN_TRUE != 0
            } else {
                match modes[i] {
                    Mode::Leq => x <= t,
                    Mode::Lt => x < t,
                    Mode::Gte => x >= t,
                    Mode::Gt => x > t,
                    Mode::Eq => x == t,
                    Mode::Neq => x != t,
                    Mode::Member => self.members.get(i).is_some_and(|m| m.contains(&x)),
                    Mode::Leaf => true,
                }
            };
            i = if yes { node.yes } else { node.no } as usize;
        }
    }

    /// Calls `visit(row, target, weight)` for every leaf weight each row reaches.
    fn for_each_leaf(
        &self,
        x: &[f32],
        f: usize,
        mut visit: impl FnMut(usize, usize, f32),
    ) -> TractResult<()> {
        ensure!(
            f >= self.min_features,
            "the model reads feature {} of {f}",
            self.min_features - 1
        );
        let rows: Vec<&[f32]> = x.chunks(f.max(1)).collect();
        for &root in &self.roots {
            for (r, row) in rows.iter().enumerate() {
                let leaf = match &self.modes {
                    None => self.leaf_leq(root, row),
                    Some(m) => self.leaf_general(m, root, row),
                };
                for l in leaf.yes as usize..leaf.no as usize {
                    visit(r, self.leaf_target[l] as usize, self.leaf_weight[l]);
                }
            }
        }
        Ok(())
    }
}

/// The base values, each output's starting score (zeros when absent).
fn base_values(a: &Attrs, n: usize) -> TractResult<Vec<f32>> {
    let b = a.floats_or_tensor("base_values")?;
    match b.len() {
        0 => Ok(vec![0.0; n]),
        l if l == n => Ok(b),
        l => Err(a.bad(format!("{l} base_values for {n} outputs"))),
    }
}

/// A tree ensemble classifier.
#[derive(Debug)]
pub(crate) struct TreeClassifier {
    forest: Forest,
    labels: Labels,
    base: Vec<f32>,
    post: PostTransform,
    /// The only class id leaves score, when there is one (the binary layout).
    single_class: Option<usize>,
}

pub(crate) fn tree_classifier(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let a = attrs(ctx, node);
    let labels = a.class_labels()?;
    let n = labels.len().max(1);
    let forest = Forest::parse(&a, "class", n)?;
    let post = PostTransform::parse(&a.string("post_transform", "NONE")).map_err(|e| a.bad(e))?;
    let base = base_values(&a, n).or_else(|e| match a.floats_or_tensor("base_values")?.len() {
        // A binary classifier may carry one base value for its one score.
        1 if n == 2 => Ok(vec![a.floats_or_tensor("base_values")?[0], 0.0]),
        _ => Err(e),
    })?;
    let mut ids: Vec<u32> = forest.leaf_target.clone();
    ids.sort_unstable();
    ids.dedup();
    let single_class = (ids.len() == 1 && n <= 2).then(|| ids[0] as usize);
    parsed(TreeClassifier {
        forest,
        labels,
        base,
        post,
        single_class,
    })
}

impl Kernel for TreeClassifier {
    fn name(&self) -> &'static str {
        "TreeEnsembleClassifier"
    }
    fn n_outputs(&self) -> usize {
        2
    }
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (n, _) = rows_of(&inputs[0].shape.to_tvec())?;
        let cols = self.labels.len().max(2);
        Ok(tvec!(
            self.labels.datum_type().fact([n.clone()]),
            f32::fact([n, cols.into()])
        ))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (n, f, x) = f32_matrix(&inputs[0])?;
        let c = self.labels.len().max(1);
        let mut scores = vec![0f32; n * c];
        for row in scores.chunks_mut(c) {
            row.copy_from_slice(&self.base[..c]);
        }
        self.forest
            .for_each_leaf(&x, f, |r, t, w| scores[r * c + t] += w)?;
        let cols = c.max(2);
        let mut out = Vec::with_capacity(n * cols);
        let mut chosen = Vec::with_capacity(n);
        for row in scores.chunks(c) {
            let start = out.len();
            match self.single_class {
                // One score s for two classes: [1 - s, s] for probabilities
                // (NONE, PROBIT), [-s, s] for margins the transform maps.
                Some(k) => {
                    let s = row[k];
                    let neg = match self.post {
                        PostTransform::None | PostTransform::Probit => 1.0 - s,
                        _ => -s,
                    };
                    out.extend([neg, s]);
                }
                None => out.extend_from_slice(row),
            }
            let o = &mut out[start..];
            self.post.apply(o);
            chosen.push(argmax(o));
        }
        let labels = self.labels.pick(&chosen)?;
        Ok(tvec!(
            labels.into_tvalue(),
            Tensor::from_shape(&[n, cols], &out)?.into_tvalue()
        ))
    }
}

/// How a regressor combines its trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

/// A tree ensemble regressor.
#[derive(Debug)]
pub(crate) struct TreeRegressor {
    forest: Forest,
    targets: usize,
    base: Vec<f32>,
    aggregate: Aggregate,
    post: PostTransform,
    /// Outputs in the input's float type (TreeEnsemble) rather than f32.
    same_type: bool,
}

pub(crate) fn tree_regressor(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let a = attrs(ctx, node);
    let targets = usize::try_from(a.int("n_targets", 1))
        .map_err(|e| a.bad(e))?
        .max(1);
    let forest = Forest::parse(&a, "target", targets)?;
    let aggregate = match a.string("aggregate_function", "SUM").as_str() {
        "SUM" => Aggregate::Sum,
        "AVERAGE" => Aggregate::Average,
        "MIN" => Aggregate::Min,
        "MAX" => Aggregate::Max,
        other => return Err(a.bad(format!("unknown aggregate_function {other:?}"))),
    };
    let post = PostTransform::parse(&a.string("post_transform", "NONE")).map_err(|e| a.bad(e))?;
    let base = base_values(&a, targets)?;
    parsed(TreeRegressor {
        forest,
        targets,
        base,
        aggregate,
        post,
        same_type: false,
    })
}

impl Kernel for TreeRegressor {
    fn name(&self) -> &'static str {
        "TreeEnsembleRegressor"
    }
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (n, _) = rows_of(&inputs[0].shape.to_tvec())?;
        let dt = if self.same_type {
            inputs[0].datum_type
        } else {
            DatumType::F32
        };
        Ok(tvec!(dt.fact([n, self.targets.into()])))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (n, f, x) = f32_matrix(&inputs[0])?;
        let k = self.targets;
        let mut y = vec![0f32; n * k];
        let mut hit = vec![false; n * k];
        match self.aggregate {
            Aggregate::Sum | Aggregate::Average => {
                self.forest
                    .for_each_leaf(&x, f, |r, t, w| y[r * k + t] += w)?
            }
            Aggregate::Min | Aggregate::Max => {
                let max = self.aggregate == Aggregate::Max;
                self.forest.for_each_leaf(&x, f, |r, t, w| {
                    let (v, h) = (&mut y[r * k + t], &mut hit[r * k + t]);
                    if !*h || (max && w > *v) || (!max && w < *v) {
                        *v = w;
                    }
                    *h = true;
                })?
            }
        }
        let trees = self.forest.roots.len().max(1) as f32;
        for row in y.chunks_mut(k) {
            for (v, b) in row.iter_mut().zip(&self.base) {
                if self.aggregate == Aggregate::Average {
                    *v /= trees;
                }
                *v += b;
            }
            self.post.apply(row);
        }
        let y = Tensor::from_shape(&[n, k], &y)?;
        let y = if self.same_type {
            y.cast_to_dt(inputs[0].datum_type())?.into_owned()
        } else {
            y
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TreeRegressor {
    /// A regressor from parts (TreeEnsemble builds one).
    pub(super) fn new(
        forest: Forest,
        targets: usize,
        aggregate_code: i64,
        post: PostTransform,
    ) -> TractResult<TreeRegressor> {
        let aggregate = match aggregate_code {
            0 => Aggregate::Average,
            1 => Aggregate::Sum,
            2 => Aggregate::Min,
            3 => Aggregate::Max,
            other => bail!("unknown aggregate_function {other}"),
        };
        let base = vec![0.0; targets];
        Ok(TreeRegressor {
            forest,
            targets,
            base,
            aggregate,
            post,
            same_type: true,
        })
    }
}
