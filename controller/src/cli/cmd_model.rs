//! `drover model push|list|show|alias`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::{Ctx, Output, output};
use crate::registry::{ManifestView, ModelSummary, task_kind};

/// `drover model` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ModelCmd {
    /// Register a new version of a model from an ONNX file.
    Push {
        /// The ONNX file.
        file: PathBuf,
        /// Model name.
        #[arg(long)]
        name: String,
        /// Reference data: a CSV (header; feature columns; optional `label`
        /// column), an `.npy` (one input), an `.npz` (one array per input,
        /// by name; what `np.savez` writes), or a directory of them (each
        /// file one request; CSVs are concatenated).
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Class names in class-index order (default: the CSV's labels, sorted).
        #[arg(long, value_delimiter = ',')]
        labels: Option<Vec<String>>,
        /// p95 latency budget for the agent's local guard, ms.
        #[arg(long)]
        latency_budget_ms: Option<u64>,
        /// Parent version (lineage).
        #[arg(long)]
        parent: Option<u64>,
        /// Point this alias at the new version.
        #[arg(long)]
        alias: Option<String>,
        /// NAME=VALUE: an input the deployment fixes, folded into the graph
        /// (an `If` on it disappears), e.g. `--fix-input sr=16000`. Repeatable.
        #[arg(long = "fix-input", value_name = "NAME=VALUE")]
        fix_inputs: Vec<String>,
        /// NAME=D0,D1,...: pin an input's dynamic dims, e.g.
        /// `--input-shape image=1,3,640,640`. Repeatable.
        #[arg(long = "input-shape", value_name = "NAME=DIMS")]
        input_shapes: Vec<String>,
    },
    /// List every version.
    List,
    /// Show a version's manifest (NAME@VERSION or NAME@ALIAS).
    Show {
        /// NAME@VERSION.
        model: String,
    },
    /// Point ALIAS at NAME@VERSION.
    Alias {
        /// NAME@VERSION.
        model: String,
        /// Alias (e.g. production, candidate).
        alias: String,
    },
}

fn split_ref(s: &str) -> anyhow::Result<(&str, &str)> {
    s.split_once('@')
        .with_context(|| format!("expected NAME@VERSION, got {s:?}"))
}

/// `--reference PATH`: a CSV's text, or `.npy` / `.npz` files (told apart
/// by their first bytes); a directory's files in name order.
fn read_reference(path: &std::path::Path) -> anyhow::Result<(Option<String>, Vec<Vec<u8>>)> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "csv" | "npy" | "npz"))
            })
            .collect();
        v.sort();
        anyhow::ensure!(
            !v.is_empty(),
            "{} holds no .csv, .npy or .npz file",
            path.display()
        );
        v
    } else {
        vec![path.to_path_buf()]
    };
    let (mut csv, mut arrays): (Option<String>, Vec<Vec<u8>>) = (None, Vec::new());
    for f in &files {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        if drover_onnx::npy::is_npy(&bytes) || drover_onnx::npy::is_npz(&bytes) {
            arrays.push(bytes);
            continue;
        }
        let text = String::from_utf8(bytes)
            .with_context(|| format!("{} is neither .npy/.npz nor UTF-8 CSV", f.display()))?;
        csv = Some(match csv {
            None => text,
            Some(mut all) => {
                // Later files repeat the header: keep their rows only.
                let (header, rows) = text.split_once('\n').unwrap_or((text.as_str(), ""));
                let first = all.lines().next().unwrap_or_default();
                anyhow::ensure!(
                    header.trim_end() == first.trim_end(),
                    "{}: its CSV header differs from the first file's",
                    f.display()
                );
                if !all.ends_with('\n') {
                    all.push('\n');
                }
                all.push_str(rows);
                all
            }
        });
    }
    anyhow::ensure!(
        csv.is_none() || arrays.is_empty(),
        "{}: give CSV or .npy/.npz reference files, not both",
        path.display()
    );
    Ok((csv, arrays))
}

