//! Batches of evaluations: many inputs (host slices or the caller's buffers, of any shapes),
//! each with its own expressions and gradient outputs, queued and then run together in one
//! submission with one host wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::channel::oneshot;

use crate::engine::{
    check_hard_labels, decode_each, reference_evaluation, target_words, words, Backend, BufferInput, BufferSlice, Dest,
    Engine, Evaluation, GradOut, Source,
};
use crate::error::Error;
use crate::expr::LossExpr;
use crate::gpu::record::Recording;
use crate::gpu::ALIGN;
use crate::input::Input;

type Reply = Result<Vec<Evaluation>, Error>;

/// Evaluations queued on one engine, run together by [`Batch::flush`]: one submission and one
/// host wait for all of them, whatever their shapes, modes and expressions. Each
/// [`Batch::push`] gives a [`Pending`] future of that evaluation's results; an input's bad
/// values, a limit it exceeds, or a buffer the device refuses (destroyed, still mapped, of
/// another device) fail its own future and no other.
///
/// Evaluations of the same input (the same host slices, or the same buffer slices) share one
/// statistics pass, as the expressions of one [`Engine::evaluate`] call do.
///
/// ```no_run
/// # fn main() -> Result<(), segloss::Error> {
/// use segloss::{Engine, Input, LossExpr, Mode};
/// let engine = Engine::new_blocking()?;
/// let dice: LossExpr = "dice".parse()?;
/// let bce: LossExpr = "bce".parse()?;
/// let images: Vec<(Vec<f32>, Vec<f32>)> =
///     (0..8).map(|i| (vec![0.1 * i as f32; 64 * 64], vec![(i % 2) as f32; 64 * 64])).collect();
/// let mut batch = engine.batch();
/// let mut pending = Vec::new();
/// for (logits, target) in &images {
///     let input = Input::dense(logits, target, &[1, 1, 64, 64], Mode::Binary)?;
///     pending.push(batch.push(&input, &[dice.clone(), bce.clone()], true)?);
/// }
/// batch.flush_blocking()?; // one submission, one wait
/// for p in pending {
///     let out = p.wait()?;
///     println!("dice {} bce {}", out[0].value, out[1].value);
/// }
/// # Ok(()) }
/// ```
pub struct Batch<'e, 'a> {
    engine: &'e Engine,
    items: Vec<Item<'a>>,
    /// Set when the flush begins: a [`Pending::wait`] before it would wait forever.
    flushed: Arc<AtomicBool>,
}

enum ItemSrc<'a> {
    Host(Input<'a>),
    Buffers(BufferInput<'a>),
}

struct Item<'a> {
    src: ItemSrc<'a>,
    exprs: Vec<LossExpr>,
    grads: Vec<GradOut<'a>>,
    tx: Option<oneshot::Sender<Reply>>,
}

/// The results of one evaluation queued in a [`Batch`]: ready once the batch has been flushed.
/// A batch dropped without a flush, or whose flush future was dropped before it completed,
/// fails its futures with [`Error::Input`] (saying which).
pub struct Pending {
    rx: oneshot::Receiver<Reply>,
    /// Whether the batch's flush has begun (read by the blocking wait, native only).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    flushed: Arc<AtomicBool>,
}

impl Future for Pending {
    type Output = Reply;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        let flushed = self.flushed.clone();
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                // (read once the sender is gone: a flush begun meanwhile counts)
                Err(Error::Input(if flushed.load(Ordering::Acquire) {
                    // (a flush future dropped before it completed)
                    "the batch's flush was dropped before it completed: its submission may have run, and \
                     gradients into the caller's buffers may have been written"
                        .into()
                } else {
                    "the batch was dropped before it was flushed".into()
                }))
            })
        })
    }
}

impl Pending {
    /// Whether the batch's flush has begun: [`Pending::wait`] then blocks until the results are
    /// there rather than returning an error (and giving up the `Pending`, whose results would
    /// then go nowhere).
    pub fn is_flushed(&self) -> bool {
        self.flushed.load(Ordering::Acquire)
    }

