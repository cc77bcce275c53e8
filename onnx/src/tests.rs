//! Unit tests per ai.onnx.ml operator and for loading and planning, on
//! small models built in Rust and run through `Model` (the real path).

use tract_onnx::prelude::*;

use crate::testutil::{A, D, model, node, out, unary, value};
use crate::{ClassLabels, Dim, LoadOptions, Model, OnnxError, OutputKind};

fn load(bytes: &[u8]) -> Model {
    Model::load(bytes, &LoadOptions::default()).unwrap()
}

fn run1(m: &Model, x: Tensor) -> Vec<Tensor> {
    let name = m.schema().inputs[0].name.clone();
    m.run(vec![(name, x)])
        .unwrap()
        .into_iter()
        .map(|(_, t)| t)
        .collect()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.cast_to::<f32>()
        .unwrap()
        .try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
        .to_vec()
}

fn i64s(t: &Tensor) -> Vec<i64> {
    t.try_as_plain_ram()
        .unwrap()
        .as_slice::<i64>()
        .unwrap()
        .to_vec()
}

#[test]
fn scaler_per_column() {
    let m = load(&unary(
        "Scaler",
        2,
        vec![
            ("offset", A::Fs(vec![1.0, 2.0])),
            ("scale", A::Fs(vec![2.0, 0.5])),
        ],
        1,
    ));
    let y = run1(&m, tensor2(&[[1.0f32, 4.0], [3.0, 0.0]]));
    assert_eq!(f32s(&y[0]), vec![0.0, 1.0, 4.0, -1.0]);
}

#[test]
fn normalizer_norms() {
    for (norm, want) in [
        ("L1", [0.25, -0.75]),
        ("L2", [0.316_227_76, -0.948_683_3]),
        ("MAX", [1.0 / 3.0, -1.0]),
    ] {
        let m = load(&unary("Normalizer", 2, vec![("norm", A::S(norm))], 1));
        let y = f32s(&run1(&m, tensor2(&[[1.0f32, -3.0]]))[0]);
        assert!(
            y.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{norm}: {y:?}"
        );
    }
}

#[test]
fn imputer_replaces_nan_per_column() {
    let m = load(&unary(
        "Imputer",
        2,
        vec![
            ("imputed_value_floats", A::Fs(vec![7.0, 8.0])),
            ("replaced_value_float", A::F(f32::NAN)),
        ],
        1,
    ));
    let y = f32s(&run1(&m, tensor2(&[[f32::NAN, 1.0], [2.0, f32::NAN]]))[0]);
    assert_eq!(y, vec![7.0, 1.0, 2.0, 8.0]);
}

#[test]
fn binarizer_keeps_type() {
    let m = load(&unary("Binarizer", 3, vec![("threshold", A::F(0.5))], 1));
    let y = run1(&m, tensor2(&[[0.2f32, 0.5, 0.7]]));
    assert_eq!(y[0].datum_type(), f32::datum_type());
    assert_eq!(f32s(&y[0]), vec![0.0, 0.0, 1.0]);
}

#[test]
fn one_hot_encoder_ints_and_unknowns() {
    let bytes = model(
        vec![node(
            "OneHotEncoder",
            &["X"],
            &["Y"],
            vec![("cats_int64s", A::Is(vec![3, 5, 9])), ("zeros", A::I(1))],
        )],
        vec![value("X", 7, &[D::S(""), D::N(1)])],
        vec![out("Y", 1)],
    );
    let m = load(&bytes);
    let y = run1(&m, tensor2(&[[5i64], [4]]));
    assert_eq!(y[0].shape(), &[2, 1, 3]);
    assert_eq!(f32s(&y[0]), vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    let strict = model(
        vec![node(
            "OneHotEncoder",
            &["X"],
            &["Y"],
            vec![("cats_int64s", A::Is(vec![3])), ("zeros", A::I(0))],
        )],
        vec![value("X", 7, &[D::S(""), D::N(1)])],
        vec![out("Y", 1)],
    );
    let m = load(&strict);
    assert!(matches!(
        m.run(vec![("X".into(), tensor2(&[[4i64]]))]),
        Err(OnnxError::Run(_))
    ));
}

#[test]
fn label_encoder_strings_to_ints_with_default() {
    let bytes = model(
        vec![node(
            "LabelEncoder",
            &["X"],
            &["Y"],
            vec![
                ("keys_strings", A::Ss(vec!["a", "b"])),
                ("values_int64s", A::Is(vec![10, 20])),
                ("default_int64", A::I(-7)),
            ],
        )],
        vec![value("X", 8, &[D::S("")])],
        vec![out("Y", 7)],
    );
    let m = load(&bytes);
    let x = tensor1(&["b".to_string(), "z".to_string(), "a".to_string()]);
    assert_eq!(i64s(&run1(&m, x)[0]), vec![20, -7, 10]);
}

#[test]
fn array_feature_extractor_and_feature_vectorizer() {
    let bytes = model(
        vec![
            node("ArrayFeatureExtractor", &["X", "I"], &["P"], vec![]),
            node(
                "FeatureVectorizer",
                &["P", "X"],
                &["Y"],
                vec![("inputdimensions", A::Is(vec![2, 1]))],
            ),
        ],
        vec![
            value("X", 1, &[D::S(""), D::N(3)]),
            value("I", 7, &[D::N(2)]),
        ],
        vec![out("Y", 1)],
    );
    let m = load(&bytes);
    let y = m
        .run(vec![
            ("X".into(), tensor2(&[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]])),
            ("I".into(), tensor1(&[2i64, 0])),
        ])
        .unwrap();
    // Columns 2 and 0, then X cut to its first column.
    assert_eq!(f32s(&y[0].1), vec![3.0, 1.0, 1.0, 6.0, 4.0, 4.0]);
}

