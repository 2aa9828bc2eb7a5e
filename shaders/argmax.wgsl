// The hard prediction of a softmax pixel, for the kernels that bind `logits`: the class of the
// largest of the `classes` logits at `first`, `first + stride`, ..., ties to the lowest class.
fn argmax(first: u32, stride: u32, classes: u32) -> u32 {
    var best = 0u;
    var bx = lg(first);
    for (var c = 1u; c < classes; c++) {
        let x = lg(first + c * stride);
        if x > bx {
            bx = x;
            best = c;
        }
    }
    return best;
}