    /// Blocks until the results are there (native only): after [`Batch::flush_blocking`] they
    /// are, and this returns at once. Before the batch's flush has begun it returns
    /// [`Error::Input`] instead of waiting for ever, and the `Pending` is gone with its results:
    /// check [`Pending::is_flushed`] first where that can happen, or await the `Pending`, a
    /// future, to wait for a flush that runs elsewhere. A flush future polled on this thread and
    /// then left pending (neither completed nor dropped) cannot complete while this blocks: drive
    /// it to its end first.
    ///
    /// ```
    /// # fn main() -> Result<(), segloss::Error> {
    /// use segloss::{Engine, Input, Mode};
    /// let engine = Engine::cpu(None);
    /// let input = Input::dense(&[0.5f32, -1.0], &[1.0, 0.0], &[1, 1, 2], Mode::Binary)?;
    /// let mut batch = engine.batch();
    /// let early = batch.push(&input, &["bce".parse()?], false)?;
    /// assert!(!early.is_flushed());
    /// assert!(early.wait().is_err()); // not flushed yet: an error, and its results are lost
    /// let pending = batch.push(&input, &["bce".parse()?], false)?;
    /// batch.flush_blocking()?;
    /// assert!(pending.is_flushed());
    /// assert!(pending.wait()?[0].value > 0.0);
    /// # Ok(()) }
    /// ```
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(self) -> Reply {
        if !self.is_flushed() {
            return Err(Error::Input(
                "Pending::wait before its batch was flushed would wait for ever: flush the batch first".into(),
            ));
        }
        futures::executor::block_on(self)
    }
}

impl Engine {
    /// An empty batch of evaluations on this engine.
    pub fn batch(&self) -> Batch<'_, '_> {
        Batch { engine: self, items: Vec::new(), flushed: Arc::new(AtomicBool::new(false)) }
    }
}

/// Whether two host inputs are the same slices with the same meaning.
fn same_host(a: &Input<'_>, b: &Input<'_>) -> bool {
    use crate::input::Target;
    let target = match (a.target(), b.target()) {
        (Target::Dense(x), Target::Dense(y)) => std::ptr::eq(x.as_ref(), y.as_ref()),
        (Target::Labels(x), Target::Labels(y)) => std::ptr::eq(x.as_ref(), y.as_ref()),
        _ => false,
    };
    target
        && std::ptr::eq(a.logits(), b.logits())
        && a.shape() == b.shape()
        && a.mode() == b.mode()
        && a.ignore_index() == b.ignore_index()
        && a.kind() == b.kind()
}

pub(crate) fn same_slice(a: &BufferSlice<'_>, b: &BufferSlice<'_>) -> bool {
    a.buffer == b.buffer && a.offset == b.offset && a.len == b.len
}

/// The index of gradient slice `sl` among the distinct slices `dests`, added when new; a slice
/// that overlaps another without being the same slice is an error (expressions may share one
/// slice, written or added to in order, but not parts of one).
pub(crate) fn distinct_slice<'a>(dests: &mut Vec<BufferSlice<'a>>, sl: &BufferSlice<'a>) -> Result<usize, Error> {
    if let Some(k) = dests.iter().position(|d| same_slice(d, sl)) {
        return Ok(k);
    }
    if dests.iter().any(|d| crate::engine::overlaps(d, sl)) {
        return Err(Error::Buffer("two gradient slices overlap without being the same slice".into()));
    }
    dests.push(*sl);
    Ok(dests.len() - 1)
}

fn same_buffers(a: &BufferInput<'_>, b: &BufferInput<'_>) -> bool {
    use crate::engine::TargetBuffer as T;
    let target = match (a.target_buffer(), b.target_buffer()) {
        (T::ClassU32(x), T::ClassU32(y)) | (T::ClassI32(x), T::ClassI32(y)) | (T::Dense(x), T::Dense(y)) => {
            same_slice(x, y)
        }
        _ => false,
    };
    target
        && same_slice(a.logits_slice(), b.logits_slice())
        && a.shape() == b.shape()
        && a.mode() == b.mode()
        && a.ignore_index() == b.ignore_index()
        && a.kind() == b.kind()
}