#[test]
fn linear_regressor_targets() {
    let m = load(&unary(
        "LinearRegressor",
        2,
        vec![
            ("coefficients", A::Fs(vec![1.0, 2.0, 0.0, -1.0])),
            ("intercepts", A::Fs(vec![0.5, 1.0])),
            ("targets", A::I(2)),
        ],
        1,
    ));
    let y = run1(&m, tensor2(&[[1.0f32, 1.0]]));
    assert_eq!(y[0].shape(), &[1, 2]);
    assert_eq!(f32s(&y[0]), vec![3.5, 0.0]);
}

#[test]
fn svm_regressor_rbf() {
    let m = load(&unary(
        "SVMRegressor",
        1,
        vec![
            ("kernel_type", A::S("RBF")),
            ("kernel_params", A::Fs(vec![1.0, 0.0, 3.0])),
            ("support_vectors", A::Fs(vec![0.0, 1.0])),
            ("coefficients", A::Fs(vec![1.0, -1.0])),
            ("n_supports", A::I(2)),
            ("rho", A::Fs(vec![0.5])),
        ],
        1,
    ));
    let y = f32s(&run1(&m, tensor2(&[[0.0f32]]))[0]);
    assert!((y[0] - (1.0 - (-1.0f32).exp() + 0.5)).abs() < 1e-6, "{y:?}");
}

/// Two stumps on feature 0 scoring only class 1's column: the binary layout
/// tract's own op mislabels.
fn binary_forest(post: &'static str) -> Vec<u8> {
    model(
        vec![node(
            "TreeEnsembleClassifier",
            &["X"],
            &["label", "probabilities"],
            vec![
                ("classlabels_int64s", A::Is(vec![4, 9])),
                ("nodes_treeids", A::Is(vec![0, 0, 0, 1, 1, 1])),
                ("nodes_nodeids", A::Is(vec![0, 1, 2, 0, 1, 2])),
                ("nodes_featureids", A::Is(vec![0, 0, 0, 0, 0, 0])),
                (
                    "nodes_modes",
                    A::Ss(vec![
                        "BRANCH_LEQ",
                        "LEAF",
                        "LEAF",
                        "BRANCH_LEQ",
                        "LEAF",
                        "LEAF",
                    ]),
                ),
                ("nodes_values", A::Fs(vec![0.5, 0.0, 0.0, 1.5, 0.0, 0.0])),
                ("nodes_truenodeids", A::Is(vec![1, 0, 0, 1, 0, 0])),
                ("nodes_falsenodeids", A::Is(vec![2, 0, 0, 2, 0, 0])),
                (
                    "nodes_missing_value_tracks_true",
                    A::Is(vec![1, 0, 0, 0, 0, 0]),
                ),
                ("class_treeids", A::Is(vec![0, 0, 1, 1])),
                ("class_nodeids", A::Is(vec![1, 2, 1, 2])),
                ("class_ids", A::Is(vec![0, 0, 0, 0])),
                ("class_weights", A::Fs(vec![-1.0, 1.0, -0.5, 0.5])),
                ("post_transform", A::S(post)),
            ],
        )],
        vec![value("X", 1, &[D::S(""), D::N(1)])],
        vec![out("label", 7), out("probabilities", 1)],
    )
}

#[test]
fn binary_tree_ensemble_labels_follow_probabilities() {
    let m = load(&binary_forest("LOGISTIC"));
    assert_eq!(m.class_labels(), Some(&ClassLabels::Int(vec![4, 9])));
    let y = run1(&m, tensor2(&[[0.0f32], [1.0], [2.0], [f32::NAN]]));
    // Margins: -1.5, 0.5, 1.5, and NaN goes left in tree 0 (tracks true) and right in tree 1.
    assert_eq!(i64s(&y[0]), vec![4, 9, 9, 4]);
    let p = f32s(&y[1]);
    assert_eq!(y[1].shape(), &[4, 2]);
    for (r, margin) in [-1.5f32, 0.5, 1.5, -0.5].iter().enumerate() {
        let want = 1.0 / (1.0 + (-margin).exp());
        assert!(
            (p[2 * r + 1] - want).abs() < 1e-6 && (p[2 * r] - (1.0 - want)).abs() < 1e-6,
            "{p:?}"
        );
    }
}