fn spinner(msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Runs a model subcommand.
pub(crate) async fn run(cmd: ModelCmd, ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        ModelCmd::Push {
            file,
            name,
            reference,
            labels,
            latency_budget_ms,
            parent,
            alias,
            fix_inputs,
            input_shapes,
        } => {
            let (reference_csv, arrays) = match reference {
                Some(p) => read_reference(&p)?,
                None => (None, Vec::new()),
            };
            // The streamed upload: reference files first (their sizes in the
            // query), then the model; the controller writes the model to
            // disk as it arrives.
            let mut query: Vec<(&str, String)> = vec![("name", name)];
            let mut body = Vec::new();
            if let Some(csv) = reference_csv {
                query.push(("reference_csv_bytes", csv.len().to_string()));
                body.extend_from_slice(csv.as_bytes());
            }
            for a in &arrays {
                query.push(("reference_array_bytes", a.len().to_string()));
                body.extend_from_slice(a);
            }
            drop(arrays);
            if let Some(l) = labels {
                query.push(("labels", l.join(",")));
            }
            query.extend(latency_budget_ms.map(|v| ("latency_budget_ms", v.to_string())));
            query.extend(parent.map(|v| ("parent", v.to_string())));
            query.extend(alias.map(|v| ("alias", v)));
            query.extend(fix_inputs.into_iter().map(|v| ("fix_input", v)));
            query.extend(input_shapes.into_iter().map(|v| ("input_shape", v)));
            let size = {
                use std::io::Read as _;
                let mut f = std::fs::File::open(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let len = f.metadata().map(|m| m.len() as usize).unwrap_or(0);
                body.reserve_exact(len);
                f.read_to_end(&mut body)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let pb = spinner(&format!(
                "uploading {} ({size} bytes) and profiling",
                file.display(),
            ));
            let resp: anyhow::Result<serde_json::Value> = ctx
                .client
                .post_bytes("model push", "/v1/models", &query, body)
                .await;
            pb.finish_and_clear();
            let resp = resp?;
            if ctx.output == Output::Json {
                return output::json(&resp);
            }
            let m: ManifestView = serde_json::from_value(resp["manifest"].clone())?;
            output::line(&format!(
                "pushed {}@{} (sha256 {}, {} bytes, {}{})",
                m.name,
                m.version,
                m.sha256,
                m.size,
                task_kind(&m.task),
                m.eval_metrics
                    .get("accuracy")
                    .map(|a| format!(", reference accuracy {:.3}", a))
                    .unwrap_or_default()
            ));
            Ok(())
        }
        ModelCmd::List => {
            let list: Vec<ModelSummary> = ctx.client.get("model list", "/v1/models", &[]).await?;
            if ctx.output == Output::Json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|m| {
                    vec![
                        m.name.clone(),
                        m.version.to_string(),
                        m.task.clone(),
                        m.aliases.join(","),
                        m.sha256.chars().take(12).collect(),
                        m.size.to_string(),
                        output::opt(&m.parent),
                    ]
                })
                .collect();
            output::table(
                &[
                    "NAME", "VERSION", "TASK", "ALIASES", "SHA256", "SIZE", "PARENT",
                ],
                &rows,
            );
            Ok(())
        }
        ModelCmd::Show { model } => {
            let (name, version) = split_ref(&model)?;
            let m: ManifestView = ctx
                .client
                .get("model show", &format!("/v1/models/{name}/{version}"), &[])
                .await?;
            if ctx.output == Output::Json {
                return output::json(&m);
            }
            let io = |specs: &[drover_protocol::manifest::TensorSpec]| {
                specs
                    .iter()
                    .map(|s| {
                        let dims: Vec<String> = s
                            .shape
                            .iter()
                            .map(|d| d.map_or("N".into(), |d| d.to_string()))
                            .collect();
                        format!("{} {:?}[{}]", s.name, s.dtype, dims.join(","))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let task = match &m.task {
                drover_protocol::manifest::Task::Classification { labels, .. } => {
                    format!("classification ({})", labels.join(", "))
                }
                drover_protocol::manifest::Task::Regression { output } => {
                    format!("regression ({output})")
                }
            };
            output::pairs(&[
                ("model", format!("{}@{}", m.name, m.version)),
                ("aliases", m.aliases.join(", ")),
                ("sha256", m.sha256.clone()),
                ("size", format!("{} bytes", m.size)),
                ("inputs", io(&m.inputs)),
                ("outputs", io(&m.outputs)),
                ("task", task),
                (
                    "health checks",
                    format!(
                        "{} samples, tolerance {}",
                        m.health_checks.samples.len(),
                        m.health_checks.tolerance
                    ),
                ),
                (
                    "latency budget",
                    m.latency_budget_us
                        .map_or("-".into(), |us| format!("{} ms", us / 1000)),
                ),
                ("parent", output::opt(&m.parent)),
                ("dataset sha256", output::opt(&m.dataset_sha256)),
                (
                    "eval metrics",
                    m.eval_metrics
                        .iter()
                        .map(|(k, v)| format!("{k}={v:.4}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                ("min agent", m.min_agent_version.clone()),
                ("signed by", m.signed_by.clone()),
            ]);
            output::line("reference profile:");
            for f in &m.reference.features {
                let freqs: Vec<String> = f
                    .bins
                    .frequencies
                    .iter()
                    .map(|x| format!("{x:.2}"))
                    .collect();
                output::line(&format!(
                    "  {:<12} {} bins  [{}]",
                    f.name,
                    f.bins.frequencies.len(),
                    freqs.join(" ")
                ));
            }
            let out: Vec<String> = m
                .reference
                .output
                .frequencies
                .iter()
                .map(|x| format!("{x:.3}"))
                .collect();
            output::line(&format!("  {:<12} [{}]", "output", out.join(" ")));
            Ok(())
        }
        ModelCmd::Alias { model, alias } => {
            let (name, version) = split_ref(&model)?;
            let version: u64 = version
                .parse()
                .with_context(|| format!("version {version:?} is not a number"))?;
            let resp: serde_json::Value = ctx
                .client
                .put(
                    "model alias",
                    &format!("/v1/models/{name}/aliases/{alias}"),
                    &serde_json::json!({ "version": version }),
                )
                .await?;
            if ctx.output == Output::Json {
                return output::json(&resp);
            }
            output::line(&format!("{name}@{alias} -> {name}@{version}"));
            Ok(())
        }
    }
}
