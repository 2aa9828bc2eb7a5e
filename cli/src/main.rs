//! The `segloss` command line: `eval`, `devices`, `demo`, `bench`, `sortbench`.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use serde_json::json;

use segloss::{
    reference, Engine, EngineOptions, Error, GradMode, Input, InputKind, LossExpr, Mode, MultiEngine, Target,
};
use segloss_data::{npy, synth};

#[derive(Parser)]
#[command(name = "segloss", version, about = "Segmentation losses and their gradients on any GPU (wgpu)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Evaluate losses and gradients on .npy logits and targets.
    Eval(EvalArgs),
    /// List every adapter on every backend, the one that would be picked, and its limits.
    Devices {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Show how a batch of --images would be spread over these adapters (`all`, or a comma
        /// list of name or backend substrings; also SEGLOSS_ADAPTERS).
        #[arg(long)]
        adapters: Option<String>,
        /// Images of the batch to spread.
        #[arg(long, default_value_t = 8)]
        images: usize,
    },
    /// Evaluate every loss on a synthetic road-extraction batch on the GPU and the CPU reference.
    Demo {
        /// Images in the batch.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Image height and width.
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Seed of the synthetic data.
        #[arg(long, default_value_t = 2018)]
        seed: u64,
    },
    /// Time forward plus gradient per loss with the data already on the device.
    Bench(BenchArgs),
    /// Time the segmented radix sort against the bitonic sort across segment sizes (2^8 .. 2^22 by
    /// default).
    Sortbench {
        /// Keys per measurement (segments x segment length), at least one segment.
        #[arg(long, default_value_t = 1 << 20)]
        total: usize,
        /// Timed runs per size.
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Smallest segment length as a power of two (8 to 24).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(SORT_LOG2))]
        min_log2: u32,
        /// Largest segment length as a power of two (8 to 24, at least --min-log2).
        #[arg(long, default_value_t = 22, value_parser = clap::value_parser!(u32).range(SORT_LOG2))]
        max_log2: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub(crate) struct EvalArgs {
    /// Logits [N, C, S...] as float16/32/64 .npy. Repeated: the levels of deep supervision,
    /// level 0 first (same N, C and rank; sizes free), for deep(...) losses.
    #[arg(long, required_unless_present_any = ["logits_dir", "probs"], conflicts_with_all = ["logits_dir", "probs"])]
    logits: Vec<PathBuf>,
    /// Probabilities in [0, 1] instead of logits (same shape; no activation is applied and
    /// gradients are d loss / d probabilities). ce, focal:act=softmax, the Lovász hinge and a
    /// bce pos_weight need logits. Repeatable like --logits.
    #[arg(long, conflicts_with = "logits_dir")]
    probs: Vec<PathBuf>,
    /// Targets: float/bool of the logits' shape, or integer class indices [N, S...].
    #[arg(long, required_unless_present = "target_dir", conflicts_with = "target_dir")]
    target: Option<PathBuf>,
    /// A folder of logits .npy files: evaluates each with the target of the same file stem in
    /// --target-dir, many files per submission, with a progress bar, a row per file and the means.
    #[arg(long, requires = "target_dir", conflicts_with = "grad_dir")]
    logits_dir: Option<PathBuf>,
    /// The targets of --logits-dir: .npy (as --target) or PNG masks (see --mask, --palette).
    #[arg(long, requires = "logits_dir")]
    target_dir: Option<PathBuf>,
    /// How a PNG mask's grey level becomes a target: `grey` (the level is the class index, or the
    /// 0/1 target when the logits have one channel; 1, 2, 4, 8 or 16 bits) or `binary` (a level
    /// past half the bit depth's maximum is 1, else 0: > 127 of 8 bits, > 32767 of 16). An
    /// indexed (palette-mode) PNG's level is its palette index, as VOC stores classes (255: the
    /// boundary, for --ignore-index 255; not with `binary`), or its grey where the palette is
    /// greys only. A colour mask needs --palette.
    #[arg(long, default_value = "grey", value_parser = ["grey", "binary"], conflicts_with_all = ["logits", "probs"])]
    mask: String,
    /// PNG masks in colour: `R,G,B;R,G,B;...`, the i-th colour is class i (other colours are an
    /// error of that file).
    #[arg(long, conflicts_with_all = ["mask", "logits", "probs"])]
    palette: Option<String>,
    /// Files per submission with --logits-dir (1 to 4096).
    #[arg(long, default_value_t = 16, conflicts_with_all = ["logits", "probs"])]
    chunk: usize,
    /// With --logits-dir: print CSV (a row per file, then the means).
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// binary, multilabel or multiclass (inferred from the target when not given).
    #[arg(long)]
    mode: Option<String>,
    /// Class index (multiclass) or target value (binary, multilabel) to ignore.
    #[arg(long, allow_hyphen_values = true)]
    ignore_index: Option<i64>,
    /// Loss text, e.g. 'dice@monai' or '0.8*ce+0.2*dice' (repeatable).
    #[arg(long = "loss", required_unless_present = "metrics", allow_hyphen_values = true)]
    losses: Vec<String>,
    /// Metric text, e.g. 'iou', 'dice@monai', 'hd@monai:percentile=95' (repeatable). With
    /// --logits-dir: each file's value and the whole folder's (counts of every file added).
    #[arg(long = "metric")]
    metrics: Vec<String>,
    /// Write one float32 gradient .npy per --loss here (grad_0.npy, grad_1.npy, ...).
    #[arg(long)]
    grad_dir: Option<PathBuf>,
    /// Evaluate on several adapters at once, the batch split by images: `all`, or a comma list
    /// of substrings of adapter names or backends (`vulkan,gl`). Also read from
    /// SEGLOSS_ADAPTERS. (Single files; --logits-dir uses one adapter.)
    #[arg(long)]
    adapters: Option<String>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// `--adapters`, or SEGLOSS_ADAPTERS.
fn adapters_choice(arg: &Option<String>) -> Option<String> {
    arg.clone().or_else(|| std::env::var("SEGLOSS_ADAPTERS").ok()).filter(|v| !v.trim().is_empty())
}

fn multi_engine(choice: &str) -> Result<MultiEngine, Fail> {
    let opts = EngineOptions::try_from_env()?;
    let multi = MultiEngine::open_blocking(&opts, choice).map_err(|e| match e {
        // a choice that matches none of the usable adapters there are is a bad argument (no
        // usable adapter at all is not)
        Error::NoAdapter(m)
            if m.starts_with("no usable adapter matches")
                && futures::executor::block_on(segloss::list_adapters(&opts))
                    .is_ok_and(|l| l.iter().any(|a| a.usable)) =>
        {
            Fail(2, format!("--adapters: {m}"))
        }
        e => e.into(),
    })?;
    for why in multi.skipped() {
        note(&format!("left out an adapter that did not open: {why}"));
    }
    Ok(multi)
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Shape NxCxHxW (or NxCxS, NxCxDxHxW).
    #[arg(long, default_value = "8x1x512x512")]
    shape: String,
    /// binary, multilabel or multiclass (default: binary for C = 1, multiclass otherwise).
    #[arg(long)]
    mode: Option<String>,
    /// Loss texts (repeatable; default: bce, dice, focal, or ce, dice, focal:act=softmax for a
    /// multiclass shape; with --metric or --batch, bce or ce as the mode takes).
    #[arg(long = "loss", allow_hyphen_values = true)]
    losses: Vec<String>,
    /// Timed iterations per loss (1 to 1000000).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Also time the f64 CPU reference once per loss (value and gradient: the reference has no
    /// value-only evaluation, so not with --forward-only). Per loss of --shape or --sizes only.
    #[arg(long, conflicts_with_all = ["forward_only", "batch", "levels", "metrics", "adapters", "profile"])]
    cpu: bool,
    /// Time the values only (no gradient pass).
    #[arg(long)]
    forward_only: bool,
    /// Time the training-step case: inputs in device buffers, the gradient written into a
    /// device buffer, values left on the device (one submission and no host wait per
    /// evaluation; the time per evaluation is that of `--iters` back-to-back evaluations and
    /// one wait at the end).
    #[arg(long)]
    device_resident: bool,
    /// Sweep the shapes 1x1x64x64 to 8x21x512x512 (binary and multiclass) instead of --shape,
    /// and print each loss as GB/s of input read against the copy probe.
    #[arg(long, conflicts_with = "shape")]
    sizes: bool,
    /// With --sizes: also draw the sweep (GB/s of input read against elements, each loss and
    /// the copy probe) into this SVG file.
    #[arg(long, requires = "sizes")]
    plot: Option<PathBuf>,
    /// Time this many evaluations of --shape (different data, host inputs, gradients read
    /// back unless --forward-only) one by one against one batch of all of them (one submission).
    #[arg(long, conflicts_with_all = ["sizes", "device_resident"])]
    batch: Option<usize>,
    /// Time `deep(LOSS)` over this many levels (1 to 32; level 0 of --shape, each further level half the
    /// size of the one before) against LOSS on level 0 alone; host inputs, gradients read back
    /// unless --forward-only.
    #[arg(long, conflicts_with_all = ["sizes", "device_resident", "batch", "adapters", "metrics"])]
    levels: Option<usize>,
    /// Time the losses of --shape together with these metrics (one evaluation) against the
    /// losses alone (repeatable).
    #[arg(long = "metric", conflicts_with_all = ["sizes", "device_resident", "batch", "adapters"])]
    metrics: Vec<String>,
    /// Time the evaluation of --shape on these adapters at once (as `eval --adapters`) against
    /// the first of them alone.
    #[arg(long, conflicts_with_all = ["sizes", "device_resident", "batch"])]
    adapters: Option<String>,
    /// Time every dispatch of one evaluation of each loss of --shape on the device (timestamp
    /// queries; each dispatch in a pass of its own) and print where the time goes: per kernel,
    /// the device's span, and the wall time. The median of --iters profiled evaluations. With
    /// --device-resident: the evaluation of the training step (inputs in device buffers, checked
    /// on the device; the gradient written into a device buffer).
    #[arg(long, conflicts_with_all = ["sizes", "batch", "levels", "adapters", "metrics"])]
    profile: bool,
    /// On a CPU adapter whose device has subgroup operations: the softmax statistics take the
    /// portable kernel (a workgroup reduction with barriers) instead of the one with subgroups.
    #[arg(long)]
    without_subgroups: bool,
    /// On a CPU adapter: the softmax kernels walk each pixel's classes in memory instead of keeping
    /// them in registers (at most 32 classes, inputs of at least 2^20 elements).
    #[arg(long)]
    without_class_registers: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A failure and the exit code it maps to.
pub(crate) struct Fail(pub u8, pub String);

/// Writes one line to stdout. A failed write (a closed pipe, a full disk) is a [`Fail`], not the
/// panic of `println!`.
macro_rules! outln {
    ($($arg:tt)*) => {
        write_out(format_args!($($arg)*))
    };
}

// after outln!, which it uses
mod dataset;

pub(crate) fn write_out(args: std::fmt::Arguments) -> Result<(), Fail> {
    let mut o = std::io::stdout().lock();
    o.write_fmt(args).and_then(|()| o.write_all(b"\n")).map_err(stdout_failed)
}

fn stdout_failed(e: std::io::Error) -> Fail {
    Fail(1, format!("cannot write to stdout: {e}"))
}

/// Writes one line to stderr, ignoring failures (there is nowhere left to report them).
pub(crate) fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "segloss: {msg}");
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail(1, e.to_string())
    }
}

