//! Data parallelism across processes with MPI (`mpirun -np K segloss-mpi`): every rank holds the
//! same synthetic batches (as if each had loaded its shard), evaluates its own images, and the
//! ranks all-reduce the statistics; each rank then has the whole batch's values and computes its
//! gradient of the whole batch's loss. Rank 0 gathers the gradients and holds the values and the
//! gradient to a single process evaluating the whole batch; exit code 0 when they agree.
//!
//! The all-reduce is a sum of `Statistics::placed` tables: each rank writes its images' rows into
//! a zero table of the whole batch, and the sum of the tables is the whole batch's statistics. A
//! rank with no image of a batch (more ranks than images) adds `Statistics::zeros`.
//!
//! No rank leaves the others waiting in a collective: a rank that cannot open an adapter says
//! so and every rank exits with code 2 together; an error or a panic on one rank aborts the job.

use std::process::ExitCode;

use mpi::collective::SystemOperation;
use mpi::traits::*;
use segloss::{Engine, Error, Input, LossExpr, Mode, Statistics};

/// One batch, spread over the ranks: the largest differences from the single process, or an error.
fn run<C: Communicator>(world: &C, engine: &Engine, whole: &Input<'_>, texts: &[&str]) -> Result<(f64, f64), Error> {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let exprs: Vec<LossExpr> = texts.iter().map(|t| t.parse()).collect::<Result<_, _>>()?;
    let n = whole.batch();
    // this rank's images (balanced: the first ranks take one more)
    let (q, r) = (n / size, n % size);
    let first = rank * q + rank.min(r);
    let count = q + usize::from(rank < r);
    // more ranks than images: this one has none, and takes part with zeros
    let part = if count > 0 { Some(whole.images(first, first + count)?) } else { None };

    // 1. local statistics, placed in a table of the whole batch, summed over the ranks
    let local = match &part {
        Some(p) => engine.statistics_blocking(p, &exprs)?.placed(first, n)?,
        None => Statistics::zeros(whole.mode(), whole.kind(), whole.classes(), n, &exprs)?,
    };
    let mut global = local.clone();
    world.all_reduce_into(local.as_slice(), global.as_mut_slice(), SystemOperation::sum());

    // 2. the whole batch's values, and this rank's gradient of them
    let values = global.finish()?;
    let grads = match &part {
        Some(p) => engine.gradient_blocking(p, &global, first, &exprs)?,
        None => Vec::new(),
    };

    // 3. rank 0 gathers the gradients (in rank order: the batch's order) and compares with one
    // process evaluating the whole batch
    let root = world.process_at_rank(0);
    let numel_per_image = whole.logits().len() / n;
    let (mut dv, mut dg) = (0f64, 0f64);
    for (i, e) in exprs.iter().enumerate() {
        let mine = grads.get(i).and_then(|g| g.grad.clone()).unwrap_or_default();
        // every rank sends the same length: pad to the largest part
        let longest = (q + usize::from(r > 0)) * numel_per_image;
        let mut padded = mine.clone();
        padded.resize(longest, 0.0);
        if rank == 0 {
            let mut all = vec![0f32; longest * size];
            root.gather_into_root(&padded[..], &mut all[..]);
            let mut joined = Vec::with_capacity(whole.logits().len());
            for k in 0..size {
                let len = (q + usize::from(k < r)) * numel_per_image;
                joined.extend_from_slice(&all[k * longest..k * longest + len]);
            }
            let single = engine.evaluate_blocking(whole, std::slice::from_ref(e), true)?.remove(0);
            let sg = single.grad.unwrap_or_default();
            let scale = sg.iter().fold(0f64, |m, &g| m.max(f64::from(g).abs())).max(1e-30);
            let d = joined.iter().zip(&sg).fold(0f64, |m, (&a, &b)| m.max(f64::from(a - b).abs()));
            let rel_v = (values[i].value - single.value).abs() / single.value.abs().max(1e-12);
            println!(
                "{e:<36} value {:.7} (one process {:.7}), gradient max |diff| {d:.2e} of max |g| {scale:.2e}",
                values[i].value, single.value
            );
            dv = dv.max(rel_v);
            dg = dg.max(d / scale);
        } else {
            root.gather_into(&padded[..]);
        }
    }
    Ok((dv, dg))
}

fn main() -> ExitCode {
    let Some(universe) = mpi::initialize() else {
        eprintln!("MPI could not be initialized");
        return ExitCode::from(2);
    };
    let world = universe.world();
    // a panicking rank would leave the others waiting in a collective: it ends the whole job
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        mpi::topology::SimpleCommunicator::world().abort(101);
    }));
    let engine = Engine::gpu_blocking();
    if let Err(e) = &engine {
        eprintln!("rank {}: {e} (gradients from statistics need a GPU adapter)", world.rank());
    }
    // every rank learns whether all of them have an adapter, and they go on or stop together
    let mut all_ok = 0i32;
    world.all_reduce_into(&i32::from(engine.is_ok()), &mut all_ok, SystemOperation::min());
    let engine = match engine {
        Ok(e) if all_ok == 1 => e,
        _ => return ExitCode::from(2),
    };
    if world.rank() == 0 {
        println!("{} ranks, each on {} ({})", world.size(), engine.info().name, engine.info().backend);
    }
    let (roads, scene) = match (segloss_data::synth::roads(6, 48, 40, 7), segloss_data::synth::scene(5, 4, 24, 20, 11))
    {
        (Ok(r), Ok(s)) => (r, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("rank {}: {e}", world.rank());
            world.abort(3)
        }
    };
    let mut worst = (0f64, 0f64);
    let batches: Vec<(Result<Input<'_>, Error>, Vec<&str>)> = vec![
        (
            Input::dense(&roads.logits, &roads.target, &roads.shape, Mode::Binary),
            vec!["dice+bce", "dice@monai+focal@monai", "tversky:alpha=0.3,beta=0.7", "bce+lovasz:per_image=true"],
        ),
        (
            Input::labels(&scene.logits, &scene.labels, &scene.shape, Some(255)),
            vec!["0.8*ce+0.2*dice", "gdice@monai", "jaccard@keras", "ce+lovasz:per_image=true"],
        ),
    ];
    for (input, texts) in &batches {
        let r = input.as_ref().map_err(Clone::clone).and_then(|i| run(&world, &engine, i, texts));
        match r {
            Ok((dv, dg)) => worst = (worst.0.max(dv), worst.1.max(dg)),
            Err(e) => {
                eprintln!("rank {}: {e}", world.rank());
                world.abort(3);
            }
        }
    }
    if world.rank() == 0 {
        println!("largest relative differences from one process: value {:.2e}, gradient {:.2e}", worst.0, worst.1);
        if worst.0 > 1e-4 || worst.1 > 1e-4 {
            eprintln!("the ranks' results differ from one process");
            return ExitCode::from(1);
        }
        println!("ok: the ranks together give the single-process values and gradients");
    }
    ExitCode::SUCCESS
}
