// Target words, for the kernels that bind `tgt` and `P`: the caller's ignore index (buffer
// inputs) becomes INVALID, so the rest of a kernel sees one convention.

fn tword(i: u32) -> u32 {
    let w = tgt[i];
    if P.has_ignore != 0u && w == P.ignore {
        return INVALID;
    }
    return w;
}