impl<'a> ItemSrc<'a> {
    fn same(&self, other: &ItemSrc<'_>) -> bool {
        match (self, other) {
            (ItemSrc::Host(a), ItemSrc::Host(b)) => same_host(a, b),
            (ItemSrc::Buffers(a), ItemSrc::Buffers(b)) => same_buffers(a, b),
            _ => false,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            ItemSrc::Host(i) => i.shape(),
            ItemSrc::Buffers(b) => b.shape(),
        }
    }
}

/// Evaluations of one input: the items' expressions one after the other.
struct Group {
    items: Vec<usize>,
    /// A buffer input evaluated in pieces (`BufferInput::past_limit` for its items' requests,
    /// decided once: the items' checks follow it)
    pieces: bool,
}

impl<'e, 'a> Batch<'e, 'a> {
    /// Queues the evaluation of `exprs` on a host input, with gradients read back when `grads`.
    /// Expressions that do not fit the input's mode or classes are refused here.
    pub fn push(&mut self, input: &Input<'a>, exprs: &[LossExpr], grads: bool) -> Result<Pending, Error> {
        if input.levels() > 1 || exprs.iter().any(|e| e.deep.is_some()) {
            return Err(Error::Unsupported(
                "deep supervision (deep(...), several levels) is evaluated by Engine::evaluate, one batch of its own"
                    .into(),
            ));
        }
        self.push_level(input, exprs, grads)
    }

    /// [`Batch::push`] of one level of a deep-supervision evaluation (plain expressions).
    pub(crate) fn push_level(&mut self, input: &Input<'a>, exprs: &[LossExpr], grads: bool) -> Result<Pending, Error> {
        for e in exprs {
            e.check_input(input.mode(), input.classes(), input.kind())?;
        }
        let g = if grads { GradOut::Host } else { GradOut::Skip };
        Ok(self.queue(ItemSrc::Host(input.clone()), exprs, vec![g; exprs.len()]))
    }