/// Points `XDG_RUNTIME_DIR` at a private directory when it is unset or not a directory: without
/// it, Mesa's EGL (probed by wgpu's GL backend) prints `error: XDG_RUNTIME_DIR is invalid or not
/// set in the environment.` twice on every command. Called first thing in `main`, while the
/// process has a single thread. The directory is `segloss-xdg-<uid>` in the temporary directory,
/// created with mode 0700, and used only when it is a real directory of this user that no one
/// else can read.
#[cfg(all(unix, not(target_vendor = "apple")))]
fn ensure_xdg_runtime_dir() {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| Path::new(&d).is_dir()) {
        return;
    }
    // The owner of /proc/self is this process's user (Linux); elsewhere the user's name.
    let uid = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    let user = match uid {
        Some(u) => u.to_string(),
        None => std::env::var("USER").unwrap_or_else(|_| "user".into()),
    };
    let dir = std::env::temp_dir().join(format!("segloss-xdg-{user}"));
    if !dir.is_absolute() {
        return;
    }
    let created = std::fs::DirBuilder::new().mode(0o700).create(&dir).is_ok();
    let ours = std::fs::symlink_metadata(&dir)
        .is_ok_and(|m| m.is_dir() && m.mode() & 0o077 == 0 && (created || uid == Some(m.uid())));
    if ours {
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

#[cfg(not(all(unix, not(target_vendor = "apple"))))]
fn ensure_xdg_runtime_dir() {}

fn main() -> ExitCode {
    ensure_xdg_runtime_dir();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version go to stdout, usage errors to stderr.
            match e.print() {
                Err(io) if !e.use_stderr() => {
                    note(&format!("cannot write to stdout: {io}"));
                    return ExitCode::FAILURE;
                }
                _ => {}
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let r = match cli.cmd {
        Cmd::Eval(a) => eval(a),
        Cmd::Devices { json, adapters, images } => devices(json, adapters_choice(&adapters), images),
        Cmd::Demo { batch, size, seed } => demo(batch, size, seed),
        Cmd::Bench(a) => bench(a),
        Cmd::Sortbench { total, iters, min_log2, max_log2, json } => sortbench(total, iters, min_log2..=max_log2, json),
    };
    let r = r.and_then(|()| std::io::stdout().flush().map_err(stdout_failed));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            note(&msg);
            ExitCode::from(code)
        }
    }
}

pub(crate) fn engine() -> Result<Engine, Fail> {
    let e = futures::executor::block_on(Engine::with_options(&EngineOptions::try_from_env()?))?;
    if let Some(why) = &e.info().fallback_reason {
        note(&format!("no GPU adapter ({why}); using the f64 CPU reference"));
    }
    Ok(e)
}

// ----------------------------------------------------------------------------------------------
// eval

pub(crate) fn read_npy(path: &Path, what: &str) -> Result<npy::Array, Fail> {
    let bytes = std::fs::read(path).map_err(|e| Fail(2, format!("cannot read {what} {}: {e}", path.display())))?;
    npy::read(&bytes).map_err(|e| Fail(2, format!("{what} {}: {e}", path.display())))
}

/// Refuses an integer array as `what` (logits or probabilities are floats).
pub(crate) fn float_dtype(arr: &npy::Array, what: &str) -> Result<(), String> {
    if arr.integer {
        return Err(format!("{what} have dtype {}; expected float16, float32 or float64", arr.dtype));
    }
    Ok(())
}

/// Builds the input from the two arrays, inferring the mode when not given.
pub(crate) fn build_input(
    logits: &npy::Array,
    target: &npy::Array,
    mode: Option<&str>,
    ignore: Option<i64>,
    kind: InputKind,
) -> Result<Input<'static>, Fail> {
    let bad = |e: Error| Fail(2, e.to_string());
    let what = if kind == InputKind::Probs { "probs" } else { "logits" };
    float_dtype(logits, what).map_err(|m| Fail(2, m))?;
    let ls = &logits.shape;
    if ls.len() < 3 {
        return Err(Fail(2, format!("{what} shape {ls:?} must be [N, C, S...]")));
    }
    let c = ls[1];
    let ts = &target.shape;
    let is_int = target.integer && !target.dtype.contains('b');
    // [N, S...] indices, or [N, 1, S...] indices (MONAI style) with C > 1
    let squeezable = ts.len() == ls.len() && ts[1] == 1 && c > 1;
    let mode: Mode = match mode {
        Some(m) => m.parse().map_err(bad)?,
        None if is_int && (ts.len() + 1 == ls.len() || squeezable) => Mode::Multiclass,
        None if c == 1 => Mode::Binary,
        None => Mode::Multilabel,
    };
    let lv = logits.to_f32().map_err(|e| Fail(2, format!("{what}: {e}")))?;
    let input = if mode == Mode::Multiclass {
        let mut shape = ts.clone();
        if squeezable {
            shape.remove(1);
        }
        let mut want = vec![ls[0]];
        want.extend(&ls[2..]);
        if shape != want {
            return Err(Fail(
                2,
                format!("multiclass target shape {ts:?} does not fit logits {ls:?}: expected {want:?}"),
            ));
        }
        let labels = target.to_i64().map_err(|e| Fail(2, format!("multiclass target: {e}")))?;
        Input::new_of_kind(Cow::Owned(lv), Target::Labels(Cow::Owned(labels)), ls, mode, ignore, kind).map_err(bad)?
    } else {
        if ts != ls {
            return Err(Fail(2, format!("{mode} target shape {ts:?} must equal the logits shape {ls:?}")));
        }
        let target = Target::Dense(Cow::Owned(target.to_f32().map_err(|e| Fail(2, format!("target: {e}")))?));
        Input::new_of_kind(Cow::Owned(lv), target, ls, mode, ignore, kind).map_err(bad)?
    };
    Ok(input)
}

