//! `segloss eval --logits-dir A --target-dir B`: every pair of files with one stem, evaluated
//! through the engine's batches (many files per submission) while a reader thread loads the
//! next files, with a progress bar, a row per file, the means, and CSV or JSON.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde_json::json;

use segloss::metrics::{Counts, Metric, Running};
use segloss::{Engine, Error, Input, InputKind, LossExpr, Mode, Target};

use crate::{build_input, engine, read_npy, write_out, EvalArgs, Fail};

/// One stem: its logits file and its target file, either possibly missing.
struct Pair {
    stem: String,
    logits: Option<PathBuf>,
    target: Option<PathBuf>,
}

/// How PNG masks become targets.
#[derive(Clone)]
enum MaskMap {
    Grey,
    Binary,
    Palette(Vec<[u8; 3]>),
}

fn parse_palette(text: &str) -> Result<Vec<[u8; 3]>, Fail> {
    text.split(';')
        .map(|c| {
            let parts: Vec<&str> = c.split(',').map(str::trim).collect();
            let rgb: Option<Vec<u8>> = parts.iter().map(|p| p.parse::<u8>().ok()).collect();
            match rgb {
                Some(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
                _ => Err(Fail(2, format!("--palette: '{c}' is not R,G,B with each in 0..=255"))),
            }
        })
        .collect()
}

/// The files of `dir` with one of `exts` by stem; a stem with several (an .npy and a .png target)
/// keeps the one whose extension comes first in `exts`.
fn list_dir(dir: &Path, exts: &[&str]) -> Result<BTreeMap<String, PathBuf>, Fail> {
    let unreadable = |e: std::io::Error| Fail(2, format!("cannot read folder {}: {e}", dir.display()));
    let mut out: BTreeMap<String, (usize, PathBuf)> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        let rank = ext.and_then(|e| exts.iter().position(|x| *x == e));
        let (Some(rank), Some(stem)) = (rank, path.file_stem().and_then(|s| s.to_str())) else { continue };
        if path.is_file() && out.get(stem).is_none_or(|(r, _)| rank < *r) {
            out.insert(stem.to_string(), (rank, path));
        }
    }
    Ok(out.into_iter().map(|(stem, (_, path))| (stem, path)).collect())
}

