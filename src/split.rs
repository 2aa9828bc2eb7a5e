//! Inputs past a device's limits: a host batch cut into pieces that each fit one binding, by
//! images first, then (an image larger than a binding) by ranges of pixels. Every loss except
//! Lovász is a function of per-(image, class) sums, which add up over pieces; the gradient of a
//! piece reads the coefficients of its own image(s) among those of the whole batch.

use std::borrow::Cow;

use crate::error::Error;
use crate::gpu::INVALID;
use crate::input::{Input, Target};

/// A piece of a batch `[N, C, S]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Images `from..to`, whole.
    Images { from: usize, to: usize },
    /// Pixels `from..to` of one image (all its channels).
    Pixels { image: usize, from: usize, to: usize },
}

impl Piece {
    /// Images the piece's data holds (1 for a range of pixels).
    pub fn images(&self) -> usize {
        match *self {
            Piece::Images { from, to } => to - from,
            Piece::Pixels { .. } => 1,
        }
    }

    /// The first image of the batch it belongs to.
    pub fn first_image(&self) -> usize {
        match *self {
            Piece::Images { from, .. } => from,
            Piece::Pixels { image, .. } => image,
        }
    }

    /// Pixels per image of the piece's data.
    pub fn pixels(&self, s: usize) -> usize {
        match *self {
            Piece::Images { .. } => s,
            Piece::Pixels { from, to, .. } => to - from,
        }
    }
}

impl Piece {
    /// Element `i` of the piece's own `[images][planes][pixels]` array as an element of the
    /// batch's `[n][planes][s]` array.
    pub fn global(&self, i: usize, planes: usize, s: usize) -> usize {
        match *self {
            Piece::Images { from, .. } => from * planes * s + i,
            Piece::Pixels { image, from, to } => {
                let len = to - from;
                (image * planes + i / len) * s + from + i % len
            }
        }
    }

    /// The runs of the batch's `[n][planes][s]` array the piece holds, in the piece's order:
    /// (first element in the batch, first element in the piece, elements).
    pub fn runs(&self, planes: usize, s: usize) -> Vec<(usize, usize, usize)> {
        match *self {
            Piece::Images { from, to } => vec![(from * planes * s, 0, (to - from) * planes * s)],
            Piece::Pixels { image, from, to } => {
                let len = to - from;
                (0..planes).map(|p| ((image * planes + p) * s + from, p * len, len)).collect()
            }
        }
    }
}

/// The most pieces an input is split into.
pub(crate) const MAX_PIECES: usize = 1 << 16;

/// Cuts `[n, c, s]` f32 logits into pieces of at most `limit` bytes and `max_images` images
/// each: runs of whole images (as few pieces as fit, of balanced sizes), or, when one image does
/// not fit, ranges of its pixels; more than [`MAX_PIECES`] is a limit error.
pub(crate) fn pieces(n: usize, c: usize, s: usize, limit: u64, max_images: usize) -> Result<Vec<Piece>, Error> {
    // a binding limit set far below the device's (EngineOptions::max_binding_bytes) cannot make
    // more pieces than this: each is a submission of its own
    let too_many = |count: usize| Error::Limit {
        what: format!("pieces of an input of {n} x {c} x {s} elements at a binding limit of {limit} bytes (raise it)"),
        needed: count as u64,
        max: MAX_PIECES as u64,
    };
    let image = (c * s * 4) as u64;
    if image <= limit {
        let per = ((limit / image).max(1) as usize).min(max_images.max(1));
        let count = n.div_ceil(per);
        if count > MAX_PIECES {
            return Err(too_many(count));
        }
        // balanced: the first n % count pieces get one image more
        let (q, r) = (n / count, n % count);
        let mut out = Vec::with_capacity(count);
        let mut at = 0;
        for i in 0..count {
            let len = q + usize::from(i < r);
            out.push(Piece::Images { from: at, to: at + len });
            at += len;
        }
        return Ok(out);
    }
    let per = (limit / (c as u64 * 4)) as usize;
    if per == 0 {
        return Err(Error::Limit {
            what: format!("one pixel of {c} channels (its logits must fit one binding)"),
            needed: c as u64 * 4,
            max: limit,
        });
    }
    let count = s.div_ceil(per);
    if n.saturating_mul(count) > MAX_PIECES {
        return Err(too_many(n.saturating_mul(count)));
    }
    let (q, r) = (s / count, s % count);
    let mut out = Vec::with_capacity(n * count);
    for image in 0..n {
        let mut at = 0;
        for i in 0..count {
            let len = q + usize::from(i < r);
            out.push(Piece::Pixels { image, from: at, to: at + len });
            at += len;
        }
    }
    Ok(out)
}