fn eval(a: EvalArgs) -> Result<(), Fail> {
    let (kind, what, paths) = if a.probs.is_empty() {
        (InputKind::Logits, "logits", &a.logits)
    } else {
        (InputKind::Probs, "probs", &a.probs)
    };
    let (Some(lpath), Some(tpath)) = (paths.first(), &a.target) else {
        return dataset::eval_dirs(&a);
    };
    if a.csv {
        return Err(Fail(2, "--csv prints a row per file: it goes with --logits-dir".into()));
    }
    let logits = read_npy(lpath, what)?;
    let target = read_npy(tpath, "target")?;
    // deep supervision: the other levels' predictions
    let mut levels = Vec::new();
    for (l, p) in paths.iter().enumerate().skip(1) {
        let arr = read_npy(p, &format!("{what} of level {l}"))?;
        if arr.integer {
            return Err(Fail(2, format!("{what} of level {l} have dtype {}; expected floats", arr.dtype)));
        }
        levels.push((
            Cow::Owned(arr.to_f32().map_err(|e| Fail(2, format!("{what} of level {l}: {e}")))?),
            arr.shape.clone(),
        ));
    }
    let input = build_input(&logits, &target, a.mode.as_deref(), a.ignore_index, kind)?
        .with_levels(levels)
        .map_err(|e| Fail(2, e.to_string()))?;
    let multi = adapters_choice(&a.adapters).map(|c| multi_engine(&c)).transpose()?;
    let engine = match &multi {
        Some(_) => None,
        None => Some(engine()?),
    };
    if let Some(d) = &a.grad_dir {
        std::fs::create_dir_all(d).map_err(|e| Fail(2, format!("cannot create {}: {e}", d.display())))?;
    }
    // Parse and check each loss on its own, so that one bad --loss is one error entry.
    let parsed: Vec<Result<LossExpr, Error>> = a
        .losses
        .iter()
        .map(|t| {
            t.parse::<LossExpr>().and_then(|e| {
                e.check_input(input.mode(), input.classes(), kind)?;
                e.check_levels(input.levels())?;
                Ok(e)
            })
        })
        .collect();
    let good: Vec<LossExpr> = parsed.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
    // Gradients only when they are written somewhere: without --grad-dir the gradient pass does
    // not run and no gradient memory is allocated.
    let gmode = if a.grad_dir.is_some() { GradMode::Read } else { GradMode::Skip };
    let prep = match &engine {
        Some(e) => Some(e.prepare(input.clone())?),
        None => None,
    };
    let run = |exprs: &[LossExpr]| match (&multi, &engine, &prep) {
        (Some(m), _, _) => m.evaluate_blocking(&input, exprs, gmode == GradMode::Read),
        (None, Some(e), Some(p)) => e.evaluate_prepared_blocking(p, exprs, gmode),
        _ => Err(Error::Input("no engine".into())),
    };
    // Metrics: with one engine, in the same evaluation as the losses (their counts come from the
    // losses' statistics pass)
    let metric_texts: Vec<Result<segloss::metrics::Metric, Error>> = a.metrics.iter().map(|t| t.parse()).collect();
    let good_metrics: Vec<segloss::metrics::Metric> =
        metric_texts.iter().filter_map(|m| m.as_ref().ok().cloned()).collect();
    let together = match (&engine, a.metrics.is_empty()) {
        (Some(e), false) => {
            e.evaluate_with_metrics_blocking(&input, &good, gmode == GradMode::Read, &good_metrics).ok()
        }
        _ => None,
    };
    let (mut outcomes, metric_values): (Vec<Result<segloss::Evaluation, Error>>, Option<Vec<_>>) = match together {
        Some((evals, values)) => (evals.into_iter().map(Ok).collect(), Some(values)),
        None => (
            match run(&good) {
                Ok(v) => v.into_iter().map(Ok).collect(),
                // Attribute the failure: evaluate one at a time.
                Err(_) => good.iter().map(|e| run(std::slice::from_ref(e)).map(|mut v| v.remove(0))).collect(),
            },
            None,
        ),
    };
    let info = match (&multi, &engine) {
        (Some(m), _) => m.engines()[0].info().clone(),
        (None, Some(e)) => e.info().clone(),
        _ => return Err(Fail(2, "no engine".into())),
    };
    let adapters: Option<Vec<&segloss::DeviceInfo>> =
        multi.as_ref().map(|m| m.engines().iter().map(|e| e.info()).collect());
    outcomes.reverse();
    let mut results = Vec::new();
    // A gradient (or unreduced entries' file) that cannot be written is an error entry of its
    // loss; every value is still printed, and the run exits with 1 at the end.
    let (mut grads_unwritten, mut entries_unwritten) = (0usize, 0usize);
    for (i, (text, p)) in a.losses.iter().zip(&parsed).enumerate() {
        let r = match p {
            Err(e) => Err(e.to_string()),
            Ok(_) => outcomes.pop().expect("one outcome per parsed loss").map_err(|e| e.to_string()),
        };
        let entry = match r {
            Ok(ev) => {
                // one gradient file per level of a deep(...) loss (grad_<i>_<l>.npy), else grad_<i>.npy
                let deep = p.as_ref().is_ok_and(|e| e.deep.is_some());
                let mut grad_files = Vec::new();
                // (one per level that failed)
                let mut grad_errors = Vec::new();
                if let (Some(dir), Some(g)) = (&a.grad_dir, &ev.grad) {
                    let shapes = std::iter::once(input.shape().to_vec()).chain(
                        (1..input.levels()).map(|l| input.level(l).map(|x| x.shape().to_vec()).unwrap_or_default()),
                    );
                    for (l, (g, shape)) in std::iter::once(g).chain(&ev.level_grads).zip(shapes).enumerate() {
                        let name = if deep { format!("grad_{i}_{l}.npy") } else { format!("grad_{i}.npy") };
                        let path = dir.join(name);
                        let written = npy::to_bytes(g, &shape)
                            .map_err(|e| e.to_string())
                            .and_then(|bytes| std::fs::write(&path, bytes).map_err(|e| e.to_string()));
                        match written {
                            Ok(()) => grad_files.push(path.display().to_string()),
                            Err(e) => {
                                grads_unwritten += 1;
                                grad_errors.push(format!("cannot write {}: {e}", path.display()));
                            }
                        }
                    }
                }
                let grad_error = (!grad_errors.is_empty()).then(|| grad_errors.join("; "));
                let grad_file = if grad_error.is_none() { grad_files.first().cloned() } else { None };
                let mut entry = json!({"loss": text, "value": ev.value, "grad_file": grad_file, "grad_error": grad_error, "error": null});
                if deep {
                    entry["grad_files"] = json!(grad_files);
                }
                if let Some(u) = &ev.unreduced {
                    // reduction=none: the entries' shape, a file next to the gradients, and the
                    // (few) entries of a region loss inline
                    entry["unreduced_shape"] = json!(u.shape);
                    // (null without --grad-dir, as grad_file; its own error beside the gradient's)
                    entry["unreduced_file"] = serde_json::Value::Null;
                    entry["unreduced_error"] = serde_json::Value::Null;
                    if let Some(dir) = &a.grad_dir {
                        let path = dir.join(format!("unreduced_{i}.npy"));
                        let written = npy::to_bytes(&u.values, &u.shape)
                            .map_err(|e| e.to_string())
                            .and_then(|bytes| std::fs::write(&path, bytes).map_err(|e| e.to_string()));
                        match written {
                            Ok(()) => entry["unreduced_file"] = json!(path.display().to_string()),
                            Err(e) => {
                                entries_unwritten += 1;
                                entry["unreduced_error"] = json!(format!("cannot write {}: {e}", path.display()));
                            }
                        }
                    }
                    let region = matches!(
                        p.as_ref().ok().and_then(|e| e.terms.first()).map(|t| &t.loss),
                        Some(segloss::Loss::Region(_))
                    );
                    if region {
                        entry["unreduced"] = json!(u.values);
                    }
                }
                entry
            }
            Err(msg) => json!({"loss": text, "value": null, "grad_file": null, "grad_error": null, "error": msg}),
        };
        results.push(entry);
    }
    // each --metric's result: from the evaluation, or (several adapters, or an evaluation that
    // failed as a whole) on the CPU reference
    let mut from_eval = metric_values.map(|v| v.into_iter());
    let metrics: Vec<serde_json::Value> = a
        .metrics
        .iter()
        .zip(&metric_texts)
        .map(|(t, parsed)| {
            let r = match (parsed, from_eval.as_mut()) {
                (Err(e), _) => Err(e.clone()),
                (Ok(_), Some(it)) => it.next().unwrap_or_else(|| Err(Error::Input("no result".into()))),
                (Ok(m), None) => segloss::metrics::reference::evaluate(&input, m),
            };
            metric_entry(t, r)
        })
        .collect();
    if a.json {
        let mut v = json!({"device": info, "mode": input.mode().name(), "input": kind.name(), "results": results});
        if let Some(ad) = &adapters {
            v["adapters"] = json!(ad);
        }
        if !a.metrics.is_empty() {
            v["metrics"] = json!(metrics);
        }
        outln!("{v}")?;
    } else {
        outln!(
            "device: {} ({}, {})  mode: {}  shape: {:?}",
            info.name,
            info.backend,
            info.device_type,
            input.mode(),
            input.shape()
        )?;
        if let Some(ad) = &adapters {
            let names: Vec<String> = ad.iter().map(|d| format!("{} ({})", d.name, d.backend)).collect();
            outln!("adapters: {}", names.join(", "))?;
        }
        for r in &results {
            let loss = r["loss"].as_str().unwrap_or("");
            match (r["error"].as_str(), r["grad_error"].as_str()) {
                (Some(e), _) => outln!("{loss:<40} error: {e}")?,
                (None, g) => {
                    let value = r["value"].as_f64().unwrap_or(f64::NAN);
                    // reduction=none: the entries inline (region losses) or their shape and file
                    let unreduced = match (&r["unreduced"], &r["unreduced_shape"], &r["unreduced_file"]) {
                        (serde_json::Value::Array(v), _, _) => {
                            format!("   entries {}", serde_json::Value::from(v.clone()))
                        }
                        (_, serde_json::Value::Array(sh), f) => format!(
                            "   entries {}{}",
                            serde_json::Value::from(sh.clone()),
                            f.as_str().map(|f| format!(" in {f}")).unwrap_or_default()
                        ),
                        _ => String::new(),
                    };
                    let mut line = format!("{loss:<40} {value:.9}{unreduced}");
                    if let Some(g) = g {
                        line += &format!("   gradient error: {g}");
                    }
                    if let Some(u) = r["unreduced_error"].as_str() {
                        line += &format!("   unreduced entries error: {u}");
                    }
                    outln!("{line}")?;
                }
            }
        }
        for m in &metrics {
            let name = m["metric"].as_str().unwrap_or("");
            if let Some(e) = m["error"].as_str() {
                outln!("{name:<40} error: {e}")?;
                continue;
            }
            let shown = ["value", "per_class", "per_image", "matrix"]
                .iter()
                .filter(|k| !m[**k].is_null())
                .map(|k| format!("{k} {}", m[*k]))
                .collect::<Vec<_>>()
                .join("  ");
            outln!("{name:<40} {shown}")?;
        }
    }
    if grads_unwritten + entries_unwritten > 0 {
        let mut what = Vec::new();
        if grads_unwritten > 0 {
            what.push(format!("{grads_unwritten} gradient file(s)"));
        }
        if entries_unwritten > 0 {
            what.push(format!("{entries_unwritten} unreduced entries file(s)"));
        }
        return Err(Fail(1, format!("{} could not be written (every value was printed)", what.join(" and "))));
    }
    Ok(())
}

