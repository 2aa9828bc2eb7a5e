// Target words, for the kernels that bind `tgt` and `P`: the caller's ignore index (buffer
// inputs) becomes INVALID, so the rest of a kernel sees one convention. Branch-free: a CPU
// adapter runs a branch on lanes as masked code on both sides.

fn tword(i: u32) -> u32 {
    return tword_of(tgt_at(i));
}

// A raw target word w with the ignore index made INVALID (has_ignore 2: the index is f32 0 of
// dense targets, and -0.0 is ignored too, as a host input's value comparison ignores it).
fn tword_of(w: u32) -> u32 {
    return select(w, INVALID, is_ignore_word(w));
}

fn is_ignore_word(w: u32) -> bool {
    return P.has_ignore != 0u && (w == P.ignore || (P.has_ignore == 2u && w == 0x80000000u));
}