    /// Queues the evaluation of `exprs` on the caller's buffers, each gradient going where
    /// `grads` says (one entry per expression), as [`Engine::evaluate_buffers`] does.
    pub fn push_buffers(
        &mut self,
        input: &BufferInput<'a>,
        exprs: &[LossExpr],
        grads: &[GradOut<'a>],
    ) -> Result<Pending, Error> {
        if grads.len() != exprs.len() {
            return Err(Error::Input(format!("{} gradient outputs for {} expressions", grads.len(), exprs.len())));
        }
        if self.engine.is_cpu() {
            return Err(Error::Unsupported("buffer inputs need a GPU engine, not the CPU reference".into()));
        }
        for e in exprs {
            e.check_input(input.mode(), input.shape()[1], input.kind())?;
            if e.deep.is_some() {
                return Err(Error::Unsupported("deep(...) needs an Input with levels (Engine::evaluate)".into()));
            }
        }
        Ok(self.queue(ItemSrc::Buffers(input.clone()), exprs, grads.to_vec()))
    }

    fn queue(&mut self, src: ItemSrc<'a>, exprs: &[LossExpr], grads: Vec<GradOut<'a>>) -> Pending {
        let (tx, rx) = oneshot::channel();
        self.items.push(Item { src, exprs: exprs.to_vec(), grads, tx: Some(tx) });
        Pending { rx, flushed: self.flushed.clone() }
    }

    /// Evaluations queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Records every queued evaluation into one submission, waits once, and completes every
    /// [`Pending`]. An evaluation's own failure (bad values, a device limit) goes to its future.
    /// Where the submission itself fails (it then ran nothing), each of its evaluations is made
    /// again in a submission of its own, so that a buffer the device refused fails its own
    /// evaluation only; a submission of one evaluation that fails gives its error to that future
    /// and returns it here.
    pub async fn flush(self) -> Result<(), Error> {
        let Batch { engine, mut items, flushed } = self;
        flushed.store(true, Ordering::Release);
        let mut txs: Vec<Option<oneshot::Sender<Reply>>> = items.iter_mut().map(|it| it.tx.take()).collect();
        if items.is_empty() {
            return Ok(());
        }
        let gpu = match &engine.backend {
            Backend::Cpu => {
                for (it, tx) in items.iter().zip(txs) {
                    let Some(tx) = tx else { continue };
                    let ItemSrc::Host(input) = &it.src else {
                        let _ = tx.send(Err(Error::Unsupported("buffer inputs need a GPU engine".into())));
                        continue;
                    };
                    let r = it
                        .exprs
                        .iter()
                        .zip(&it.grads)
                        .enumerate()
                        .map(|(i, (e, g))| {
                            reference_evaluation(input, e, matches!(g, GradOut::Host))
                                .map_err(|err| crate::engine::of_expression(i, err))
                        })
                        .collect();
                    let _ = tx.send(r);
                }
                return Ok(());
            }
            Backend::Gpu(g) => g.clone(),
        };

        // evaluations of one input share its statistics pass; on a buffer input, those whose
        // requests the device checks alike (its checks flag the input for every evaluation of
        // the pass: a Lovász loss's hard labels would fail a Dice loss beside it)
        let checks = |it: &Item<'_>| match &it.src {
            ItemSrc::Buffers(b) => crate::engine::buffer_validation(b, &it.exprs),
            ItemSrc::Host(_) => 0,
        };
        let mut groups: Vec<Group> = Vec::new();
        for (i, it) in items.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|g| items[g.items[0]].src.same(&it.src) && checks(&items[g.items[0]]) == checks(it))
            {
                Some(g) => g.items.push(i),
                None => groups.push(Group { items: vec![i], pieces: false }),
            }
        }
        // each evaluation's own checks, so that a request its input cannot serve fails that
        // evaluation alone, not the others on the same input (a Lovász loss on soft labels
        // beside a Dice loss, a gradient slice of the wrong length beside a good one)
        for g in &mut groups {
            // (first_soft reads the whole target: once per input, where a Lovász loss needs it;
            // the -inf checks run only on an input with -inf)
            let mut hard = None;
            // (a buffer input is bound whole, or in pieces, for the requests of all its items; its
            // items' gradient slices, bound whole, are distinct or the same slice)
            g.pieces = match &items[g.items[0]].src {
                ItemSrc::Buffers(b) => {
                    let exprs = group_exprs(&items, g);
                    b.past_limit(&gpu, &exprs)
                }
                ItemSrc::Host(_) => false,
            };
            let pieces = g.pieces;
            let mut group_seen: Vec<BufferSlice<'_>> = Vec::new();
            g.items.retain(|&i| {
                let it = &items[i];
                let checked = match &it.src {
                    ItemSrc::Host(input) => {
                        check_hard_labels(&it.exprs, || *hard.get_or_insert_with(|| input.first_soft()), input.shape())
                            .and_then(|_| crate::input::check_neg_inf(input, &it.exprs))
                    }
                    ItemSrc::Buffers(b) => {
                        // (in pieces each evaluation runs on its own: only its own slices meet)
                        let mut seen = if pieces { Vec::new() } else { group_seen.clone() };
                        let r = it.grads.iter().try_for_each(|g| match g {
                            GradOut::Write(sl) | GradOut::Add(sl) => {
                                crate::engine::check_item_grad(&gpu, b, sl, matches!(g, GradOut::Add(_)), pieces)?;
                                distinct_slice(&mut seen, sl).map(drop)
                            }
                            GradOut::Skip | GradOut::Host => Ok(()),
                        });
                        if r.is_ok() && !pieces {
                            group_seen = seen;
                        }
                        r
                    }
                };
                match checked {
                    Ok(()) => true,
                    Err(e) => {
                        deliver(&mut txs, i, Err(e));
                        false
                    }
                }
            });
        }
        groups.retain(|g| !g.items.is_empty());
        let mut failed: Vec<Option<Error>> = vec![None; groups.len()];
        let sets = coalesce(&items, &groups, &failed, &gpu.limits, crate::stats::binding_limit(&gpu));

        // host inputs: each set's logits one after the other, then its target words, packed into
        // upload buffers at aligned offsets; a new buffer when one would pass the size limit
        let max_buffer = gpu.limits.max_buffer_size;
        // bytes of each upload buffer, and what goes where: (buffer, offset, group, logits?)
        let mut packs: Vec<u64> = Vec::new();
        let mut writes: Vec<(usize, u64, usize, bool)> = Vec::new();
        // per set: (logits buffer, offset, target buffer, offset, target words of one input)
        let mut placed: Vec<Option<Placed>> = vec![None; sets.len()];
        // large inputs (alone in their set): buffers of their own, written at creation
        // (dropped under the device lock, on every path out: destroying a buffer is a GL call)
        let mut own = gpu.held(Vec::<wgpu::Buffer>::new());
        // groups of inputs past the binding limit
        let mut split: Vec<usize> = Vec::new();
        for (si, set) in sets.iter().enumerate() {
            let first = match &items[groups[set[0]].items[0]].src {
                ItemSrc::Host(first) => first,
                ItemSrc::Buffers(_) => {
                    // (as decided when its items were checked)
                    if groups[set[0]].pieces {
                        split.extend(set.iter().copied().filter(|&gi| failed[gi].is_none()));
                    }
                    continue;
                }
            };
            let per_l = (first.logits().len() * 4) as u64;
            let nwords = first.target_len();
            let per_t = (nwords * 4) as u64;
            let k = set.len() as u64;
            let (lbytes, tbytes) = (per_l * k, per_t * k);
            let exprs = group_exprs(&items, &groups[set[0]]);
            let mut shape = first.shape().to_vec();
            shape[0] *= set.len();
            if crate::stats::pieces_reason(&gpu, &shape, first.mode(), first.kind(), &exprs, tbytes).is_some() {
                // a single input (sets of several stay within the limit): evaluated in pieces
                // after this submission, unless it has already failed
                split.extend(set.iter().copied().filter(|&gi| failed[gi].is_none()));
                continue;
            }
            if per_l >= COALESCE_BYTES {
                let usage = wgpu::BufferUsages::STORAGE;
                let made = gpu
                    .buffer_init("segloss batch logits", bytemuck::cast_slice(first.logits()), usage)
                    .and_then(|l| {
                        Ok((
                            l,
                            gpu.buffer_init("segloss batch target", bytemuck::cast_slice(&target_words(first)), usage)?,
                        ))
                    });
                match made {
                    Ok((logits, target)) => {
                        own.extend([logits, target]);
                        placed[si] = Some((Up::Own(own.len() - 2), 0, Up::Own(own.len() - 1), 0, nwords));
                    }
                    Err(e) => set.iter().for_each(|&gi| failed[gi] = Some(e.clone())),
                }
                continue;
            }
            let need = lbytes.next_multiple_of(ALIGN) + tbytes;
            if packs.last().is_none_or(|&p| p.next_multiple_of(ALIGN) + need > max_buffer) {
                packs.push(0);
            }
            let pi = packs.len() - 1;
            let lo = packs[pi].next_multiple_of(ALIGN);
            let to = (lo + lbytes).next_multiple_of(ALIGN);
            for (j, &gi) in set.iter().enumerate() {
                writes.push((pi, lo + j as u64 * per_l, gi, true));
                writes.push((pi, to + j as u64 * per_t, gi, false));
            }
            packs[pi] = to + tbytes;
            placed[si] = Some((Up::Pack(pi), lo, Up::Pack(pi), to, nwords));
        }
        // upload buffers from the pool (sizes rounded up to a power of two, so that the next
        // flush of a similar batch reuses them rather than faulting in fresh memory), written
        // through the queue, back to the pool when the submission has completed
        let upload_usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let uploaded = gpu.allocating(|| {
            let uploads: Vec<wgpu::Buffer> = packs
                .iter()
                .map(|&b| {
                    let size = b.max(ALIGN).next_power_of_two().min(max_buffer);
                    gpu.pool.take(&gpu.device, size, upload_usage, "segloss batch inputs")
                })
                .collect();
            for &(pi, off, gi, is_logits) in &writes {
                let ItemSrc::Host(input) = &items[groups[gi].items[0]].src else { continue };
                if is_logits {
                    gpu.queue.write_buffer(&uploads[pi], off, bytemuck::cast_slice(input.logits()));
                } else {
                    gpu.queue.write_buffer(&uploads[pi], off, bytemuck::cast_slice(&target_words(input)));
                }
            }
            uploads
        });
        let uploads = match uploaded {
            Ok(u) => gpu.held(u),
            Err(e) => {
                // every set packed into the upload buffers fails with the allocation
                for (set, p) in sets.iter().zip(&placed) {
                    if matches!(p, Some((Up::Pack(_), ..))) {
                        set.iter().for_each(|&gi| failed[gi] = Some(e.clone()));
                    }
                }
                gpu.held(Vec::new())
            }
        };

        // one recording: each set's passes (a set of inputs of one shape and one list of
        // expressions shares them), then its status words and each evaluation's values copied
        // into one staging buffer
        let mut rec = Recording::new(&gpu.limits);
        // (its items, their expressions, where their results are, index of its set's status in
        // `statuses`)
        let mut recorded: Vec<(Vec<usize>, Vec<LossExpr>, _, usize)> = Vec::new();
        // groups whose set could not be recorded together: each item on its own, afterwards
        let mut alone: Vec<usize> = Vec::new();
        let mut statuses = Vec::new();
        for (si, set) in sets.iter().enumerate() {
            let g0 = &groups[set[0]];
            if set.iter().any(|&gi| failed[gi].is_some() || split.contains(&gi)) {
                continue;
            }
            let exprs = group_exprs(&items, g0);
            let grads: Vec<Dest<'_>> =
                g0.items.iter().flat_map(|&i| items[i].grads.iter().map(|&g| Dest::Out(g))).collect();
            let src = match &items[g0.items[0]].src {
                ItemSrc::Host(input) => {
                    let Some((lb, lo, tb, to, nwords)) = placed[si] else { continue };
                    let buf = |u: Up| match u {
                        Up::Pack(i) => &uploads[i],
                        Up::Own(i) => &own[i],
                    };
                    let k = set.len() as u64;
                    Source::Host {
                        input,
                        logits: BufferSlice::new(buf(lb), lo, input.logits().len() as u64 * k),
                        target: BufferSlice::new(buf(tb), to, nwords as u64 * k),
                        groups: set.len(),
                        // (a coalesced batch of several takes no fused gradient)
                        counted: (set.len() == 1).then(|| crate::engine::counted(input)),
                    }
                }
                ItemSrc::Buffers(b) => Source::Buffers(b),
            };
            let mark = rec.mark();
            match engine.record(&gpu, &mut rec, &src, &exprs, &grads, false) {
                Ok(rs) => {
                    statuses.push(rs[0].status);
                    for (&gi, r) in set.iter().zip(rs) {
                        let exprs = group_exprs(&items, &groups[gi]);
                        recorded.push((groups[gi].items.clone(), exprs, r, statuses.len() - 1));
                    }
                }
                Err(_) if set.len() > 1 || g0.items.len() > 1 => {
                    // a limit of evaluations together (a statistics pass over all their
                    // expressions, a coalesced batch of inputs) need not be one of each alone:
                    // each is evaluated on its own after this submission, failing alone
                    rec.rollback(mark);
                    alone.extend(set.iter().copied());
                }
                Err(e) => {
                    rec.rollback(mark);
                    for &gi in set {
                        failed[gi] = Some(e.clone());
                    }
                }
            }
        }
        // staging layout: every set's 8 status words, then every evaluation's values
        let mut at = Vec::with_capacity(recorded.len());
        let mut total = (statuses.len() * 32) as u64;
        for (_, _, r, _) in &recorded {
            at.push(total);
            total += (r.vals_len * 4) as u64;
        }
        let mut outcome = Ok(());
        // a failed submission's error and its items
        let mut resubmit: Option<(Error, Vec<usize>)> = None;
        if !recorded.is_empty() {
            let staged = rec.readbacks();
            let data = match rec.readback(total, "batch values") {
                Ok(rb) => {
                    for (i, st) in statuses.iter().enumerate() {
                        rec.copy(*st, rb.sub(i as u64 * 32, 32));
                    }
                    for ((_, _, r, _), &o) in recorded.iter().zip(&at) {
                        let vb = (r.vals_len * 4) as u64;
                        if vb > 0 {
                            rec.copy(r.out.sub(0, vb), rb.sub(o, vb));
                        }
                    }
                    let f = gpu.execute(rec);
                    gpu.note_wait();
                    f.await
                }
                Err(e) => Err(e),
            };
            // the submission has completed: the uploads are free again; where it failed, one may be
            // a buffer the device refused (in the browser, where allocations are not checked
            // before the submission), which must not go back to the pool
            if data.is_ok() {
                gpu.pool.give(uploads.into_inner());
            }
            match data {
                Ok(data) => {
                    let staged_words = words(&data[staged]);
                    for ((its, exprs, r, st), &o) in recorded.iter().zip(&at) {
                        let o = (o / 4) as usize;
                        let mut vals = staged_words[o..o + r.vals_len].to_vec();
                        vals.extend_from_slice(&staged_words[st * 8..st * 8 + 8]);
                        let shape = items[its[0]].src.shape();
                        // (an expression that overflows fails its own item, not the others
                        // evaluated on the same input)
                        match decode_each(&vals, r, shape, exprs, &data) {
                            Ok(mut evals) => {
                                for &i in its.iter().rev() {
                                    let rest = evals.len() - items[i].exprs.len();
                                    let mine = evals.split_off(rest).into_iter().collect();
                                    deliver(&mut txs, i, mine);
                                }
                            }
                            Err(e) => its.iter().for_each(|&i| deliver(&mut txs, i, Err(e.clone()))),
                        }
                    }
                }
                // a submission that fails ran nothing (a buffer the device refused: destroyed,
                // still mapped, of another device, which no check before it can see): where it
                // held several items, each is evaluated on its own below, and fails alone
                Err(e) if recorded.iter().map(|r| r.0.len()).sum::<usize>() > 1 => {
                    resubmit = Some((e, recorded.iter().flat_map(|r| r.0.iter().copied()).collect()));
                }
                Err(e) => {
                    for (its, _, _, _) in &recorded {
                        its.iter().for_each(|&i| deliver(&mut txs, i, Err(e.clone())));
                    }
                    outcome = Err(e);
                }
            }
        }
        // items of a submission that failed, each in a submission of its own: where none goes
        // through, the batch's error
        if let Some((e, its)) = resubmit {
            let mut any = false;
            for i in its {
                let r = on_its_own(engine, &items[i]).await;
                any |= r.is_ok();
                deliver(&mut txs, i, r);
            }
            if !any {
                outcome = Err(e);
            }
        }
        // items of sets that could not be recorded together, each in a submission of its own
        for gi in alone {
            for &i in &groups[gi].items {
                deliver(&mut txs, i, on_its_own(engine, &items[i]).await);
            }
        }
        // inputs past the limits: each in pieces, in submissions of their own
        for gi in split {
            for &i in &groups[gi].items {
                let it = &items[i];
                let r = match &it.src {
                    ItemSrc::Host(input) => host_grads(
                        engine.evaluate_split(&gpu, input, &it.exprs, wants_host(&it.grads)).await,
                        &it.grads,
                    ),
                    ItemSrc::Buffers(b) => engine.evaluate_buffers_split(&gpu, b, &it.exprs, &it.grads).await,
                };
                deliver(&mut txs, i, r);
            }
        }
        for (g, f) in groups.iter().zip(failed) {
            if let Some(e) = f {
                for &i in &g.items {
                    deliver(&mut txs, i, Err(e.clone()));
                }
            }
        }
        outcome
    }

    /// Blocking [`Batch::flush`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn flush_blocking(self) -> Result<(), Error> {
        let engine = self.engine;
        engine.block(self.flush())
    }
}