/// A number of a metric's JSON: non-finite values as the strings "NaN", "Infinity", "-Infinity".
fn json_number(x: f64) -> serde_json::Value {
    if x.is_nan() {
        json!("NaN")
    } else if x.is_infinite() {
        json!(if x > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(x)
    }
}

/// Nested arrays of a matrix's entries, outermost dimension first.
fn nested(shape: &[usize], data: &[u64]) -> serde_json::Value {
    match shape.split_first() {
        None => json!(data.first().copied().unwrap_or(0)),
        Some((&n, rest)) => {
            let inner: usize = rest.iter().product();
            json!((0..n).map(|i| nested(rest, &data[i * inner..(i + 1) * inner])).collect::<Vec<_>>())
        }
    }
}

/// One `--metric` entry of the JSON: `{"metric", "value", "per_class", "per_image", "matrix",
/// "error"}`, the fields the metric's reduction does not return null.
pub(crate) fn metric_entry(text: &str, r: Result<segloss::metrics::MetricValue, Error>) -> serde_json::Value {
    match r {
        Ok(v) => json!({
            "metric": text,
            "value": v.value.map(json_number),
            "per_class": v.per_class.map(|p| p.into_iter().map(json_number).collect::<Vec<_>>()),
            "per_image": v.per_image.map(|rows| rows
                .into_iter()
                .map(|r| r.into_iter().map(json_number).collect::<Vec<_>>())
                .collect::<Vec<_>>()),
            "matrix": v.matrix.map(|m| nested(&m.shape, &m.data)),
            "error": null,
        }),
        Err(e) => json!({"metric": text, "value": null, "per_class": null, "per_image": null, "matrix": null,
                          "error": e.to_string()}),
    }
}

// ----------------------------------------------------------------------------------------------
// devices

fn devices(as_json: bool, choice: Option<String>, images: usize) -> Result<(), Fail> {
    let opts = EngineOptions::try_from_env()?;
    let list = futures::executor::block_on(segloss::list_adapters(&opts))?;
    // how a batch would be spread over the chosen adapters
    let spread = match &choice {
        Some(c) => {
            let m = multi_engine(c)?;
            let rows: Vec<serde_json::Value> = m
                .engines()
                .iter()
                .zip(m.spread(images))
                .map(|(e, r)| json!({"device": e.info(), "images": [r.start, r.end]}))
                .collect();
            Some(rows)
        }
        None => None,
    };
    if as_json {
        outln!("{}", json!({"adapters": list, "spread": spread}))?;
        return Ok(());
    }
    if list.is_empty() {
        outln!("no adapters found; the engine would use the f64 CPU reference.\non Linux: apt-get install mesa-vulkan-drivers")?;
    }
    for a in &list {
        outln!(
            "{} {} [{} {}] {}\n    max storage binding {} MiB, max buffer {} MiB, workgroups/dim {}, shared {} KiB, storage buffers/stage {}",
            if a.selected { "*" } else { " " },
            a.info.name,
            a.info.backend,
            a.info.device_type,
            a.info.driver,
            a.max_storage_buffer_binding_size >> 20,
            a.max_buffer_size >> 20,
            a.max_compute_workgroups_per_dimension,
            a.max_compute_workgroup_storage_size / 1024,
            a.max_storage_buffers_per_shader_stage
        )?;
    }
    if !list.iter().any(|a| a.selected) && !list.is_empty() {
        outln!("none is usable: the engine would use the f64 CPU reference")?;
    }
    if let Some(rows) = spread {
        outln!("a batch of {images} images on --adapters {}:", choice.unwrap_or_default())?;
        for r in rows {
            outln!(
                "    images {}..{} on {} ({})",
                r["images"][0],
                r["images"][1],
                r["device"]["name"].as_str().unwrap_or(""),
                r["device"]["backend"].as_str().unwrap_or("")
            )?;
        }
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// demo

/// The middle value, or the mean of the two middle values of an even count (NaN of none).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The most elements a batch may have: the rule of `segloss::Input` (2^31 - 1).
const MAX_ELEMENTS: usize = u32::MAX as usize / 2;

/// Checks a batch's element count (overflow included) before anything is allocated.
fn check_elements(what: &str, dims: &[usize]) -> Result<usize, Fail> {
    match dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
        Some(n) if n <= MAX_ELEMENTS => Ok(n),
        Some(n) => Err(Fail(2, format!("{what}: {dims:?} has {n} elements; at most 2^31 - 1 are supported"))),
        None => Err(Fail(2, format!("{what}: {dims:?} has too many elements; at most 2^31 - 1 are supported"))),
    }
}

/// The most timed iterations a benchmark takes: more would not make a better median, and an
/// absurd count would exhaust memory (every timing is kept) before timing anything.
const MAX_ITERS: usize = 1_000_000;

/// A count that must be at least 1.
pub(crate) fn positive(flag: &str, v: usize) -> Result<usize, Fail> {
    if v == 0 {
        return Err(Fail(2, format!("{flag} 0: must be at least 1")));
    }
    Ok(v)
}

/// A count from 1 to `max`.
pub(crate) fn at_most(flag: &str, v: usize, max: usize) -> Result<usize, Fail> {
    if v > max {
        return Err(Fail(2, format!("{flag} {v}: must be at most {max}")));
    }
    positive(flag, v)
}

fn demo(batch: usize, size: usize, seed: u64) -> Result<(), Fail> {
    positive("--batch", batch)?;
    if size < 2 {
        return Err(Fail(2, format!("--size {size}: must be at least 2 (the multiclass scene is size/2 x size/2)")));
    }
    check_elements("--batch and --size", &[batch, 1, size, size])?;
    check_elements("--size", &[2, 6, size / 2, size / 2])?;
    let engine = engine()?;
    outln!("segloss demo on {} ({}, {})", engine.info().name, engine.info().backend, engine.info().device_type)?;
    let roads = synth::roads(batch, size, size, seed)?;
    let fg = roads.target.iter().sum::<f32>() as f64 / roads.target.len() as f64;
    outln!(
        "\nSynthetic road extraction: {batch} images of {size}x{size}, {:.1}% road pixels, a blurred noisy prediction.\n",
        100.0 * fg
    )?;
    let input = Input::dense(&roads.logits, &roads.target, &roads.shape, Mode::Binary)?;
    let texts = [
        "bce",
        "bce:pos_weight=auto",
        "focal:alpha=0.25",
        "dice",
        "dice@monai",
        "dice@keras",
        "dice:log=true",
        "jaccard",
        "tversky:alpha=0.3,beta=0.7",
        "tversky@monai:alpha=0.3,beta=0.7",
        "gdice@monai",
        "sensspec",
        "bce+dice",
        "dice@monai+focal@monai",
        "lovasz",
    ];
    let mut failed = table(&engine, &input, &texts)?;
    metric_lines(&input, &["iou", "dice", "iou@monai", "hd@monai:percentile=95"])?;
    let scene = synth::scene(2, 6, size / 2, size / 2, seed)?;
    outln!("\nMulticlass scene: 2 images of {0}x{0}, 6 classes.\n", size / 2)?;
    let input = Input::labels(&scene.logits, &scene.labels, &scene.shape, None)?;
    failed += table(
        &engine,
        &input,
        &[
            "ce",
            "focal",
            "focal:act=softmax",
            "dice",
            "dice@monai",
            "jaccard",
            "gdice@monai",
            "0.8*ce+0.2*dice",
            "lovasz",
        ],
    )?;
    metric_lines(&input, &["iou:reduction=macro", "dice@monai", "accuracy"])?;
    outln!("\nagreement: |gpu - cpu| / |cpu| of the value, and max |grad_gpu - grad_cpu| / max |grad_cpu|.")?;
    if failed > 0 {
        return Err(Fail(
            1,
            format!(
                "{failed} of the losses failed on the device or disagreed with the CPU reference (value past {VALUE_TOL:e}, gradient past {GRAD_TOL:e}: marked FAIL)"
            ),
        ));
    }
    Ok(())
}

/// The demo's agreement bounds: relative to the CPU reference's value, and to its largest
/// gradient element (f32 against f64; Lovász's near-tied errors may sort in another order).
const VALUE_TOL: f64 = 1e-5;
const GRAD_TOL: f64 = 1e-3;

/// The metrics of the batch's hard predictions, one line (the f64 CPU reference).
fn metric_lines(input: &Input, texts: &[&str]) -> Result<(), Fail> {
    let mut parts = Vec::new();
    for t in texts {
        let m: segloss::metrics::Metric = t.parse()?;
        let v = segloss::metrics::reference::evaluate(input, &m)?;
        parts.push(format!("{t} {:.4}", v.value.unwrap_or(f64::NAN)));
    }
    outln!("\nmetrics of the hard prediction: {}", parts.join(", "))
}

/// The demo's table of `texts` on the device against the CPU reference; the count of rows that
/// failed on the device or disagreed past [`VALUE_TOL`] or [`GRAD_TOL`] (marked FAIL).
fn table(engine: &Engine, input: &Input, texts: &[&str]) -> Result<usize, Fail> {
    let mut failed = 0;
    outln!(
        "{:<34} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "loss",
        "gpu value",
        "cpu value",
        "value",
        "grad",
        "gpu ms",
        "cpu ms"
    )?;
    let prep = engine.prepare(input.clone())?;
    for t in texts {
        let expr: LossExpr = t.parse()?;
        let c0 = Instant::now();
        let cpu = reference::evaluate(input, &expr)?;
        let cpu_ms = ms(c0);
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..3 {
            let t0 = Instant::now();
            match engine.evaluate_prepared_blocking(&prep, std::slice::from_ref(&expr), GradMode::Read) {
                Ok(mut v) => last = Some(v.remove(0)),
                Err(e) => {
                    failed += 1;
                    outln!(
                        "{t:<34} {:>12} {:>12.6} {:>9} {:>9} {:>9} {cpu_ms:>9.2}   FAIL ({e})",
                        "-",
                        cpu.value,
                        "-",
                        "-",
                        "-"
                    )?;
                    last = None;
                    break;
                }
            }
            times.push(ms(t0));
        }
        if let Some(g) = last {
            let rel = (g.value - cpu.value).abs() / cpu.value.abs().max(1e-12);
            let grad = g.grad.unwrap_or_default();
            let (mut d, mut m) = (0f64, 0f64);
            for (a, b) in grad.iter().zip(&cpu.grad) {
                d = d.max((*a as f64 - b).abs());
                m = m.max(b.abs());
            }
            let grel = d / m.max(1e-30);
            // (NaN compares false: a NaN on either side is a failure)
            let agree = rel <= VALUE_TOL && grel <= GRAD_TOL && grad.len() == cpu.grad.len();
            failed += usize::from(!agree);
            outln!(
                "{t:<34} {:>12.6} {:>12.6} {:>9.1e} {:>9.1e} {:>9.2} {cpu_ms:>9.2}{}",
                g.value,
                cpu.value,
                rel,
                grel,
                median(&mut times),
                if agree { "" } else { "   FAIL" }
            )?;
        }
    }
    Ok(failed)
}

// ----------------------------------------------------------------------------------------------
// bench

/// The loss texts of a benchmark, parsed; a text that does not parse is a usage error.
fn parse_exprs(texts: &[String]) -> Result<Vec<LossExpr>, Fail> {
    texts.iter().map(|t| parse_loss(t)).collect()
}

/// One `--loss` of a benchmark: a text that does not parse is a usage error (code 2).
fn parse_loss(text: &str) -> Result<LossExpr, Fail> {
    text.parse().map_err(|e: Error| Fail(2, format!("--loss {text}: {e}")))
}

/// A benchmark's losses, parsed and checked against the mode and classes of its shape: a loss
/// that does not parse or fit is a usage error (code 2), found before anything is timed.
fn check_losses(texts: &[String], mode: Mode, classes: usize) -> Result<(), Fail> {
    for t in texts {
        parse_loss(t)?.check(mode, classes).map_err(|e| {
            let e = e.to_string();
            // (the message of a plain loss starts with its name already)
            let e = e.strip_prefix(&format!("{t}: ")).unwrap_or(&e);
            Fail(2, format!("--loss {t}: {e} ({mode} mode, {classes} channel(s))"))
        })?;
    }
    Ok(())
}

fn parse_shape(s: &str) -> Result<Vec<usize>, Fail> {
    let shape: Result<Vec<usize>, _> = s.split(['x', 'X', ',']).map(|d| d.trim().parse::<usize>()).collect();
    match shape {
        Ok(v) if v.len() >= 3 && v.len() <= 5 && v.iter().all(|&d| d > 0) => Ok(v),
        _ => Err(Fail(2, format!("--shape {s}: expected NxCxHxW (or NxCxS, NxCxDxHxW) with positive sizes"))),
    }
}

/// The shapes of `bench --sizes`: binary and multiclass, from a 64x64 image to a large batch.
const SWEEP: [&str; 6] = ["1x1x64x64", "1x1x256x256", "8x1x512x512", "1x21x64x64", "4x21x256x256", "8x21x512x512"];

/// What `bench` measured on one shape.
struct ShapeBench {
    shape: Vec<usize>,
    mode: Mode,
    iters: usize,
    /// (loss text, median ms, min ms, CPU reference ms)
    results: Vec<(String, f64, f64, Option<f64>)>,
    /// Median ms of every loss in one evaluation.
    together: f64,
    /// Median ms of the copy probe (one read and one write of the logits); `None` when the input
    /// is past the device's binding limit, kept on the host and evaluated in pieces (nothing to copy).
    copy: Option<f64>,
    /// Submissions and host waits per evaluation.
    activity: (f64, f64),
    /// Bytes of input an evaluation reads: the logits and the target words.
    input_bytes: f64,
}

impl ShapeBench {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// GB/s of input read at `ms` per evaluation.
    fn gbps(&self, ms: f64) -> f64 {
        self.input_bytes / (ms * 1e6)
    }

    /// GB/s of the copy probe (it reads and writes the logits).
    fn copy_gbps(&self) -> Option<f64> {
        self.copy.map(|c| (self.numel() * 8) as f64 / (c * 1e6))
    }

    /// `ms` over the copy probe's median.
    fn x_copy(&self, ms: f64) -> Option<f64> {
        self.copy.map(|c| ms / c)
    }
}

/// `x` with `prec` decimals right-aligned in `w` columns, or `-` without one.
fn cell(x: Option<f64>, w: usize, prec: usize) -> String {
    x.map_or_else(|| format!("{:>w$}", "-"), |v| format!("{v:>w$.prec$}"))
}

fn bench_mode(a: &BenchArgs, shape: &[usize]) -> Result<Mode, Fail> {
    Ok(match &a.mode {
        Some(m) if !a.sizes => m.parse().map_err(|e: Error| Fail(2, format!("--mode {m}: {e}")))?,
        _ if shape[1] == 1 => Mode::Binary,
        _ => Mode::Multiclass,
    })
}

/// The loss of a mode: bce (sigmoid) in binary and multilabel mode, ce (softmax) in multiclass.
fn mode_loss(mode: Mode) -> &'static [&'static str] {
    if mode == Mode::Multiclass {
        &["ce"]
    } else {
        &["bce"]
    }
}

/// The default losses of a timing of `mode`: the pixel loss, Dice and focal.
fn mode_losses(mode: Mode) -> &'static [&'static str] {
    if mode == Mode::Multiclass {
        &["ce", "dice", "focal:act=softmax"]
    } else {
        &["bce", "dice", "focal"]
    }
}

