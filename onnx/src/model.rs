//! Loading a model and running it through shape-specialised, cached plans.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tract_onnx::pb::{GraphProto, ModelProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::{DimFact, DimLike, ShapeFactoid};

use crate::error::chain;
use crate::schema::{self, ClassLabels, Dim, OutputKind, Schema};
use crate::{OnnxError, ml};

/// How many shape-specialised plans a model keeps by default.
pub const DEFAULT_MAX_PLANS: usize = 8;
/// Idle run states kept per plan for reuse.
const MAX_IDLE_STATES: usize = 4;

/// A value for an input the deployment fixes.
#[derive(Clone, Debug)]
pub enum FixedValue {
    /// The tensor itself.
    Tensor(Tensor),
    /// Text: comma-separated numbers (or one string), read in the input's
    /// element type; the input's declared shape is used when it is static.
    Text(String),
}

/// Options for [`Model::load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Inputs whose value the deployment fixes: they become constants, so
    /// graph branches on them fold away (e.g. `sr=16000`).
    pub fixed_inputs: Vec<(String, FixedValue)>,
    /// Shapes pinned for inputs with dynamic dims (e.g. `image=1,3,640,640`).
    pub input_shapes: Vec<(String, Vec<usize>)>,
    /// Bound of the plan cache.
    pub max_plans: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            fixed_inputs: vec![],
            input_shapes: vec![],
            max_plans: DEFAULT_MAX_PLANS,
        }
    }
}

impl LoadOptions {
    /// Adds `NAME=VALUE` (the CLI's `--fix-input`).
    pub fn fix_input(&mut self, arg: &str) -> Result<(), OnnxError> {
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| OnnxError::BadOption(format!("{arg:?}: expected NAME=VALUE")))?;
        self.fixed_inputs.push((
            name.trim().to_string(),
            FixedValue::Text(value.trim().into()),
        ));
        Ok(())
    }

    /// Adds `NAME=D0,D1,...` (the CLI's `--input-shape`).
    pub fn input_shape(&mut self, arg: &str) -> Result<(), OnnxError> {
        let bad = || OnnxError::BadOption(format!("{arg:?}: expected NAME=D0,D1,..."));
        let (name, dims) = arg.split_once('=').ok_or_else(bad)?;
        let dims = dims
            .split(',')
            .map(|d| d.trim().parse::<usize>().map_err(|_| bad()))
            .collect::<Result<Vec<_>, _>>()?;
        self.input_shapes.push((name.trim().to_string(), dims));
        Ok(())
    }
}

/// Outputs of a run, by name, in graph order.
pub type Outputs = Vec<(String, Tensor)>;

/// An optimized plan for one set of input shapes.
struct Plan {
    runnable: Arc<TypedRunnableModel>,
    idle: Mutex<Vec<TypedSimpleState>>,
}

/// Cache key: per input, its dims (`None` for a batch dim left symbolic).
type PlanKey = Vec<Vec<Option<usize>>>;

struct Cache {
    plans: HashMap<PlanKey, (Arc<Plan>, u64)>,
}

/// A loaded ONNX model: schema, class labels and cached plans.
pub struct Model {
    schema: Schema,
    labels: Option<ClassLabels>,
    /// Typeable template with every input's type and (symbolic) shape set.
    template: InferenceModel,
    /// Position of each schema input among the template's inputs.
    batch_symbol: Option<Symbol>,
    symbolic_batch_ok: AtomicBool,
    deferred: bool,
    cache: Mutex<Cache>,
    clock: AtomicU64,
    max_plans: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("schema", &self.schema)
            .field("labels", &self.labels)
            .finish()
    }
}

/// tract with Drover's ai.onnx.ml operators in place of tract's.
pub fn framework() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    ml::register(&mut onnx.op_register);
    onnx
}