/// Sets of groups recorded together: host inputs of one shape and mode with the same
/// expressions and gradient requests (no Lovász: its sort would span the set), as many per set
/// as the device's binding size and workgroup counts allow; every other group alone.
/// Inputs with fewer logits bytes than this share upload buffers and, with others of their shape
/// and expressions, one set of passes; larger ones gain nothing from either (their passes are
/// long enough) and are uploaded as [`Engine::prepare`] does, in one copy.
const COALESCE_BYTES: u64 = 1 << 20;

/// Where a set's inputs were uploaded: (logits buffer, byte offset, target buffer, byte offset,
/// target words of one input).
type Placed = (Up, u64, Up, u64, usize);

/// An upload buffer: a pooled pack shared by small inputs, or a large input's own.
#[derive(Clone, Copy)]
enum Up {
    Pack(usize),
    Own(usize),
}

fn coalesce(
    items: &[Item<'_>],
    groups: &[Group],
    failed: &[Option<Error>],
    limits: &wgpu::Limits,
    max_binding: u64,
) -> Vec<Vec<usize>> {
    let max_groups = limits.max_compute_workgroups_per_dimension as usize;
    let mut sets: Vec<Vec<usize>> = Vec::new();
    // per open set: its key's representative group
    let mut open: Vec<usize> = Vec::new();
    let exprs_of = |g: &Group| -> Vec<(&LossExpr, bool)> {
        g.items
            .iter()
            .flat_map(|&i| items[i].exprs.iter().zip(items[i].grads.iter().map(|g| matches!(g, GradOut::Host))))
            .collect()
    };
    for (gi, g) in groups.iter().enumerate() {
        let coalescable = match &items[g.items[0]].src {
            ItemSrc::Host(i) => {
                ((i.logits().len() * 4) as u64) < COALESCE_BYTES
                    && failed[gi].is_none()
                    && !g.items.iter().any(|&i| items[i].exprs.iter().any(|e| e.has_lovasz()))
            }
            ItemSrc::Buffers(_) => false,
        };
        if !coalescable {
            sets.push(vec![gi]);
            continue;
        }
        let ItemSrc::Host(input) = &items[g.items[0]].src else { continue };
        let bytes = (input.logits().len() * 4) as u64;
        let key = |h: &Group| match &items[h.items[0]].src {
            ItemSrc::Host(o) => {
                o.shape() == input.shape()
                    && o.mode() == input.mode()
                    && o.kind() == input.kind()
                    && exprs_of(h) == exprs_of(g)
            }
            ItemSrc::Buffers(_) => false,
        };
        let found = open.iter().position(|&si| {
            let set = &sets[si];
            let k = set.len() + 1;
            // (a set is one input to the shaders: at most MAX_ELEMENTS elements, whatever the
            // binding allows; Metal's may pass 16 GiB)
            key(&groups[set[0]])
                && bytes * k as u64 <= max_binding
                && input.batch() * k <= max_groups
                && input.logits().len() * k <= crate::input::MAX_ELEMENTS
        });
        match found {
            Some(o) => sets[open[o]].push(gi),
            None => {
                open.push(sets.len());
                sets.push(vec![gi]);
            }
        }
    }
    sets
}

/// The expressions of a group's items, one item's after the other.
fn group_exprs(items: &[Item<'_>], g: &Group) -> Vec<LossExpr> {
    g.items.iter().flat_map(|&i| items[i].exprs.iter().cloned()).collect()
}

/// An item evaluated in a submission of its own (evaluate runs a batch of its own: boxed, as a
/// batch's flush awaits it).
async fn on_its_own(engine: &Engine, it: &Item<'_>) -> Reply {
    match &it.src {
        ItemSrc::Host(input) => {
            host_grads(Box::pin(engine.evaluate(input, &it.exprs, wants_host(&it.grads))).await, &it.grads)
        }
        ItemSrc::Buffers(b) => engine.evaluate_buffers(b, &it.exprs, &it.grads).await,
    }
}

/// Whether any of an item's gradients goes to the host.
fn wants_host(grads: &[GradOut<'_>]) -> bool {
    grads.iter().any(|g| matches!(g, GradOut::Host))
}

/// An item's evaluations with the gradients it did not ask for on the host dropped.
fn host_grads(r: Reply, grads: &[GradOut<'_>]) -> Reply {
    r.map(|mut evals| {
        for (ev, g) in evals.iter_mut().zip(grads) {
            if !matches!(g, GradOut::Host) {
                ev.grad = None;
            }
        }
        evals
    })
}

fn deliver(txs: &mut [Option<oneshot::Sender<Reply>>], i: usize, r: Reply) {
    if let Some(tx) = txs[i].take() {
        let _ = tx.send(r);
    }
}