#[test]
fn tree_ensemble_regressor_average_with_base() {
    let bytes = model(
        vec![node(
            "TreeEnsembleRegressor",
            &["X"],
            &["Y"],
            vec![
                ("n_targets", A::I(1)),
                ("aggregate_function", A::S("AVERAGE")),
                ("base_values", A::Fs(vec![10.0])),
                ("nodes_treeids", A::Is(vec![0, 0, 0, 1])),
                ("nodes_nodeids", A::Is(vec![0, 1, 2, 0])),
                ("nodes_featureids", A::Is(vec![1, 0, 0, 0])),
                (
                    "nodes_modes",
                    A::Ss(vec!["BRANCH_GT", "LEAF", "LEAF", "LEAF"]),
                ),
                ("nodes_values", A::Fs(vec![0.0, 0.0, 0.0, 0.0])),
                ("nodes_truenodeids", A::Is(vec![1, 0, 0, 0])),
                ("nodes_falsenodeids", A::Is(vec![2, 0, 0, 0])),
                ("target_treeids", A::Is(vec![0, 0, 1])),
                ("target_nodeids", A::Is(vec![1, 2, 0])),
                ("target_ids", A::Is(vec![0, 0, 0])),
                ("target_weights", A::Fs(vec![4.0, 2.0, 6.0])),
            ],
        )],
        vec![value("X", 1, &[D::S(""), D::N(2)])],
        vec![out("Y", 1)],
    );
    let m = load(&bytes);
    let y = f32s(&run1(&m, tensor2(&[[0.0f32, 1.0], [0.0, -1.0]]))[0]);
    assert_eq!(y, vec![15.0, 14.0]);
}

#[test]
fn cyclic_tree_is_refused_at_load() {
    let bytes = unary(
        "TreeEnsembleRegressor",
        1,
        vec![
            ("nodes_treeids", A::Is(vec![0, 0])),
            ("nodes_nodeids", A::Is(vec![0, 1])),
            ("nodes_featureids", A::Is(vec![0, 0])),
            ("nodes_modes", A::Ss(vec!["BRANCH_LEQ", "BRANCH_LEQ"])),
            ("nodes_values", A::Fs(vec![0.0, 0.0])),
            ("nodes_truenodeids", A::Is(vec![1, 0])),
            ("nodes_falsenodeids", A::Is(vec![1, 0])),
            ("target_treeids", A::Is(vec![])),
            ("target_nodeids", A::Is(vec![])),
            ("target_ids", A::Is(vec![])),
            ("target_weights", A::Fs(vec![])),
        ],
        1,
    );
    let err = Model::load(&bytes, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, OnnxError::InvalidNode(_)), "{err}");
    assert!(
        err.to_string().contains("TreeEnsembleRegressor_node"),
        "{err}"
    );
}

#[test]
fn unsupported_operator_is_named_with_its_node() {
    let bytes = model(
        vec![
            node("Scaler", &["X"], &["S"], vec![]),
            node("DictVectorizer", &["S"], &["Y"], vec![]),
        ],
        vec![value("X", 1, &[D::S(""), D::N(2)])],
        vec![out("Y", 1)],
    );
    let err = Model::load(&bytes, &LoadOptions::default()).unwrap_err();
    match &err {
        OnnxError::UnsupportedOperator {
            op, node, domain, ..
        } => {
            assert_eq!(
                (op.as_str(), node.as_str(), domain.as_str()),
                ("DictVectorizer", "DictVectorizer_node", "ai.onnx.ml")
            );
        }
        other => panic!("{other}"),
    }
    assert!(
        err.to_string()
            .contains("unsupported operator `DictVectorizer`"),
        "{err}"
    );
    assert!(matches!(
        Model::load(b"not onnx", &LoadOptions::default()),
        Err(OnnxError::NotOnnx(_))
    ));
}