/// The default loss of a timing of `mode` across adapters or levels: the pixel loss and Dice.
fn mode_pair(mode: Mode) -> &'static [&'static str] {
    if mode == Mode::Multiclass {
        &["0.5*ce+0.5*dice"]
    } else {
        &["0.5*bce+0.5*dice"]
    }
}

fn bench(a: BenchArgs) -> Result<(), Fail> {
    let iters = at_most("--iters", a.iters, MAX_ITERS)?;
    // --shape, its mode and the loss texts (each kind of timing has its default losses, which
    // may depend on the mode), checked before anything is timed
    let setup = |defaults: &dyn Fn(Mode) -> &'static [&'static str]| -> Result<(Vec<usize>, Mode, Vec<String>), Fail> {
        let shape = parse_shape(&a.shape)?;
        check_elements(&format!("--shape {}", a.shape), &shape)?;
        let mode = bench_mode(&a, &shape)?;
        // a shape the mode cannot take (C > 1 in binary mode, C = 1 in multiclass) is a bad argument
        segloss::Input::check_shape(&shape, mode)
            .map_err(|e| Fail(2, format!("--shape {} in {mode} mode: {e}", a.shape)))?;
        let texts = bench_texts(&a, defaults(mode));
        check_losses(&texts, mode, shape[1])?;
        Ok((shape, mode, texts))
    };
    if let Some(choice) = &a.adapters {
        let (shape, mode, texts) = setup(&mode_pair)?;
        return bench_adapters(&multi_engine(choice)?, &a, &shape, mode, iters, &texts);
    }
    let engine = engine()?;
    engine.set_subgroups(!a.without_subgroups);
    if a.without_class_registers {
        engine.set_class_registers(Some(false));
    }
    if !a.metrics.is_empty() {
        let (shape, mode, texts) = setup(&mode_loss)?;
        return bench_metrics(&engine, &a, &shape, mode, iters, &texts);
    }
    if a.profile {
        let (shape, mode, texts) = setup(&mode_losses)?;
        return bench_profile(&engine, &a, &shape, mode, iters, &texts);
    }
    if let Some(l) = a.levels {
        let (shape, mode, texts) =
            setup(&|m| if m == Mode::Multiclass { &["dice@monai+ce"] } else { &["dice@monai+focal@monai"] })?;
        return bench_levels(&engine, &a, &shape, mode, at_most("--levels", l, 32)?, iters, &texts);
    }
    if let Some(k) = a.batch {
        let (shape, mode, texts) = setup(&mode_loss)?;
        return bench_batch(&engine, &a, &shape, mode, positive("--batch", k)?, iters, &texts);
    }
    if !a.sizes {
        let (shape, mode, texts) = setup(&mode_losses)?;
        let r = bench_shape(&engine, &a, &shape, mode, iters, &texts)?.map_err(|why| Fail(1, why))?;
        return print_bench(&engine, &a, &r);
    }
    // --sizes: every shape of SWEEP, each loss against the copy probe, as GB/s of input read
    if a.mode.is_some() {
        return Err(Fail(2, "--sizes picks the mode of each shape itself: leave out --mode".into()));
    }
    // a loss that does not parse is a usage error; one that fits no shape's mode is left out
    // of each shape (and every shape skipped, a failed run below)
    parse_exprs(&a.losses)?;
    let mut all = Vec::new();
    let mut skipped = Vec::new();
    for text in SWEEP {
        let shape = parse_shape(text)?;
        let mode = bench_mode(&a, &shape)?;
        // the same total work per shape: fewer iterations on the large ones (at least 3)
        let numel: usize = shape.iter().product();
        let it = (iters.saturating_mul(1 << 21) / numel).clamp(3, iters.max(3));
        let default: &[&str] = if mode == Mode::Binary { &["bce", "dice"] } else { &["ce", "dice"] };
        let texts = bench_texts(&a, default);
        // the given losses that fit this shape's mode (bce has no multiclass form, ce no binary one)
        let mut fit = Vec::new();
        for t in &texts {
            match parse_loss(t)?.check(mode, shape[1]) {
                Ok(()) => fit.push(t.clone()),
                Err(why) => eprintln!("bench --sizes: {text}: {t} left out: {why}"),
            }
        }
        if fit.is_empty() {
            skipped.push(json!({"shape": shape, "skipped": format!("no loss given fits {mode} mode")}));
            continue;
        }
        eprintln!("bench --sizes: {text} ({mode}), {it} iterations");
        let r = match bench_shape(&engine, &a, &shape, mode, it, &fit)? {
            Ok(r) => r,
            // a batch past the device's limits (one binding holds the logits; with
            // --device-resident, one binding must hold the whole input) is the dispatcher's to split
            Err(why) => {
                eprintln!("bench --sizes: {text} skipped: {why}");
                skipped.push(json!({"shape": shape, "skipped": why}));
                continue;
            }
        };
        if !a.json {
            print_bench(&engine, &a, &r)?;
            outln!("")?;
        }
        all.push(r);
    }
    // every shape skipped: the rows say why, and the run failed (no plot of nothing)
    let nothing = || Fail(1, format!("bench --sizes: nothing was measured: all {} shapes were skipped", skipped.len()));
    if let Some(path) = &a.plot {
        if all.is_empty() {
            note(&format!("--plot {}: not written, nothing to draw", path.display()));
        } else {
            plot_sweep(path, &engine.info().name, &all)
                .map_err(|e| Fail(1, format!("--plot {}: {e}", path.display())))?;
            eprintln!("bench --sizes: plot written to {}", path.display());
        }
    }
    if a.json {
        let rows: Vec<_> = all.iter().map(|r| bench_json(&engine, &a, r)).collect();
        outln!("{}", json!({"device": engine.info(), "sweep": rows, "skipped": skipped}))?;
        return if all.is_empty() { Err(nothing()) } else { Ok(()) };
    }
    if !all.is_empty() {
        outln!(
            "{:<14} {:<28} {:>10} {:>10} {:>8} {:>10}",
            "shape",
            "loss",
            "median ms",
            "input GB/s",
            "x copy",
            "copy GB/s"
        )?;
    }
    for r in &all {
        let shape = r.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        for (t, med, _, _) in &r.results {
            outln!(
                "{shape:<14} {t:<28} {med:>10.3} {:>10.2} {} {}",
                r.gbps(*med),
                cell(r.x_copy(*med), 8, 2),
                cell(r.copy_gbps(), 10, 2)
            )?;
        }
    }
    for sk in &skipped {
        outln!("{:<14} skipped: {}", sk["shape"], sk["skipped"].as_str().unwrap_or(""))?;
    }
    if all.is_empty() {
        return Err(nothing());
    }
    outln!("input GB/s: bytes of logits and target words per evaluation / median time; copy GB/s: the")?;
    outln!("copy probe's bytes read and written / its median time; x copy: median / copy probe median.")?;
    Ok(())
}

/// The sweep as a chart: GB/s against elements per batch (log scale), one line per loss
/// (binary and multiclass shapes apart) and one for the copy probe (its bytes read and written).
fn plot_sweep(path: &Path, device: &str, all: &[ShapeBench]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    // (label, points (elements, GB/s))
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut add = |label: String, x: f64, y: f64| match series.iter_mut().find(|s| s.0 == label) {
        Some(s) => s.1.push((x, y)),
        None => series.push((label, vec![(x, y)])),
    };
    for r in all {
        let x = r.numel() as f64;
        if let Some(g) = r.copy_gbps() {
            add(format!("copy probe ({})", r.mode), x, g);
        }
        for (t, med, _, _) in &r.results {
            add(format!("{t} ({})", r.mode), x, r.gbps(*med));
        }
    }
    let xs = series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
    let (x0, x1) = xs.fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let y1 = series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).fold(0f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("segloss bench --sizes on {device}"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((x0 / 1.5..x1 * 1.5).log_scale(), 0f64..y1.max(1e-3))?;
    chart
        .configure_mesh()
        .x_desc("elements per batch (N x C x H x W)")
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .y_desc("GB/s (input read; copy probe: read + written)")
        .draw()?;
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = if label.starts_with("copy") { color.stroke_width(3) } else { color.stroke_width(2) };
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), style))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// The loss texts of `bench`: those given, or `default`.
fn bench_texts(a: &BenchArgs, default: &[&str]) -> Vec<String> {
    if a.losses.is_empty() {
        default.iter().map(|t| t.to_string()).collect()
    } else {
        a.losses.clone()
    }
}