/// The first node (searching subgraphs too) whose operator nobody implements.
fn unsupported(
    graph: &GraphProto,
    known: &HashSet<&str>,
    found: &mut Vec<(String, String, String)>,
) {
    for node in &graph.node {
        if !known.contains(node.op_type.as_str()) {
            let name = if node.name.is_empty() {
                node.output.first().cloned().unwrap_or_default()
            } else {
                node.name.clone()
            };
            let domain = if node.domain.is_empty() {
                "ai.onnx".into()
            } else {
                node.domain.clone()
            };
            found.push((node.op_type.clone(), domain, name));
        }
        for a in &node.attribute {
            for g in a.g.iter().chain(a.graphs.iter()) {
                unsupported(g, known, found);
            }
        }
    }
}

fn plan_err(e: TractError) -> OnnxError {
    let text = chain(&e);
    // Drover's op parsers name the node in their errors; keep them apart
    // from tract's typing failures.
    if text.contains(" node `") && text.contains("Building node") {
        OnnxError::InvalidNode(text)
    } else {
        OnnxError::Plan(text)
    }
}

/// Reads a fixed input's text in its element type.
fn parse_fixed(
    name: &str,
    text: &str,
    dt: DatumType,
    shape: Option<&[Dim]>,
) -> Result<Tensor, OnnxError> {
    let bad = |e: String| OnnxError::BadOption(format!("--fix-input {name}={text}: {e}"));
    let t = if dt == DatumType::String {
        tensor1(&[text.to_string()])
    } else {
        let v: Vec<f64> = text
            .split(',')
            .map(|s| s.trim().parse::<f64>().map_err(|e| bad(e.to_string())))
            .collect::<Result<_, _>>()?;
        tensor1(&v)
            .cast_to_dt(dt)
            .map_err(|e| bad(chain(&e)))?
            .into_owned()
    };
    let dims: Option<Vec<usize>> = shape.and_then(|s| {
        s.iter()
            .map(|d| {
                if let Dim::Fixed(n) = d {
                    Some(*n)
                } else {
                    None
                }
            })
            .collect()
    });
    match dims {
        Some(d) if d.iter().product::<usize>() == t.len() => {
            t.into_shape(&d).map_err(|e| bad(chain(&e)))
        }
        Some(d) => Err(bad(format!("{} values for shape {d:?}", t.len()))),
        None if t.len() == 1 => t.into_shape(&[]).map_err(|e| bad(chain(&e))),
        None => Ok(t),
    }
}