/// The levels of a PNG whose samples the image decoder would change, read as they are stored;
/// `None` for other PNGs.
/// - A grey PNG of 1, 2 or 4 bits (which the decoder scales up to 8: 2 bits as 0, 85, 170, 255):
///   its samples, 0 ..= 2^bits - 1.
/// - An indexed (palette-mode) PNG whose palette is greys only, a grey mask stored with a palette
///   (as a PNG optimiser may write one): its greys, read as a grey PNG of its depth reads them.
/// - Any other indexed PNG is VOC's kind, whose index is the class (255 at the boundaries): its
///   indices, up to 2^bits - 1 (the colour the decoder would expand a pixel to means nothing there).
fn raw_levels(path: &Path) -> Result<Option<(Vec<i64>, Levels)>, String> {
    let unreadable = |e: &dyn std::fmt::Display| format!("cannot read PNG {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(|e| unreadable(&e))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(|e| unreadable(&e))?;
    let info = reader.info();
    let (color, depth, width) = (info.color_type, info.bit_depth, info.width);
    let low_grey = color == png::ColorType::Grayscale && (depth as u8) < 8;
    if color != png::ColorType::Indexed && !low_grey {
        return Ok(None);
    }
    let palette: Vec<[u8; 3]> =
        info.palette.as_deref().unwrap_or_default().chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
    let size = reader.output_buffer_size().ok_or_else(|| unreadable(&"the image is too large"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(|e| unreadable(&e))?;
    let bits = depth as usize;
    let mask = (1u16 << bits) - 1;
    let w = width as usize;
    let mut indices = Vec::with_capacity(w * frame.height as usize);
    for row in buf.chunks(frame.line_size).take(frame.height as usize) {
        for x in 0..w {
            let (byte, at) = (row[x * bits / 8], (x * bits) % 8);
            indices.push(usize::from((u16::from(byte) >> (8 - bits - at)) & mask));
        }
    }
    let max = i64::from(mask);
    if low_grey {
        return Ok(Some((indices.into_iter().map(|i| i as i64).collect(), Levels::Grey(max))));
    }
    // greys of a grey PNG of this depth: 8 bits, or of 1, 2 or 4 bits the multiples of
    // 255 / (2^bits - 1), which read (as that grey PNG's) as 0 ..= 2^bits - 1
    let step = 255 / max;
    let grey = !palette.is_empty()
        && palette.iter().all(|c| c[0] == c[1] && c[1] == c[2] && (bits == 8 || i64::from(c[0]) % step == 0));
    if grey {
        let level = |i: usize| palette.get(i).map(|c| i64::from(c[0]) / if bits == 8 { 1 } else { step }).ok_or(i);
        let levels = indices.into_iter().map(level).collect::<Result<Vec<i64>, usize>>();
        return match levels {
            Ok(l) => Ok(Some((l, Levels::Grey(if bits == 8 { 255 } else { max })))),
            Err(i) => {
                Err(format!("{}: palette index {i} past the palette's {} colours", path.display(), palette.len()))
            }
        };
    }
    Ok(Some((indices.into_iter().map(|i| i as i64).collect(), Levels::Indices(max))))
}

/// What the levels of a PNG mask are: grey levels up to this maximum, or palette indices.
#[derive(Clone, Copy)]
enum Levels {
    Grey(i64),
    Indices(i64),
}

/// A PNG mask as the target of `logits` (`[1, C, H, W]`): class indices when C > 1, else dense.
fn png_input(
    logits: &segloss_data::npy::Array,
    path: &Path,
    map: &MaskMap,
    mode: Option<&str>,
    ignore: Option<i64>,
) -> Result<Input<'static>, String> {
    crate::float_dtype(logits, "logits")?;
    let img = image::open(path).map_err(|e| format!("cannot read PNG {}: {e}", path.display()))?;
    let mut shape = logits.shape.clone();
    if shape.len() == 3 {
        shape.insert(0, 1);
    }
    if shape.len() != 4 || shape[0] != 1 {
        return Err(format!("logits shape {:?}: a PNG target needs [C, H, W] or [1, C, H, W] logits", logits.shape));
    }
    let (c, h, w) = (shape[1], shape[2], shape[3]);
    if (img.height() as usize, img.width() as usize) != (h, w) {
        return Err(format!("the mask is {}x{} but the logits are {h}x{w}", img.height(), img.width()));
    }
    // grey masks: the grey channel's own values, 8 or 16 bits (a 16-bit class index is not
    // scaled down to 8 bits), or 1, 2 or 4 bits as stored; indexed masks: the palette index
    // (VOC's class); colour masks need --palette (raw_levels)
    let raw = match map {
        MaskMap::Palette(_) => None,
        _ => raw_levels(path)?,
    };
    let grey = |binary: bool| -> Result<(Vec<i64>, i64), String> {
        use image::ColorType as T;
        match raw.clone() {
            Some((levels, Levels::Grey(max))) => return Ok((levels, max)),
            // (indices 0 and 1 of more than 1 bit would all fall at or below half the maximum)
            Some((_, Levels::Indices(max))) if binary && max > 1 => {
                return Err(format!(
                    "{} is an indexed mask with colours: its palette indices are the classes (0 and 1 for a binary \
                     target), so leave --mask binary out",
                    path.display()
                ))
            }
            Some((levels, Levels::Indices(max))) => return Ok((levels, max)),
            None => {}
        }
        match img.color() {
            T::L8 | T::La8 => Ok((img.to_luma8().pixels().map(|p| i64::from(p.0[0])).collect(), 255)),
            T::L16 | T::La16 => Ok((img.to_luma16().pixels().map(|p| i64::from(p.0[0])).collect(), 65535)),
            other => Err(format!(
                "{} is a colour mask ({other:?}): a grey mask needs one grey channel; for colour masks give --palette",
                path.display()
            )),
        }
    };
    let levels: Vec<i64> = match map {
        MaskMap::Grey => grey(false)?.0,
        MaskMap::Binary => {
            let (v, max) = grey(true)?;
            v.into_iter().map(|x| i64::from(x > max / 2)).collect()
        }
        MaskMap::Palette(colours) => {
            // the palette's colours are 8-bit: a mask of more bits would be scaled down to them
            // (a 16-bit grey mask of class indices 0, 1, 2 all black), so it is refused
            use image::ColorType as T;
            if !matches!(img.color(), T::L8 | T::La8 | T::Rgb8 | T::Rgba8) {
                return Err(format!(
                    "{} is a {:?} mask: --palette takes 8-bit masks (its colours are 8-bit RGB); for a grey mask \
                     of class indices leave --palette out",
                    path.display(),
                    img.color()
                ));
            }
            let rgb = img.to_rgb8();
            let mut v = Vec::with_capacity(h * w);
            for (i, p) in rgb.pixels().enumerate() {
                match colours.iter().position(|c| *c == p.0) {
                    Some(k) => v.push(k as i64),
                    None => {
                        return Err(format!(
                            "pixel {i} (row {}, column {}) has colour {:?}, which is not in --palette",
                            i / w,
                            i % w,
                            p.0
                        ))
                    }
                }
            }
            v
        }
    };
    let lv = logits.to_f32().map_err(|e| format!("logits: {e}"))?;
    let mode: Mode = match mode {
        Some(m) => m.parse().map_err(|e: Error| e.to_string())?,
        None if c == 1 => Mode::Binary,
        None => Mode::Multiclass,
    };
    let target = if mode == Mode::Multiclass {
        Target::Labels(Cow::Owned(levels))
    } else {
        if c != 1 {
            return Err(format!("a PNG mask is one channel; {mode} logits have C = {c}"));
        }
        Target::Dense(Cow::Owned(levels.iter().map(|&v| v as f32).collect()))
    };
    Input::new(Cow::Owned(lv), target, &shape, mode, ignore).map_err(|e| e.to_string())
}

fn load(pair: &Pair, a: &EvalArgs, map: &MaskMap) -> Result<Input<'static>, String> {
    let (lp, tp) = match (&pair.logits, &pair.target) {
        (Some(l), Some(t)) => (l, t),
        (None, _) => return Err("no logits file with this stem".into()),
        (_, None) => return Err("no target file with this stem".into()),
    };
    let logits = read_npy(lp, "logits").map_err(|f| f.1)?;
    let is_png = tp.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if is_png {
        return png_input(&logits, tp, map, a.mode.as_deref(), a.ignore_index);
    }
    let target = read_npy(tp, "target").map_err(|f| f.1)?;
    build_input(&logits, &target, a.mode.as_deref(), a.ignore_index, InputKind::Logits).map_err(|f| f.1)
}

/// Each loss's value or error, or the file's own error.
type FileResult = Result<Vec<Result<f64, String>>, String>;

/// One file's outcome.
struct Row {
    name: String,
    results: FileResult,
    /// The file's `--metric` entries (as `eval --json` prints them).
    metrics: Vec<serde_json::Value>,
}

/// Each `--metric` over the whole folder, and the per-file entries, from the counts of the files
/// (one counting submission per file and threshold) or their surface values.
struct FolderMetrics {
    runs: Vec<Result<Running, String>>,
    /// Per metric: the files that could not be added to the folder's value.
    left_out: Vec<Vec<String>>,
}

impl FolderMetrics {
    fn new(texts: &[String]) -> FolderMetrics {
        FolderMetrics {
            runs: texts.iter().map(|t| t.parse::<Metric>().map(Running::new).map_err(|e| e.to_string())).collect(),
            left_out: vec![Vec::new(); texts.len()],
        }
    }

    /// A file that could not be read: the folder's metrics cannot count it.
    fn missing(&mut self, name: &str) {
        for left_out in &mut self.left_out {
            left_out.push(name.to_string());
        }
    }

    /// The file's entries; its counts (or surface values) join the folder's.
    fn file(&mut self, engine: &Engine, texts: &[String], name: &str, input: &Input<'_>) -> Vec<serde_json::Value> {
        let mut by_threshold: Vec<(u64, Counts)> = Vec::new();
        texts
            .iter()
            .zip(self.runs.iter_mut())
            .zip(self.left_out.iter_mut())
            .map(|((t, run), left_out)| {
                let run = match run {
                    Ok(r) => r,
                    Err(e) => return crate::metric_entry(t, Err(Error::Input(e.clone()))),
                };
                let m = run.metric().clone();
                // the file's own run, then joined to the folder's: a file that cannot join (other
                // classes, another mode) keeps its own value and is named in the folder's entry
                let mut own = Running::new(m.clone());
                let r = if m.name.is_surface() {
                    own.update_blocking(engine, input)
                } else {
                    // metrics of one threshold share the file's counts
                    let key = m.logit_threshold().to_bits();
                    let counts = match by_threshold.iter().find(|(k, _)| *k == key) {
                        Some((_, c)) => Ok(c.clone()),
                        None => engine.counts_blocking(input, &m).inspect(|c| by_threshold.push((key, c.clone()))),
                    };
                    counts.and_then(|c| c.evaluate(&m).and_then(|v| own.add_counts(&c).map(|()| v)))
                };
                // (the reason goes with the file's name into the folder's error)
                let merged = match &r {
                    Ok(_) => run.merge(&own),
                    Err(e) => Err(e.clone()),
                };
                if let Err(e) = merged {
                    left_out.push(format!("{name} ({e})"));
                }
                crate::metric_entry(t, r)
            })
            .collect()
    }

    /// The folder's entries; a metric that could not take every file's images is an error
    /// naming them (its value would not be the folder's).
    fn folder(&self, texts: &[String]) -> Vec<serde_json::Value> {
        texts
            .iter()
            .zip(&self.runs)
            .zip(&self.left_out)
            .map(|((t, run), left_out)| match run {
                Ok(_) if !left_out.is_empty() => crate::metric_entry(
                    t,
                    Err(Error::Input(format!("not every file could be counted: {}", left_out.join(", ")))),
                ),
                Ok(r) => crate::metric_entry(t, r.compute()),
                Err(e) => crate::metric_entry(t, Err(Error::Input(e.clone()))),
            })
            .collect()
    }
}

pub(crate) fn eval_dirs(a: &EvalArgs) -> Result<(), Fail> {
    let (Some(ldir), Some(tdir)) = (&a.logits_dir, &a.target_dir) else {
        return Err(Fail(2, "give --logits and --target, or --logits-dir and --target-dir".into()));
    };
    let chunk = crate::at_most("--chunk", a.chunk, 4096)?;
    // a bad --mode is a usage error, as with single files (not an error row of every file)
    if let Some(m) = &a.mode {
        m.parse::<Mode>().map_err(|e| Fail(2, format!("--mode {m}: {e}")))?;
    }
    let map = match &a.palette {
        Some(p) => MaskMap::Palette(parse_palette(p)?),
        None if a.mask == "binary" => MaskMap::Binary,
        None => MaskMap::Grey,
    };
    let texts = &a.losses;
    let exprs: Vec<Result<LossExpr, String>> =
        texts.iter().map(|t| t.parse::<LossExpr>().map_err(|e| e.to_string())).collect();
    let logits = list_dir(ldir, &["npy"])?;
    let targets = list_dir(tdir, &["npy", "png"])?;
    let mut stems: Vec<&String> = logits.keys().chain(targets.keys()).collect();
    stems.sort();
    stems.dedup();
    if stems.is_empty() {
        return Err(Fail(2, format!("no .npy logits in {} and no targets in {}", ldir.display(), tdir.display())));
    }
    let pairs: Vec<Pair> = stems
        .iter()
        .map(|s| Pair { stem: s.to_string(), logits: logits.get(*s).cloned(), target: targets.get(*s).cloned() })
        .collect();
    let engine = engine()?;
    let bar = indicatif::ProgressBar::new(pairs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} files  {per_sec}  eta {eta}")
            .map_err(|e| Fail(1, e.to_string()))?,
    );

    // the reader loads files while the engine evaluates the previous ones
    let (tx, rx) = mpsc::sync_channel::<(usize, Result<Input<'static>, String>)>(2 * chunk);
    let mut folder = FolderMetrics::new(&a.metrics);
    let rows = std::thread::scope(|scope| -> Result<Vec<Row>, Fail> {
        let pairs = &pairs;
        let map = &map;
        scope.spawn(move || {
            for (i, p) in pairs.iter().enumerate() {
                if tx.send((i, load(p, a, map))).is_err() {
                    return;
                }
            }
        });
        let mut rows: Vec<Option<Row>> = (0..pairs.len()).map(|_| None).collect();
        let mut pending = Vec::with_capacity(chunk);
        let mut done = 0;
        while done < pairs.len() {
            // a chunk: what is loaded (at least one file, at most `chunk`)
            pending.clear();
            match rx.recv() {
                Ok(x) => pending.push(x),
                Err(_) => break,
            }
            while pending.len() < chunk {
                match rx.try_recv() {
                    Ok(x) => pending.push(x),
                    Err(_) => break,
                }
            }
            done += pending.len();
            for (i, row) in evaluate_chunk(&engine, &exprs, &pending) {
                rows[i] = Some(Row { name: pairs[i].stem.clone(), results: row, metrics: Vec::new() });
            }
            // the files' metrics, in file order (the reader sends the files in order)
            for (i, inp) in &pending {
                match (inp, rows.get_mut(*i)) {
                    (Ok(input), Some(Some(row))) => {
                        row.metrics = folder.file(&engine, &a.metrics, &pairs[*i].stem, input)
                    }
                    // (a file that could not be read is named in the folder's entries, whose
                    // values would otherwise be those of the other files alone)
                    (Err(_), _) => folder.missing(&pairs[*i].stem),
                    _ => {}
                }
            }
            bar.inc(pending.len() as u64);
        }
        Ok(rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| Row {
                    name: pairs[i].stem.clone(),
                    results: Err("not evaluated".into()),
                    metrics: Vec::new(),
                })
            })
            .collect())
    })?;
    bar.finish_and_clear();
    let folder_metrics = folder.folder(&a.metrics);
    print_rows(&engine, a, texts, &rows, &folder_metrics)?;
    // A file that fails is a failed run; a loss that cannot be computed is an error entry of its
    // file, as with single files (a bad --loss is not a failed run)
    let failed = rows.iter().filter(|r| r.results.is_err()).count();
    let loss_errors = rows.iter().filter_map(|r| r.results.as_ref().ok()).flatten().filter(|v| v.is_err()).count();
    let lost =
        if loss_errors > 0 { format!(", {loss_errors} loss value(s) could not be computed") } else { String::new() };
    if failed > 0 {
        return Err(Fail(1, format!("{failed} of {} file(s) failed{lost}", rows.len())));
    }
    if loss_errors > 0 {
        crate::note(&format!("{loss_errors} loss value(s) could not be computed (error entries)"));
    }
    Ok(())
}