/// `k` synthetic inputs of `shape`: their logits and targets, made once.
fn synth_inputs(shape: &[usize], mode: Mode, k: usize) -> Result<Vec<Input<'static>>, Fail> {
    let (n, c) = (shape[0], shape[1]);
    let w = *shape.last().unwrap_or(&1);
    let h: usize = shape[2..shape.len() - 1].iter().product::<usize>().max(1);
    let per: usize = shape.iter().product();
    let mut out = Vec::with_capacity(k);
    match mode {
        Mode::Multiclass => {
            let b = synth::scene(n * k, c, h, w, 7)?;
            let lper = per / c;
            for i in 0..k {
                let logits = b.logits[i * per..(i + 1) * per].to_vec();
                let labels = b.labels[i * lper..(i + 1) * lper].to_vec();
                out.push(Input::new(Cow::Owned(logits), Target::Labels(Cow::Owned(labels)), shape, mode, None)?);
            }
        }
        _ => {
            let b = synth::roads(n * c * k, h, w, 7)?;
            for i in 0..k {
                let logits = b.logits[i * per..(i + 1) * per].to_vec();
                let target = b.target[i * per..(i + 1) * per].to_vec();
                out.push(Input::new(Cow::Owned(logits), Target::Dense(Cow::Owned(target)), shape, mode, None)?);
            }
        }
    }
    Ok(out)
}

/// `bench --batch K`: K evaluations one by one (one submission and one wait each) against one
/// [`segloss::Batch`] of the K (one submission, one wait), both from host inputs.
fn bench_batch(
    engine: &Engine,
    a: &BenchArgs,
    shape: &[usize],
    mode: Mode,
    k: usize,
    iters: usize,
    texts: &[String],
) -> Result<(), Fail> {
    let exprs = parse_exprs(texts)?;
    // the k inputs are held at once: their elements together within a batch's
    let mut all = shape.to_vec();
    all[0] = all[0].checked_mul(k).ok_or_else(|| Fail(2, format!("--batch {k}: too many inputs of {shape:?}")))?;
    check_elements(&format!("--batch {k} inputs of {shape:?}"), &all)?;
    let inputs = synth_inputs(shape, mode, k)?;
    let grads = !a.forward_only;
    let one_by_one = || -> Result<(), Fail> {
        for input in &inputs {
            engine.evaluate_blocking(input, &exprs, grads)?;
        }
        Ok(())
    };
    let batched = || -> Result<(), Fail> {
        let mut batch = engine.batch();
        let pending: Vec<segloss::Pending> =
            inputs.iter().map(|input| batch.push(input, &exprs, grads)).collect::<Result<_, _>>()?;
        batch.flush_blocking()?;
        for p in pending {
            p.wait()?;
        }
        Ok(())
    };
    let mut activity = (0, 0);
    let (one, bat) = alternate(iters, one_by_one, || {
        let before = engine.activity();
        batched()?;
        let after = engine.activity();
        activity = (after.submissions - before.submissions, after.host_waits - before.host_waits);
        Ok(())
    })?;
    if a.json {
        outln!(
            "{}",
            json!({"device": engine.info(), "shape": shape, "mode": mode.name(), "losses": texts, "evaluations": k,
                   "gradients": grads, "iters": iters, "one_by_one_ms": one, "batched_ms": bat,
                   "speedup": one / bat, "batch_submissions": activity.0, "batch_host_waits": activity.1})
        )?;
        return Ok(());
    }
    bench_header(engine, &format!("{k} evaluations of "), shape, mode, texts, grads)?;
    outln!("{:<36} {:>10} {:>14}", "", "median ms", "ms/evaluation")?;
    outln!("{:<36} {one:>10.3} {:>14.4}", "one by one (K submissions, K waits)", one / k as f64)?;
    outln!(
        "{:<36} {bat:>10.3} {:>14.4}",
        format!("batched ({} submission, {} wait)", activity.0, activity.1),
        bat / k as f64
    )?;
    outln!("batched is {:.2}x faster", one / bat)?;
    Ok(())
}