/// Elements `[planes][s]` of the piece from a `[n][planes][s]` array: a slice for whole images,
/// a gather of each plane's pixel range otherwise.
fn gather<T: Clone>(data: &[T], planes: usize, s: usize, piece: Piece) -> Cow<'_, [T]> {
    match piece {
        Piece::Images { from, to } => Cow::Borrowed(&data[from * planes * s..to * planes * s]),
        Piece::Pixels { image, from, to } => Cow::Owned(
            (0..planes)
                .flat_map(|p| data[(image * planes + p) * s + from..(image * planes + p) * s + to].iter().cloned())
                .collect(),
        ),
    }
}

/// The logits of a piece of a host input, and its target words (class indices, or the f32 bits
/// of dense values; the ignore index as [`INVALID`]), in the layout of a batch of its own.
pub(crate) fn piece_data<'i>(input: &'i Input<'_>, piece: Piece) -> (Cow<'i, [f32]>, Vec<u32>) {
    let (c, s) = (input.classes(), input.spatial());
    let logits = gather(input.logits(), c, s, piece);
    let words = match input.target() {
        Target::Dense(t) => {
            let ign = input.ignore_index().map(|k| k as f32);
            gather(t, c, s, piece).iter().map(|&v| if Some(v) == ign { INVALID } else { v.to_bits() }).collect()
        }
        Target::Labels(t) => gather(t, 1, s, piece)
            .iter()
            .map(|&v| if Some(v) == input.ignore_index() { INVALID } else { v as u32 })
            .collect(),
    };
    (logits, words)
}

/// Puts the gradient of a piece (its own `[images][c][pixels]` layout) into the gradient of
/// the whole batch `[n][c][s]`.
pub(crate) fn scatter(whole: &mut [f32], part: &[f32], c: usize, s: usize, piece: Piece) {
    match piece {
        Piece::Images { from, to } => whole[from * c * s..to * c * s].copy_from_slice(part),
        Piece::Pixels { image, from, to } => {
            let len = to - from;
            for ch in 0..c {
                let at = (image * c + ch) * s + from;
                whole[at..at + len].copy_from_slice(&part[ch * len..(ch + 1) * len]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_batch_once_within_the_limit() {
        for &(n, c, s, limit) in
            &[(7usize, 3usize, 100usize, 4000u64), (5, 2, 64, 512), (1, 21, 1000, 21 * 4 * 300), (3, 1, 10, 1 << 20)]
        {
            let ps = pieces(n, c, s, limit, usize::MAX).unwrap();
            let mut seen = vec![0usize; n * s];
            for p in &ps {
                assert!((p.images() * c * p.pixels(s) * 4) as u64 <= limit, "{p:?} over {limit}");
                match *p {
                    Piece::Images { from, to } => (from * s..to * s).for_each(|i| seen[i] += 1),
                    Piece::Pixels { image, from, to } => (from..to).for_each(|i| seen[image * s + i] += 1),
                }
            }
            assert!(seen.iter().all(|&k| k == 1), "{n}x{c}x{s} under {limit}: {ps:?}");
        }
        assert!(matches!(pieces(1, 4, 10, 8, usize::MAX), Err(Error::Limit { .. })));
        // a limit far below the input: a limit error, not millions of pieces
        match pieces(1 << 20, 1, 1 << 8, 4, usize::MAX) {
            Err(Error::Limit { needed, max, .. }) => assert!(needed > max && max == MAX_PIECES as u64),
            other => panic!("{other:?}"),
        }
        assert!(matches!(pieces(1, 1, 1 << 28, 4, usize::MAX), Err(Error::Limit { .. })));
        assert_eq!(pieces(1, 1, MAX_PIECES, 4, usize::MAX).unwrap().len(), MAX_PIECES);
        // at most max_images images a piece, balanced, whatever the bytes allow
        let ps = pieces(10, 2, 4, 1 << 20, 3).unwrap();
        let sizes: Vec<usize> = ps.iter().map(Piece::images).collect();
        assert_eq!(sizes, [3, 3, 2, 2]);
    }

    #[test]
    fn runs_and_global_indices_agree_with_the_gather() {
        let (n, c, s) = (2, 3, 10);
        let data: Vec<usize> = (0..n * c * s).collect();
        for p in pieces(n, c, s, (c * 4 * 4) as u64, usize::MAX)
            .unwrap()
            .into_iter()
            .chain(pieces(n, c, s, 1 << 20, usize::MAX).unwrap())
        {
            let got = gather(&data, c, s, p);
            for (i, &v) in got.iter().enumerate() {
                assert_eq!(p.global(i, c, s), v);
            }
            for (g, l, len) in p.runs(c, s) {
                assert_eq!(&got[l..l + len], &data[g..g + len]);
            }
        }
    }

    #[test]
    fn gather_then_scatter_gives_the_batch_back() {
        let (n, c, s) = (2, 3, 10);
        let data: Vec<f32> = (0..n * c * s).map(|i| i as f32).collect();
        let mut back = vec![0f32; data.len()];
        for p in pieces(n, c, s, (c * 4 * 4) as u64, usize::MAX).unwrap() {
            scatter(&mut back, &gather(&data, c, s, p), c, s, p);
        }
        assert_eq!(back, data);
    }
}