/// One batch (one submission) for the loaded files of a chunk.
fn evaluate_chunk(
    engine: &Engine,
    exprs: &[Result<LossExpr, String>],
    loaded: &[(usize, Result<Input<'static>, String>)],
) -> Vec<(usize, FileResult)> {
    // views of the files' arrays: a batch keeps what it is given (an owned input would be copied
    // per loss), and the evaluations of one file's slices share its statistics pass
    let views: Vec<Option<Input<'_>>> = loaded.iter().map(|(_, inp)| inp.as_ref().ok()?.level(0).ok()).collect();
    let mut batch = engine.batch();
    // per file: per loss, the pending evaluation or the error found before any device work
    let mut queued = Vec::with_capacity(loaded.len());
    for ((i, _), view) in loaded.iter().zip(&views) {
        let Some(input) = view else {
            queued.push((*i, None));
            continue;
        };
        let per: Vec<Result<segloss::Pending, String>> = exprs
            .iter()
            .map(|e| match e {
                Ok(e) => batch.push(input, std::slice::from_ref(e), false).map_err(|e| e.to_string()),
                Err(msg) => Err(msg.clone()),
            })
            .collect();
        queued.push((*i, Some(per)));
    }
    // a failure of the submission itself reaches every pending evaluation as its error
    let _ = batch.flush_blocking();
    loaded
        .iter()
        .zip(queued)
        .map(|((_, inp), (i, per))| {
            let r = match (inp, per) {
                (Err(msg), _) => Err(msg.clone()),
                (Ok(_), None) => Err("not evaluated".into()),
                (Ok(_), Some(per)) => Ok(per
                    .into_iter()
                    .map(|p| p.and_then(|p| p.wait().map(|v| v[0].value).map_err(|e| e.to_string())))
                    .collect()),
            };
            (i, r)
        })
        .collect()
}

/// A file's row of the text table: its cells (losses, then metrics) and its errors.
type Cells = (Vec<String>, Vec<String>);

/// Per loss: the mean over the files that have its value, and how many do.
fn means(rows: &[Row], n: usize) -> Vec<(Option<f64>, usize)> {
    (0..n)
        .map(|k| {
            let vals: Vec<f64> = rows
                .iter()
                .filter_map(|r| r.results.as_ref().ok())
                .filter_map(|v| v[k].as_ref().ok().copied())
                .collect();
            let mean = (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64);
            (mean, vals.len())
        })
        .collect()
}

/// A loss's error after its text, unless the message starts with that text already (`ce: ...`).
fn named(text: &str, e: &impl std::fmt::Display) -> String {
    let e = e.to_string();
    if e.starts_with(&format!("{text}:")) {
        e
    } else {
        format!("{text}: {e}")
    }
}

/// A metric's error after its text, unless the message names the metric already (`bad metric
/// 'iou': ...`).
fn metric_named(text: &str, e: &str) -> String {
    if e.contains(&format!("'{text}'")) {
        e.to_string()
    } else {
        named(text, &e)
    }
}

/// A `--metric` entry (as `eval --json` prints it) as one cell: its value, or else its
/// per-class, per-image or matrix entries, `;` between entries and brackets around the rows of a
/// nested one (`0.5;0.25`, `[1;2];[3;4]`: no comma, for CSV); floats through `float`. The error
/// of an entry that has one, named by the metric.
fn metric_cell(text: &str, m: &serde_json::Value, float: &dyn Fn(f64) -> String) -> Result<String, String> {
    use serde_json::Value;
    fn flat(v: &Value, float: &dyn Fn(f64) -> String) -> String {
        match v {
            Value::Array(items) => items
                .iter()
                .map(|x| match x {
                    Value::Array(_) => format!("[{}]", flat(x, float)),
                    _ => flat(x, float),
                })
                .collect::<Vec<_>>()
                .join(";"),
            // counts stay integers; NaN and the infinities are strings already
            Value::Number(n) if n.is_f64() => n.as_f64().map(float).unwrap_or_default(),
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }
    if let Some(e) = m["error"].as_str() {
        return Err(metric_named(text, e));
    }
    ["value", "per_class", "per_image", "matrix"]
        .iter()
        .map(|k| &m[*k])
        .find(|v| !v.is_null())
        .map(|v| flat(v, float))
        .ok_or_else(|| metric_named(text, "no result"))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn print_rows(
    engine: &Engine,
    a: &EvalArgs,
    texts: &[String],
    rows: &[Row],
    folder: &[serde_json::Value],
) -> Result<(), Fail> {
    let means = means(rows, texts.len());
    if a.json {
        let files: Vec<_> = rows
            .iter()
            .map(|r| match &r.results {
                Ok(v) => {
                    let results: Vec<_> = texts
                        .iter()
                        .zip(v)
                        .map(|(t, x)| match x {
                            Ok(v) => json!({"loss": t, "value": v, "error": null}),
                            Err(e) => json!({"loss": t, "value": null, "error": e}),
                        })
                        .collect();
                    json!({"name": r.name, "results": results, "metrics": r.metrics, "error": null})
                }
                Err(e) => json!({"name": r.name, "results": [], "metrics": [], "error": e}),
            })
            .collect();
        let mean: Vec<_> =
            texts.iter().zip(&means).map(|(t, (m, k))| json!({"loss": t, "value": m, "files": k})).collect();
        return outln!("{}", json!({"device": engine.info(), "files": files, "mean": mean, "metrics": folder}));
    }
    if a.csv {
        // full precision, as the losses' values
        let float = |v: f64| v.to_string();
        let header: Vec<String> = texts.iter().chain(&a.metrics).map(|t| csv_field(t)).collect();
        outln!("name,{},error", header.join(","))?;
        for r in rows {
            let (mut vals, mut errs): (Vec<String>, Vec<String>) = match &r.results {
                Ok(v) => (
                    v.iter().map(|x| x.as_ref().map(|v| v.to_string()).unwrap_or_default()).collect(),
                    texts.iter().zip(v).filter_map(|(t, x)| x.as_ref().err().map(|e| named(t, e))).collect(),
                ),
                Err(e) => (vec![String::new(); texts.len()], vec![e.clone()]),
            };
            for (k, t) in a.metrics.iter().enumerate() {
                match r.metrics.get(k).map(|m| metric_cell(t, m, &float)) {
                    Some(Ok(c)) => vals.push(c),
                    Some(Err(e)) => {
                        vals.push(String::new());
                        errs.push(e);
                    }
                    None => vals.push(String::new()),
                }
            }
            outln!("{},{},{}", csv_field(&r.name), vals.join(","), csv_field(&errs.join("; ")))?;
        }
        // the means of the losses, then the folder's metrics (every file's counts together)
        let mut m: Vec<String> = means.iter().map(|(m, _)| m.map(|v| v.to_string()).unwrap_or_default()).collect();
        let mut errs = Vec::new();
        for (t, f) in a.metrics.iter().zip(folder) {
            match metric_cell(t, f, &float) {
                Ok(c) => m.push(c),
                Err(e) => {
                    m.push(String::new());
                    errs.push(e);
                }
            }
        }
        return outln!("mean,{},{}", m.join(","), csv_field(&errs.join("; ")));
    }
    outln!(
        "device: {} ({}, {})  {} files",
        engine.info().name,
        engine.info().backend,
        engine.info().device_type,
        rows.len()
    )?;
    // each file's cells (its losses, then its metrics) and errors, or its own error
    let float = |v: f64| format!("{v:.6}");
    let cells: Vec<Result<Cells, &String>> = rows
        .iter()
        .map(|r| {
            let v = r.results.as_ref()?;
            let (mut cells, mut errs) = (Vec::new(), Vec::new());
            for (x, t) in v.iter().zip(texts) {
                match x {
                    Ok(v) => cells.push(float(*v)),
                    Err(e) => {
                        cells.push("error".into());
                        errs.push(named(t, e));
                    }
                }
            }
            for (k, t) in a.metrics.iter().enumerate() {
                match r.metrics.get(k).map(|m| metric_cell(t, m, &float)) {
                    Some(Ok(c)) => cells.push(c),
                    Some(Err(e)) => {
                        cells.push("error".into());
                        errs.push(e);
                    }
                    None => cells.push("-".into()),
                }
            }
            Ok((cells, errs))
        })
        .collect();
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).clamp(4, 40);
    let heads: Vec<&String> = texts.iter().chain(&a.metrics).collect();
    let cols: Vec<usize> = heads
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let widest = cells.iter().filter_map(|c| c.as_ref().ok()).map(|(c, _)| c[k].len()).max().unwrap_or(0);
            t.len().max(12).max(widest)
        })
        .collect();
    let mut head = format!("{:<width$}", "file");
    for (t, w) in heads.iter().zip(&cols) {
        head += &format!("  {t:>w$}");
    }
    outln!("{head}")?;
    for (r, c) in rows.iter().zip(&cells) {
        let mut line = format!("{:<width$}", r.name);
        match c {
            Ok((cells, errs)) => {
                for (x, w) in cells.iter().zip(&cols) {
                    line += &format!("  {x:>w$}");
                }
                if !errs.is_empty() {
                    line += &format!("  ({})", errs.join("; "));
                }
            }
            Err(e) => line += &format!("  error: {e}"),
        }
        outln!("{line}")?;
    }
    // the losses' means (a metric's folder value is no mean: on its own line below)
    let mut line = format!("{:<width$}", "mean");
    for ((m, _), w) in means.iter().zip(&cols) {
        match m {
            Some(v) => line += &format!("  {v:>w$.6}"),
            None => line += &format!("  {:>w$}", "-"),
        }
    }
    outln!("{line}")?;
    // the folder's metrics: every file's counts together, as one batch
    for m in folder {
        let name = m["metric"].as_str().unwrap_or("");
        match m["error"].as_str() {
            Some(e) => outln!("folder {name}: error: {e}")?,
            None => {
                let shown: Vec<String> = ["value", "per_class", "per_image", "matrix"]
                    .iter()
                    .filter(|k| !m[**k].is_null())
                    .map(|k| format!("{k} {}", m[*k]))
                    .collect();
                outln!("folder {name}: {}", shown.join("  "))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::named;

    #[test]
    fn a_loss_error_names_its_text_once() {
        let e = segloss::Error::LossMode { loss: "ce".into(), msg: "needs multiclass mode".into() };
        assert_eq!(named("ce", &e), "ce: needs multiclass mode");
        assert_eq!(named("0.5*ce+dice", &e), "0.5*ce+dice: ce: needs multiclass mode");
        assert_eq!(named("cel", &"bad"), "cel: bad");
    }
}