impl Model {
    /// Loads `bytes`; every refusal names its cause (operator and node, input, option).
    pub fn load(bytes: &[u8], options: &LoadOptions) -> Result<Model, OnnxError> {
        let onnx = framework();
        let proto: ModelProto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| OnnxError::NotOnnx(chain(&e)))?;
        Self::from_proto(&onnx, proto, options)
    }

    /// Loads the ONNX file at `path` as [`Model::load`] does, without
    /// reading the file onto the heap first (tract maps it): a large model
    /// costs its parsed graph, not one more copy of its bytes.
    pub fn load_file(path: &std::path::Path, options: &LoadOptions) -> Result<Model, OnnxError> {
        let onnx = framework();
        let proto: ModelProto = onnx
            .proto_model_for_path(path)
            .map_err(|e| OnnxError::NotOnnx(chain(&e)))?;
        Self::from_proto(&onnx, proto, options)
    }

    fn from_proto(
        onnx: &tract_onnx::Onnx,
        proto: ModelProto,
        options: &LoadOptions,
    ) -> Result<Model, OnnxError> {
        let graph = proto
            .graph
            .as_ref()
            .filter(|g| !g.node.is_empty() && !g.output.is_empty())
            .ok_or_else(|| OnnxError::NotOnnx("the file holds no graph".into()))?;
        let known: HashSet<&str> = onnx.op_register.0.keys().map(|k| k.as_str()).collect();
        let mut missing = vec![];
        unsupported(graph, &known, &mut missing);
        if let Some((op, domain, node)) = missing.first().cloned() {
            let mut others: Vec<&str> = missing
                .iter()
                .map(|m| m.0.as_str())
                .filter(|o| *o != op)
                .collect();
            others.sort_unstable();
            others.dedup();
            let more = if others.is_empty() {
                String::new()
            } else {
                format!(" (also: {})", others.join(", "))
            };
            return Err(OnnxError::UnsupportedOperator {
                op,
                domain,
                node,
                more,
            });
        }
        let declared = schema::read(graph, &HashSet::new())?;
        let named = options.fixed_inputs.iter().map(|(n, _)| n);
        for name in named.chain(options.input_shapes.iter().map(|(n, _)| n)) {
            if !declared.inputs.iter().any(|i| &i.name == name) {
                let names: Vec<&str> = declared.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(OnnxError::BadOption(format!(
                    "no input named {name:?} (inputs: {names:?})"
                )));
            }
        }
        let fixed: HashSet<String> = options
            .fixed_inputs
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        let mut schema = schema::read(graph, &fixed)?;
        let labels = schema::class_labels(graph);
        let mut fixed_values = vec![];
        for (name, value) in &options.fixed_inputs {
            let Some(spec) = declared.inputs.iter().find(|i| &i.name == name) else {
                continue;
            };
            let t = match value {
                FixedValue::Tensor(t) => t.clone(),
                FixedValue::Text(s) => {
                    parse_fixed(name, s, spec.element.datum_type(), spec.shape.as_deref())?
                }
            };
            fixed_values.push((name.clone(), t));
        }
        let folded = crate::fold::fold_fixed_ifs(onnx, &proto, &fixed_values).map_err(plan_err)?;
        let proto = folded.unwrap_or(proto);
        let mut model = onnx.model_for_proto_model(&proto).map_err(plan_err)?;
        crate::fold::apply_fixed(&mut model, &fixed_values).map_err(plan_err)?;

        // Every input gets a type and a shape; anonymous dims become symbols.
        let outlets = model.input_outlets().map_err(plan_err)?.to_vec();
        let mut batch_symbol = None;
        for (outlet, spec) in outlets.iter().zip(&schema.inputs.clone()) {
            let pinned = options
                .input_shapes
                .iter()
                .find(|(n, _)| n == &spec.name)
                .map(|(_, d)| d);
            let dims: Option<Vec<Dim>> = match pinned {
                Some(d) => Some(d.iter().map(|&n| Dim::Fixed(n)).collect()),
                None => spec.shape.clone(),
            };
            let mut fact = InferenceFact::dt(spec.element.datum_type());
            if let Some(dims) = &dims {
                let facts: TVec<DimFact> = dims
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => DimFact::from(TDim::from(*n)),
                        Dim::Symbol(s) => DimFact::from(TDim::Sym(model.symbols.sym(s))),
                    })
                    .collect();
                if let Some(Dim::Symbol(s)) = dims.first() {
                    batch_symbol.get_or_insert_with(|| model.symbols.sym(s));
                }
                fact = fact.with_shape(ShapeFactoid::closed(facts));
            }
            model.set_outlet_fact(*outlet, fact).map_err(plan_err)?;
            if let (Some(p), Some(s)) = (
                pinned,
                schema.inputs.iter_mut().find(|i| i.name == spec.name),
            ) {
                s.shape = Some(p.iter().map(|&n| Dim::Fixed(n)).collect());
            }
        }

        // Typing once here refuses at load what no input shape could run.
        // Graphs that only type with concrete sizes (a Reshape by a constant
        // of a dynamic length) are checked per shape, when a plan is built.
        let dynamic = schema.inputs.iter().any(|i| match &i.shape {
            Some(s) => s.iter().skip(1).any(|d| matches!(d, Dim::Symbol(_))),
            None => true,
        });
        let typed = match model.clone().into_typed() {
            Ok(t) => Some(t),
            Err(e) if dynamic => {
                let _ = e;
                None
            }
            Err(e) => return Err(plan_err(e)),
        };
        let deferred = typed.is_none();
        let outlets = match &typed {
            Some(t) => t.output_outlets().map_err(plan_err)?.to_vec(),
            None => vec![],
        };
        for (spec, outlet) in schema.outputs.iter_mut().zip(outlets) {
            let Some(typed) = &typed else { break };
            let fact = typed.outlet_fact(outlet).map_err(plan_err)?;
            if spec.kind == OutputKind::Tensor && spec.spec.shape.is_none() {
                let dims = fact
                    .shape
                    .iter()
                    .map(|d| match d.to_usize() {
                        Ok(n) => Dim::Fixed(n),
                        Err(_) => Dim::Symbol(d.to_string()),
                    })
                    .collect();
                spec.spec.shape = Some(dims);
            }
        }
        Ok(Model {
            schema,
            labels,
            template: model,
            batch_symbol,
            symbolic_batch_ok: AtomicBool::new(true),
            deferred,
            cache: Mutex::new(Cache {
                plans: HashMap::new(),
            }),
            clock: AtomicU64::new(0),
            max_plans: options.max_plans.max(1),
        })
    }

    /// Inputs (without fixed ones) and outputs.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The class labels, for classifiers.
    pub fn class_labels(&self) -> Option<&ClassLabels> {
        self.labels.as_ref()
    }

    /// Whether the graph only types with concrete input sizes, so some
    /// shapes may still be refused at run time (pin them with `input_shapes`
    /// to check at load).
    pub fn typing_deferred(&self) -> bool {
        self.deferred
    }

    /// How many plans are cached now.
    pub fn cached_plans(&self) -> usize {
        self.cache.lock().map(|c| c.plans.len()).unwrap_or(0)
    }

    /// Runs the model on `inputs` by name; returns every output by name.
    pub fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Outputs, OnnxError> {
        let mut by_name: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in inputs {
            if !self.schema.inputs.iter().any(|i| i.name == name) {
                return Err(OnnxError::Input(format!("the model has no input {name:?}")));
            }
            by_name.insert(name, t);
        }
        let mut ordered = TVec::new();
        for spec in &self.schema.inputs {
            let t = by_name
                .remove(&spec.name)
                .ok_or_else(|| OnnxError::Input(format!("missing input {:?}", spec.name)))?;
            let want = spec.element.datum_type();
            let t = if t.datum_type() == want {
                t
            } else if want.is_float() && t.datum_type().is_float()
                || want.is_integer() && t.datum_type().is_integer()
            {
                t.cast_to_dt(want)
                    .map_err(|e| OnnxError::Input(chain(&e)))?
                    .into_owned()
            } else {
                return Err(OnnxError::Input(format!(
                    "input {:?} is {:?}, the model takes {want:?}",
                    spec.name,
                    t.datum_type()
                )));
            };
            if let Some(shape) = &spec.shape {
                let fits = shape.len() == t.rank()
                    && shape
                        .iter()
                        .zip(t.shape())
                        .all(|(d, n)| !matches!(d, Dim::Fixed(f) if f != n));
                if !fits {
                    return Err(OnnxError::Input(format!(
                        "input {:?} has shape {:?}, the model takes {shape:?}",
                        spec.name,
                        t.shape()
                    )));
                }
            }
            ordered.push(t.into_tvalue());
        }
        let shapes: Vec<TVec<usize>> = ordered.iter().map(|t| t.shape().into()).collect();
        let plan = self.plan_for(&ordered)?;
        let state = plan.idle.lock().ok().and_then(|mut s| s.pop());
        let mut state = match state {
            Some(s) => s,
            None => plan
                .runnable
                .spawn()
                .map_err(|e| OnnxError::Run(chain(&e)))?,
        };
        let out = state.run(ordered).map_err(|e| OnnxError::Run(chain(&e)))?;
        if let Ok(mut idle) = plan.idle.lock()
            && idle.len() < MAX_IDLE_STATES
        {
            idle.push(state);
        }
        let mut result = Vec::with_capacity(out.len());
        for (spec, value) in self.schema.outputs.iter().zip(out) {
            let mut t = value.into_tensor();
            if t.datum_type() == DatumType::TDim {
                t = self.dims_to_i64(&t, &shapes)?;
            }
            result.push((spec.spec.name.clone(), t));
        }
        Ok(result)
    }

    /// A tensor of dims (a folded `Shape`, say) as i64, its symbols bound
    /// from the inputs' actual sizes.
    fn dims_to_i64(&self, t: &Tensor, shapes: &[TVec<usize>]) -> Result<Tensor, OnnxError> {
        let mut values = SymbolValues::default();
        for (spec, shape) in self.schema.inputs.iter().zip(shapes) {
            for (d, n) in spec.shape.iter().flatten().zip(shape) {
                if let Dim::Symbol(s) = d {
                    values.set(&self.template.symbols.sym(s), *n as i64);
                }
            }
        }
        let view = t
            .try_as_plain_ram()
            .map_err(|e| OnnxError::Run(chain(&e)))?;
        let dims = view
            .as_slice::<TDim>()
            .map_err(|e| OnnxError::Run(chain(&e)))?;
        let ints = dims
            .iter()
            .map(|d| {
                d.eval(&values)
                    .to_i64()
                    .map_err(|e| OnnxError::Run(e.to_string()))
            })
            .collect::<Result<Vec<i64>, _>>()?;
        Tensor::from_shape(t.shape(), &ints).map_err(|e| OnnxError::Run(chain(&e)))
    }

    /// The cached plan for these inputs, built (and the oldest evicted) on a miss.
    fn plan_for(&self, inputs: &[TValue]) -> Result<Arc<Plan>, OnnxError> {
        let symbolic =
            self.batch_symbol.is_some() && self.symbolic_batch_ok.load(Ordering::Relaxed);
        let key: PlanKey = inputs
            .iter()
            .zip(&self.schema.inputs)
            .map(|(t, spec)| {
                let batch_dim = symbolic
                    && matches!(spec.shape.as_deref(), Some([Dim::Symbol(s), ..]) if self.batch_symbol.as_ref().is_some_and(|b| b.to_string() == *s));
                t.shape()
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| if i == 0 && batch_dim { None } else { Some(n) })
                    .collect()
            })
            .collect();
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut cache) = self.cache.lock()
            && let Some((plan, used)) = cache.plans.get_mut(&key)
        {
            *used = now;
            return Ok(plan.clone());
        }
        let built = match self.build(inputs, &key) {
            Ok(p) => p,
            Err(e) if symbolic => {
                // Some graphs only optimise with a concrete batch: fall back for good.
                self.symbolic_batch_ok.store(false, Ordering::Relaxed);
                let _ = e;
                return self.plan_for(inputs);
            }
            Err(e) => return Err(e),
        };
        let plan = Arc::new(built);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.plans.len() >= self.max_plans
                && let Some(oldest) = cache
                    .plans
                    .iter()
                    .min_by_key(|(_, (_, u))| *u)
                    .map(|(k, _)| k.clone())
            {
                cache.plans.remove(&oldest);
            }
            cache.plans.insert(key, (plan.clone(), now));
        }
        Ok(plan)
    }

    fn build(&self, inputs: &[TValue], key: &PlanKey) -> Result<Plan, OnnxError> {
        let mut model = self.template.clone();
        for (ix, (t, dims)) in inputs.iter().zip(key).enumerate() {
            let facts: TVec<DimFact> = dims
                .iter()
                .map(|d| match (d, &self.batch_symbol) {
                    (Some(n), _) => DimFact::from(TDim::from(*n)),
                    (None, Some(s)) => DimFact::from(TDim::Sym(s.clone())),
                    (None, None) => DimFact::default(),
                })
                .collect();
            let fact = InferenceFact::dt(t.datum_type()).with_shape(ShapeFactoid::closed(facts));
            model.set_input_fact(ix, fact).map_err(plan_err)?;
        }
        let runnable = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(plan_err)?;
        Ok(Plan {
            runnable,
            idle: Mutex::new(vec![]),
        })
    }
}