#[test]
fn zipmap_output_is_probabilities_with_labels() {
    let mut bytes_nodes = vec![node(
        "ZipMap",
        &["P"],
        &["Z"],
        vec![("classlabels_strings", A::Ss(vec!["no", "yes"]))],
    )];
    bytes_nodes.insert(
        0,
        node("Scaler", &["X"], &["P"], vec![("scale", A::Fs(vec![1.0]))]),
    );
    let bytes = model(
        bytes_nodes,
        vec![value("X", 1, &[D::S("batch"), D::N(2)])],
        vec![out("Z", 1)],
    );
    let m = load(&bytes);
    let labels = ClassLabels::Str(vec!["no".into(), "yes".into()]);
    assert_eq!(
        m.schema().outputs[0].kind,
        OutputKind::ZipMap(labels.clone())
    );
    assert_eq!(m.class_labels(), Some(&labels));
    assert_eq!(
        m.schema().inputs[0].shape,
        Some(vec![Dim::Symbol("batch".into()), Dim::Fixed(2)])
    );
    let y = run1(&m, tensor2(&[[0.25f32, 0.75]]));
    assert_eq!(f32s(&y[0]), vec![0.25, 0.75]);
}

#[test]
fn plans_are_cached_per_shape_and_bounded() {
    let bytes = unary("Scaler", 2, vec![("scale", A::Fs(vec![2.0]))], 1);
    let m = load(&bytes);
    for n in [1usize, 64, 1, 7] {
        let y = run1(&m, Tensor::zero::<f32>(&[n, 2]).unwrap());
        assert_eq!(y[0].shape(), &[n, 2]);
    }
    // The batch dim stays symbolic: one plan serves every batch size.
    assert_eq!(m.cached_plans(), 1);

    let dynamic = model(
        vec![node(
            "Scaler",
            &["X"],
            &["Y"],
            vec![("scale", A::Fs(vec![2.0]))],
        )],
        vec![value("X", 1, &[D::S("N"), D::S("width")])],
        vec![out("Y", 1)],
    );
    let options = LoadOptions {
        max_plans: 2,
        ..LoadOptions::default()
    };
    let m = Model::load(&dynamic, &options).unwrap();
    for w in [1usize, 2, 3, 2] {
        let y = run1(
            &m,
            Tensor::from_shape(&[3, w], &vec![1.0f32; 3 * w]).unwrap(),
        );
        assert_eq!(f32s(&y[0]), vec![2.0; 3 * w]);
    }
    assert_eq!(m.cached_plans(), 2);
}

#[test]
fn bad_inputs_are_refused_by_name() {
    let m = load(&unary("Scaler", 2, vec![], 1));
    let err = m
        .run(vec![("X".into(), tensor2(&[[1.0f32, 2.0, 3.0]]))])
        .unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");
    assert!(matches!(m.run(vec![]), Err(OnnxError::Input(_))));
    assert!(matches!(
        m.run(vec![("Q".into(), tensor0(1.0f32))]),
        Err(OnnxError::Input(_))
    ));
    // f64 is accepted for an f32 input.
    assert_eq!(
        m.run(vec![("X".into(), tensor2(&[[1.0f64, 2.0]]))])
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn fixed_inputs_and_pinned_shapes() {
    let bytes = model(
        vec![node("ArrayFeatureExtractor", &["X", "I"], &["Y"], vec![])],
        vec![
            value("X", 1, &[D::S("N"), D::S("F")]),
            value("I", 7, &[D::N(1)]),
        ],
        vec![out("Y", 1)],
    );
    let mut options = LoadOptions::default();
    options.fix_input("I=1").unwrap();
    options.input_shape("X=2,3").unwrap();
    let m = Model::load(&bytes, &options).unwrap();
    assert_eq!(m.schema().inputs.len(), 1);
    assert_eq!(
        m.schema().inputs[0].shape,
        Some(vec![Dim::Fixed(2), Dim::Fixed(3)])
    );
    let y = run1(&m, tensor2(&[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]));
    assert_eq!(f32s(&y[0]), vec![2.0, 5.0]);
    let mut bad = LoadOptions::default();
    bad.fix_input("nope=1").unwrap();
    assert!(matches!(
        Model::load(&bytes, &bad),
        Err(OnnxError::BadOption(_))
    ));
    assert!(LoadOptions::default().input_shape("X=a,b").is_err());
}

#[test]
fn symbolic_dim_outputs_are_served_as_i64() {
    let mut shape = node("Shape", &["X"], &["Y"], vec![]);
    shape.domain = String::new();
    let m = load(&model(
        vec![shape],
        vec![value("X", 1, &[D::S("N"), D::N(3)])],
        vec![out("Y", 7)],
    ));
    let y = run1(&m, Tensor::zero::<f32>(&[5, 3]).unwrap());
    assert_eq!(y[0].datum_type(), i64::datum_type());
    assert_eq!(i64s(&y[0]), vec![5, 3]);
}

#[test]
fn model_is_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<Model>();
    let m = std::sync::Arc::new(load(&unary("Binarizer", 1, vec![], 1)));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let m = m.clone();
            std::thread::spawn(move || f32s(&run1(&m, tensor2(&[[i as f32 - 1.5]]))[0]))
        })
        .collect();
    let got: Vec<Vec<f32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got, vec![vec![0.0], vec![0.0], vec![1.0], vec![1.0]]);
}