/// `bench --levels L`: each loss as `deep(loss)` over L levels (level 0 of `shape`, each further
/// level halved, one submission) against the loss on level 0 alone, host inputs both.
fn bench_levels(
    engine: &Engine,
    a: &BenchArgs,
    shape: &[usize],
    mode: Mode,
    levels: usize,
    iters: usize,
    texts: &[String],
) -> Result<(), Fail> {
    let level0 = synth_inputs(shape, mode, 1)?.remove(0);
    let mut shapes = vec![shape.to_vec()];
    for l in 1..levels {
        let mut s = shapes[l - 1].clone();
        s[2..].iter_mut().for_each(|d| *d = d.div_ceil(2));
        shapes.push(s);
    }
    // each level's predictions: synthetic data of its own size
    let lv: Vec<(Cow<'static, [f32]>, Vec<usize>)> = shapes[1..]
        .iter()
        .map(|s| Ok((Cow::Owned(synth_inputs(s, mode, 1)?.remove(0).logits().to_vec()), s.clone())))
        .collect::<Result<_, Fail>>()?;
    let deep_input = level0.clone().with_levels(lv)?;
    let grads = !a.forward_only;
    let mut rows = Vec::new();
    for text in texts {
        let plain: LossExpr = text.parse()?;
        let deep: LossExpr = format!("deep({text})").parse()?;
        let (one, all) = alternate(
            iters,
            || engine.evaluate_blocking(&level0, std::slice::from_ref(&plain), grads).map(|_| ()).map_err(Fail::from),
            || {
                engine
                    .evaluate_blocking(&deep_input, std::slice::from_ref(&deep), grads)
                    .map(|_| ())
                    .map_err(Fail::from)
            },
        )?;
        rows.push((text.clone(), one, all));
    }
    if a.json {
        let r: Vec<serde_json::Value> = rows
            .iter()
            .map(|(t, one, all)| json!({"loss": t, "level0_ms": one, "deep_ms": all, "ratio": all / one}))
            .collect();
        outln!(
            "{}",
            json!({"device": engine.info(), "shapes": shapes, "mode": mode.name(), "gradients": grads, "iters": iters,
                   "results": r})
        )?;
        return Ok(());
    }
    bench_header(
        engine,
        &format!("deep(...) over {levels} levels {shapes:?} against level 0 of "),
        shape,
        mode,
        texts,
        grads,
    )?;
    outln!("{:<40} {:>12} {:>12} {:>8}", "loss", "level 0 ms", "deep ms", "ratio")?;
    for (t, one, all) in &rows {
        outln!("{t:<40} {one:>12.3} {all:>12.3} {:>8.2}", all / one)?;
    }
    Ok(())
}

/// The first line of a timing: device, what is timed, losses, gradients.
fn bench_header(
    engine: &Engine,
    what: &str,
    shape: &[usize],
    mode: Mode,
    texts: &[String],
    grads: bool,
) -> Result<(), Fail> {
    outln!(
        "device: {} ({})  {what}{:?} ({mode}), losses {}, gradients {}",
        engine.info().name,
        engine.info().backend,
        shape,
        texts.join(", "),
        if grads { "read back" } else { "skipped" }
    )
}

/// Runs `a` and `b` once each (warm-up), then `iters` times in turn; the median ms of each.
fn alternate(
    iters: usize,
    mut a: impl FnMut() -> Result<(), Fail>,
    mut b: impl FnMut() -> Result<(), Fail>,
) -> Result<(f64, f64), Fail> {
    a()?;
    b()?;
    let (mut xs, mut ys) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    for _ in 0..iters {
        let t0 = Instant::now();
        a()?;
        xs.push(ms(t0));
        let t0 = Instant::now();
        b()?;
        ys.push(ms(t0));
    }
    Ok((median(&mut xs), median(&mut ys)))
}

/// Times the losses with the metrics (one evaluation: counts from the statistics pass) against the
/// losses alone, host inputs, alternating.
fn bench_metrics(
    engine: &Engine,
    a: &BenchArgs,
    shape: &[usize],
    mode: Mode,
    iters: usize,
    texts: &[String],
) -> Result<(), Fail> {
    let exprs = parse_exprs(texts)?;
    // a metric that does not parse or fit the shape is a usage error, as a loss is
    let metrics: Vec<segloss::metrics::Metric> = a
        .metrics
        .iter()
        .map(|t| {
            let m: segloss::metrics::Metric = t.parse()?;
            m.check(mode, shape[1])?;
            Ok(m)
        })
        .collect::<Result<_, Error>>()
        .map_err(|e| Fail(2, format!("--metric: {e}")))?;
    let inputs = synth_inputs(shape, mode, 1)?;
    let input = &inputs[0];
    let grads = !a.forward_only;
    let (x, y) = alternate(
        iters,
        || engine.evaluate_blocking(input, &exprs, grads).map(|_| ()).map_err(Fail::from),
        || engine.evaluate_with_metrics_blocking(input, &exprs, grads, &metrics).map(|_| ()).map_err(Fail::from),
    )?;
    if a.json {
        outln!(
            "{}",
            json!({"device": engine.info(), "shape": shape, "mode": mode.name(), "losses": texts, "metrics": a.metrics,
                   "gradients": grads, "iters": iters, "losses_ms": x, "with_metrics_ms": y, "ratio": y / x})
        )?;
        return Ok(());
    }
    bench_header(engine, "", shape, mode, texts, grads)?;
    outln!("{:<44} {x:>10.3} ms", "losses alone")?;
    outln!("{:<44} {y:>10.3} ms", format!("with {}", a.metrics.join(", ")))?;
    outln!("with the metrics: {:.2}x the losses alone", y / x)?;
    Ok(())
}

/// The profile of median device span; of an even count, the mean of the two middle ones: their
/// spans, their wall times and, when they made the same dispatches, each dispatch's times (else
/// the dispatches of the shorter one). `None` of none.
fn median_profile(mut ps: Vec<segloss::Profile>) -> Option<segloss::Profile> {
    ps.sort_by(|x, y| x.device_ms.total_cmp(&y.device_ms));
    let n = ps.len();
    if n % 2 == 1 {
        return Some(ps.swap_remove(n / 2));
    } else if n == 0 {
        return None;
    }
    // (swap_remove of the upper middle leaves the lower one where it was)
    let hi = ps.swap_remove(n / 2);
    let mut m = ps.swap_remove(n / 2 - 1);
    m.device_ms = (m.device_ms + hi.device_ms) / 2.0;
    m.wall_ms = (m.wall_ms + hi.wall_ms) / 2.0;
    let same =
        m.kernels.len() == hi.kernels.len() && m.kernels.iter().zip(&hi.kernels).all(|(x, y)| x.kernel == y.kernel);
    if same {
        for (k, h) in m.kernels.iter_mut().zip(&hi.kernels) {
            k.start_ms = (k.start_ms + h.start_ms) / 2.0;
            k.ms = (k.ms + h.ms) / 2.0;
        }
    }
    Some(m)
}

/// Profiles each loss of `texts` (and all of them in one evaluation): `iters` profiled
/// evaluations after two warm-ups, the median reported ([`median_profile`]).
fn bench_profile(
    engine: &Engine,
    a: &BenchArgs,
    shape: &[usize],
    mode: Mode,
    iters: usize,
    texts: &[String],
) -> Result<(), Fail> {
    // (the CPU reference has no device to time, and no buffers for the evaluation to read)
    if engine.is_cpu() {
        return Err(Fail(
            1,
            "--profile needs a GPU adapter (it times dispatches on the device); none was found".into(),
        ));
    }
    let exprs = parse_exprs(texts)?;
    let input = synth_inputs(shape, mode, 1)?.remove(0);
    // the training step's buffers (--device-resident)
    let resident = match (a.device_resident, engine.device()) {
        (true, Some(dev)) => Some(Resident::new(dev, &input, exprs.len())),
        (true, None) => return Err(Fail(1, "--device-resident needs a GPU adapter; none was found".into())),
        _ => None,
    };
    let binput = resident.as_ref().map(|r| r.input(&input)).transpose()?;
    // (host inputs: prepared once)
    let prep = if resident.is_none() { Some(engine.prepare(input.clone())?) } else { None };
    let gmode = if a.forward_only { GradMode::Skip } else { GradMode::DeviceOnly };
    let profile = |es: &[LossExpr]| -> Result<segloss::Profile, segloss::Error> {
        match (&resident, &binput, &prep) {
            (Some(r), Some(b), _) => engine.profile_buffers_blocking(b, es, &r.outs(es.len(), a.forward_only)),
            (_, _, Some(prep)) => engine.profile_prepared_blocking(prep, es, gmode),
            _ => Err(segloss::Error::Input("internal: bench --profile without an input".into())),
        }
    };
    let mut runs: Vec<(String, segloss::Profile)> = Vec::new();
    let mut cases: Vec<(String, Vec<LossExpr>)> =
        texts.iter().zip(&exprs).map(|(t, e)| (t.clone(), vec![e.clone()])).collect();
    if exprs.len() > 1 {
        cases.push((format!("all {} together", exprs.len()), exprs.clone()));
    }
    for (name, es) in cases {
        for _ in 0..2 {
            profile(&es)?;
        }
        let ps: Vec<segloss::Profile> = (0..iters).map(|_| profile(&es)).collect::<Result<_, _>>()?;
        let p = median_profile(ps).ok_or_else(|| Fail(2, "--iters 0: must be at least 1".into()))?;
        runs.push((name, p));
    }
    if a.json {
        let v: Vec<serde_json::Value> = runs
            .iter()
            .map(|(name, p)| {
                json!({"loss": name, "device_ms": p.device_ms, "wall_ms": p.wall_ms,
                       "by_kernel": p.by_kernel().iter().map(|(k, n, ms)| json!({"kernel": k, "dispatches": n, "ms": ms})).collect::<Vec<_>>(),
                       "dispatches": p.kernels})
            })
            .collect();
        outln!(
            "{}",
            json!({"device": engine.info(), "shape": shape, "mode": mode.name(), "iters": iters, "profiles": v})
        )?;
        return Ok(());
    }
    outln!(
        "device: {} ({})  profile of {:?} ({mode}), losses {}, {}",
        engine.info().name,
        engine.info().backend,
        shape,
        texts.join(", "),
        match (a.forward_only, a.device_resident) {
            (true, _) => "values only",
            (false, false) => "gradients left on the device",
            (false, true) => "inputs in device buffers (checked on the device), gradients written into one",
        }
    )?;
    for (name, p) in &runs {
        outln!(
            "\n{name}: device span {:.4} ms, wall {:.4} ms, {} dispatches",
            p.device_ms,
            p.wall_ms,
            p.kernels.len()
        )?;
        outln!("  {:<24} {:>10} {:>10} {:>7}", "kernel", "dispatches", "ms", "share")?;
        for (k, n, ms) in p.by_kernel() {
            outln!("  {k:<24} {n:>10} {ms:>10.4} {:>6.1}%", 100.0 * ms / p.device_ms.max(1e-12))?;
        }
    }
    outln!("\ndevice span: first dispatch's start to last dispatch's end (each dispatch in a pass of its own);")?;
    outln!("wall: the whole evaluation on the host's clock (recording, submission, wait, readback).")?;
    Ok(())
}

/// Times one evaluation of `shape` on every adapter of `multi` at once against the first adapter
/// alone (host inputs, gradients read back unless --forward-only), alternating.
fn bench_adapters(
    multi: &MultiEngine,
    a: &BenchArgs,
    shape: &[usize],
    mode: Mode,
    iters: usize,
    texts: &[String],
) -> Result<(), Fail> {
    let exprs = parse_exprs(texts)?;
    let inputs = synth_inputs(shape, mode, 1)?;
    let input = &inputs[0];
    let grads = !a.forward_only;
    let first = &multi.engines()[0];
    let (one, all) = alternate(
        iters,
        || first.evaluate_blocking(input, &exprs, grads).map(|_| ()).map_err(Fail::from),
        || multi.evaluate_blocking(input, &exprs, grads).map(|_| ()).map_err(Fail::from),
    )?;
    let infos: Vec<&segloss::DeviceInfo> = multi.engines().iter().map(|e| e.info()).collect();
    if a.json {
        outln!(
            "{}",
            json!({"adapters": infos, "shape": shape, "mode": mode.name(), "losses": texts, "gradients": grads,
                   "iters": iters, "first_adapter_ms": one, "all_adapters_ms": all, "speedup": one / all,
                   "spread": multi.spread(shape[0]).iter().map(|r| [r.start, r.end]).collect::<Vec<_>>()})
        )?;
        return Ok(());
    }
    let names: Vec<String> = infos.iter().map(|d| format!("{} ({})", d.name, d.backend)).collect();
    outln!(
        "{:?} ({mode}), losses {}, gradients {}",
        shape,
        texts.join(", "),
        if grads { "read back" } else { "skipped" }
    )?;
    outln!("{:<44} {:>10}", "", "median ms")?;
    outln!("{:<44} {one:>10.3}", format!("first adapter alone: {}", names[0]))?;
    outln!("{:<44} {all:>10.3}", format!("{} adapters at once", names.len()))?;
    outln!(
        "adapters: {}
{} adapters are {:.2}x the speed of the first alone",
        names.join(", "),
        names.len(),
        one / all
    )?;
    Ok(())
}

/// Times each loss of `texts` on a synthetic batch of `shape`, all of them in one evaluation,
/// and the copy probe. The inner error is the device limit the batch exceeds (`Error::Limit`,
/// from preparing it or from any evaluation: with --device-resident, an input past the binding
/// limit is refused by the first submission).
fn bench_shape(
    engine: &Engine,
    a: &BenchArgs,
    shape: &[usize],
    mode: Mode,
    iters: usize,
    texts: &[String],
) -> Result<Result<ShapeBench, String>, Fail> {
    let exprs = parse_exprs(texts)?;
    let input = synth_inputs(shape, mode, 1)?.remove(0);
    let target_words = match input.target() {
        Target::Dense(t) => t.len(),
        Target::Labels(t) => t.len(),
    };
    let input_bytes = ((input.logits().len() + target_words) * 4) as f64;
    let prep = match engine.prepare(input.clone()) {
        Ok(p) => p,
        Err(e @ Error::Limit { .. }) => return Ok(Err(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    let gmode = if a.forward_only { GradMode::Skip } else { GradMode::DeviceOnly };
    // device buffers of the same batch, for --device-resident
    let resident = match (a.device_resident, engine.device()) {
        (true, Some(dev)) => Some(Resident::new(dev, &input, exprs.len())),
        (true, None) => return Err(Fail(1, "--device-resident needs a GPU adapter; none was found".into())),
        _ => None,
    };
    // (median ms, min ms, submissions per evaluation, host waits per evaluation)
    let time = |es: &[LossExpr]| -> Result<(f64, f64, f64, f64), Error> {
        if let Some(r) = &resident {
            let binput = r.input(&input)?;
            let grads = r.outs(es.len(), a.forward_only);
            for _ in 0..2 {
                engine.submit_buffers(&binput, es, &grads)?;
            }
            engine.wait_idle()?;
            let mut v = Vec::with_capacity(5);
            let mut per = (0.0, 0.0);
            for _ in 0..5 {
                let before = engine.activity();
                let t0 = Instant::now();
                for _ in 0..iters {
                    engine.submit_buffers(&binput, es, &grads)?;
                }
                let after = engine.activity();
                engine.wait_idle()?;
                v.push(ms(t0) / iters as f64);
                per = (
                    (after.submissions - before.submissions) as f64 / iters as f64,
                    (after.host_waits - before.host_waits) as f64 / iters as f64,
                );
            }
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            return Ok((median(&mut v), min, per.0, per.1));
        }
        for _ in 0..2 {
            engine.evaluate_prepared_blocking(&prep, es, gmode)?;
        }
        let mut v = Vec::with_capacity(iters);
        let before = engine.activity();
        for _ in 0..iters {
            let t0 = Instant::now();
            engine.evaluate_prepared_blocking(&prep, es, gmode)?;
            v.push(ms(t0));
        }
        let after = engine.activity();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let per = |a: u64, b: u64| (a - b) as f64 / iters as f64;
        Ok((median(&mut v), min, per(after.submissions, before.submissions), per(after.host_waits, before.host_waits)))
    };
    let measure = || -> Result<ShapeBench, Error> {
        let mut results = Vec::new();
        let mut activity = (0.0, 0.0);
        for (t, e) in texts.iter().zip(&exprs) {
            let (med, min, subs, waits) = time(std::slice::from_ref(e))?;
            activity = (subs, waits);
            let cpu_ms = if a.cpu {
                let t0 = Instant::now();
                reference::evaluate(&input, e)?;
                Some(ms(t0))
            } else {
                None
            };
            results.push((t.clone(), med, min, cpu_ms));
        }
        let (together, _, _, _) = time(&exprs)?;
        // The copy probe: one read and one write of the logits, the floor of any pass over them
        // (none for an input kept on the host and evaluated in pieces)
        let mut copies = Vec::with_capacity(iters);
        let mut ran = true;
        for i in 0..iters + 2 {
            let t0 = Instant::now();
            ran = engine.copy_probe_blocking(&prep)?;
            if !ran {
                break;
            }
            if i >= 2 {
                copies.push(ms(t0));
            }
        }
        let copy = if ran { Some(median(&mut copies)) } else { None };
        Ok(ShapeBench { shape: shape.to_vec(), mode, iters, results, together, copy, activity, input_bytes })
    };
    match measure() {
        Ok(r) => Ok(Ok(r)),
        Err(e @ Error::Limit { .. }) => Ok(Err(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

fn bench_json(engine: &Engine, a: &BenchArgs, r: &ShapeBench) -> serde_json::Value {
    let first = r.results.first().map(|x| x.1).unwrap_or(1.0);
    let rs: Vec<_> = r
        .results
        .iter()
        .map(|(t, med, min, cpu)| {
            json!({"loss": t, "median_ms": med, "min_ms": min, "ratio_to_first": med / first,
                   "ratio_to_copy": r.x_copy(*med), "input_gbps": r.gbps(*med), "cpu_reference_ms": cpu})
        })
        .collect();
    json!({"device": engine.info(), "shape": r.shape, "mode": r.mode.name(), "iters": r.iters,
           "device_resident": a.device_resident, "forward_only": a.forward_only,
           "submissions_per_evaluation": r.activity.0, "host_waits_per_evaluation": r.activity.1,
           "results": rs, "together": {"median_ms": r.together},
           "copy_probe": r.copy.map(|c| json!({"median_ms": c, "gbps": r.copy_gbps()}))})
}

fn print_bench(engine: &Engine, a: &BenchArgs, r: &ShapeBench) -> Result<(), Fail> {
    if a.json {
        outln!("{}", bench_json(engine, a, r))?;
        return Ok(());
    }
    let first = r.results.first().map(|x| x.1).unwrap_or(1.0);
    outln!(
        "device: {} ({}, {})  shape: {:?}  mode: {}  iters: {}",
        engine.info().name,
        engine.info().backend,
        engine.info().device_type,
        r.shape,
        r.mode,
        r.iters
    )?;
    outln!("{:<40} {:>10} {:>10} {:>8} {:>8} {:>10}", "loss", "median ms", "min ms", "x first", "x copy", "cpu ms")?;
    for (t, med, min, cpu) in &r.results {
        let cpu = cpu.map(|c| format!("{c:.1}")).unwrap_or_else(|| "-".into());
        outln!("{t:<40} {med:>10.3} {min:>10.3} {:>8.2} {} {cpu:>10}", med / first, cell(r.x_copy(*med), 8, 2))?;
    }
    outln!("{:<40} {:>10.3}", format!("all {} together (one call)", r.results.len()), r.together)?;
    match r.copy {
        Some(c) => outln!("{:<40} {c:>10.3}", "copy probe (read + write the logits)")?,
        None if engine.is_cpu() => {
            outln!("copy probe: not run (no GPU adapter: the f64 CPU reference has no device memory to copy)")?
        }
        None => {
            outln!("copy probe: not run (the input is past the binding limit: kept on the host, evaluated in pieces)")?
        }
    }
    outln!(
        "per evaluation: {} submission(s), {} host wait(s){}",
        r.activity.0,
        r.activity.1,
        if a.device_resident { " (device-resident)" } else { "" }
    )?;
    Ok(())
}

/// The batch in device buffers on the engine's device, for `bench --device-resident`.
struct Resident {
    logits: segloss::wgpu::Buffer,
    target: segloss::wgpu::Buffer,
    /// a gradient buffer per expression (one shared would make the engine keep their order, see
    /// `GradOut`)
    grads: Vec<segloss::wgpu::Buffer>,
}

impl Resident {
    /// The buffers of `input` and a gradient buffer for each of `exprs` expressions.
    fn new(device: &segloss::wgpu::Device, input: &Input, exprs: usize) -> Resident {
        use segloss::wgpu::util::DeviceExt;
        let usage = segloss::wgpu::BufferUsages::STORAGE;
        let init = |label, contents: &[u8]| {
            device.create_buffer_init(&segloss::wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            })
        };
        let words: Vec<u32> = match input.target() {
            Target::Dense(t) => t.iter().map(|v| v.to_bits()).collect(),
            Target::Labels(t) => t.iter().map(|&v| v as u32).collect(),
        };
        Resident {
            logits: init("logits", bytemuck::cast_slice(input.logits())),
            target: init("target", bytemuck::cast_slice(&words)),
            grads: (0..exprs)
                .map(|_| {
                    device.create_buffer(&segloss::wgpu::BufferDescriptor {
                        label: Some("gradient"),
                        size: (input.logits().len() * 4) as u64,
                        usage,
                        mapped_at_creation: false,
                    })
                })
                .collect(),
        }
    }

    /// Where `n` expressions' gradients go: a buffer each, or nowhere (`forward_only`).
    fn outs(&self, n: usize, forward_only: bool) -> Vec<segloss::GradOut<'_>> {
        self.grads
            .iter()
            .take(n)
            .map(|g| {
                if forward_only {
                    segloss::GradOut::Skip
                } else {
                    segloss::GradOut::Write(segloss::BufferSlice::whole(g))
                }
            })
            .collect()
    }

    fn input(&self, input: &Input) -> Result<segloss::BufferInput<'_>, Error> {
        let t = segloss::BufferSlice::whole(&self.target);
        let target = match input.target() {
            Target::Dense(_) => segloss::TargetBuffer::Dense(t),
            Target::Labels(_) => segloss::TargetBuffer::ClassU32(t),
        };
        segloss::BufferInput::new(
            segloss::BufferSlice::whole(&self.logits),
            target,
            input.shape(),
            input.mode(),
            input.ignore_index(),
        )
    }
}

// ----------------------------------------------------------------------------------------------
// sortbench

/// The segment lengths `sortbench` takes, as powers of two: from a 256-key segment (the
/// smallest the sorts are written for) to 2^24.
const SORT_LOG2: std::ops::RangeInclusive<i64> = 8..=24;

fn sortbench(total: usize, iters: usize, log2: std::ops::RangeInclusive<u32>, as_json: bool) -> Result<(), Fail> {
    at_most("--iters", iters, MAX_ITERS)?;
    if positive("--total", total)? > MAX_ELEMENTS {
        return Err(Fail(2, format!("--total {total}: at most 2^31 keys are supported")));
    }
    // (clap holds each end to SORT_LOG2)
    if log2.is_empty() {
        return Err(Fail(
            2,
            format!(
                "--min-log2 {} is past --max-log2 {}: no segment length to time (each from {} to {})",
                log2.start(),
                log2.end(),
                SORT_LOG2.start(),
                SORT_LOG2.end()
            ),
        ));
    }
    let engine = engine()?;
    if engine.is_cpu() {
        return Err(Fail(1, "sortbench needs a GPU adapter".into()));
    }
    let mut rows = Vec::new();
    for lg in log2 {
        let len = 1usize << lg;
        let segs = (total / len).max(1);
        let mut radix = engine.bench_sort(segs, len, segloss::internals::SortAlgo::Radix, iters)?;
        let radix_ms = median(&mut radix);
        let bitonic_ms = if len <= 2048 {
            let mut b = engine.bench_sort(segs, len, segloss::internals::SortAlgo::Bitonic, iters)?;
            Some(median(&mut b))
        } else {
            None
        };
        rows.push((len, segs, radix_ms, bitonic_ms));
    }
    if as_json {
        let r: Vec<_> = rows
            .iter()
            .map(|(len, segs, r, b)| json!({"segment_len": len, "segments": segs, "radix_ms": r, "bitonic_ms": b}))
            .collect();
        outln!("{}", json!({"device": engine.info(), "iters": iters, "results": r}))?;
        return Ok(());
    }
    outln!("device: {} ({}, {})", engine.info().name, engine.info().backend, engine.info().device_type)?;
    outln!(
        "{:>10} {:>9} {:>11} {:>11} {:>12} {:>12}",
        "segment",
        "segments",
        "radix ms",
        "bitonic ms",
        "radix Mkey/s",
        "bitonic/radix"
    )?;
    for (len, segs, r, b) in rows {
        let keys = (len * segs) as f64;
        let (bs, ratio) = match b {
            Some(b) => (format!("{b:.2}"), format!("{:.2}", b / r)),
            None => ("-".into(), "-".into()),
        };
        outln!("{len:>10} {segs:>9} {r:>11.2} {bs:>11} {:>12.1} {ratio:>12}", keys / r / 1e3)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{median, median_profile};
    use segloss::{KernelTime, Profile};

    /// The median of an even count was the upper of the two middle values.
    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [1.0, 10.0]), 5.5);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [7.0]), 7.0);
        assert!(median(&mut []).is_nan());
    }

    fn profile(device_ms: f64, kernels: &[(&'static str, f64)]) -> Profile {
        let kernels = kernels
            .iter()
            .map(|&(kernel, ms)| KernelTime { kernel, workgroups: Some([1, 1, 1]), start_ms: ms, ms })
            .collect();
        Profile { kernels, device_ms, wall_ms: 2.0 * device_ms }
    }

    #[test]
    fn the_median_profile_of_an_even_count_averages_the_middle_two() {
        let ps = vec![
            profile(4.0, &[("a", 1.0), ("b", 3.0)]),
            profile(1.0, &[("a", 0.5), ("b", 0.5)]),
            profile(9.0, &[("a", 4.0), ("b", 5.0)]),
            profile(2.0, &[("a", 0.5), ("b", 1.5)]),
        ];
        let m = median_profile(ps).unwrap();
        assert_eq!((m.device_ms, m.wall_ms), (3.0, 6.0));
        let ms: Vec<f64> = m.kernels.iter().map(|k| k.ms).collect();
        assert_eq!(ms, vec![0.75, 2.25]);
        // other dispatches: the shorter one's, the span still the mean
        let m = median_profile(vec![profile(2.0, &[("a", 2.0)]), profile(4.0, &[("c", 1.0), ("d", 3.0)])]).unwrap();
        assert_eq!((m.device_ms, m.kernels.len(), m.kernels[0].kernel), (3.0, 1, "a"));
        assert_eq!(
            median_profile(vec![profile(5.0, &[]), profile(1.0, &[]), profile(3.0, &[])]).unwrap().device_ms,
            3.0
        );
        assert!(median_profile(Vec::new()).is_none());
    }
}
