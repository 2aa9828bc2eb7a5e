//! Reading logits and targets from NumPy `.npy` files (any common dtype) and writing gradients.
//!
//! ```
//! let bytes = segloss_data::npy::to_bytes(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
//! let a = segloss_data::npy::read(&bytes).unwrap();
//! assert_eq!(a.shape, vec![2, 2]);
//! assert!(!a.integer);
//! assert_eq!(a.to_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
//! ```

use npyz::{DType, TypeChar, WriterBuilder};

use segloss::Error;

/// The data of one `.npy` file, widened to f64 (floats) or i64 (integers and bools; uint64 kept
/// as it is, since its upper half does not fit i64).
#[derive(Clone, Debug)]
pub struct Array {
    /// The array's shape.
    pub shape: Vec<usize>,
    /// Whether the dtype was an integer or bool type.
    pub integer: bool,
    /// The dtype as numpy writes it (`<f4`, `|u1`, ...).
    pub dtype: String,
    values: Values,
}

/// The elements, widened.
#[derive(Clone, Debug)]
enum Values {
    Floats(Vec<f64>),
    Ints(Vec<i64>),
    /// uint64: values past i64::MAX are kept, so that a label that large is named as it is
    U64(Vec<u64>),
}

impl Array {
    /// The values as f32 (integers and bools converted).
    pub fn to_f32(&self) -> Result<Vec<f32>, Error> {
        let floats = match &self.values {
            Values::Ints(v) => return Ok(v.iter().map(|&v| v as f32).collect()),
            Values::U64(v) => return Ok(v.iter().map(|&v| v as f32).collect()),
            Values::Floats(v) => v,
        };
        // a finite float64 past float32's range would become an infinity: named as it was
        floats
            .iter()
            .enumerate()
            .map(|(i, &v)| match v as f32 {
                f if f.is_infinite() && v.is_finite() => Err(Error::Input(format!(
                    "element {i} = {v:e} does not fit float32 (at most {:e} in magnitude)",
                    f32::MAX
                ))),
                f => Ok(f),
            })
            .collect()
    }

    /// The values as i64; floats must be whole numbers, and every value must fit i64 (a value
    /// past it is an error naming it: clamped, it could become the ignore index or a class).
    pub fn to_i64(&self) -> Result<Vec<i64>, Error> {
        let outside = |i: usize, v: &dyn std::fmt::Display| {
            Error::Input(format!(
                "element {i} = {v} does not fit a 64-bit signed integer ({} to {})",
                i64::MIN,
                i64::MAX
            ))
        };
        match &self.values {
            Values::Ints(v) => Ok(v.clone()),
            Values::U64(v) => {
                v.iter().enumerate().map(|(i, &x)| i64::try_from(x).map_err(|_| outside(i, &x))).collect()
            }
            Values::Floats(v) => v
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    if v.fract() != 0.0 || !v.is_finite() {
                        Err(Error::Input(format!("element {i} = {v} is not a whole number")))
                    } else if (-TWO_63..TWO_63).contains(&v) {
                        Ok(v as i64)
                    } else {
                        Err(outside(i, &format_args!("{v:e}")))
                    }
                })
                .collect(),
        }
    }
}

/// 2^63 as f64 (exact): whole floats in `-2^63 .. 2^63` fit i64.
const TWO_63: f64 = 9_223_372_036_854_775_808.0;

fn io(e: std::io::Error) -> Error {
    Error::Input(format!("not a readable .npy file: {e}"))
}

/// The shapes after every key `'shape':` of a `.npy` header, in order, read here before npyz
/// parses the header: npyz multiplies the dimensions (for the element count and the strides, both
/// ways round) without checking, which panics in a debug build and wraps in a release one. The
/// last is the header's (as in a Python dict, and npyz); the others, inside a string of another
/// key say, must not overflow either, or a forged header could hide a huge shape behind a small
/// one. Empty when the header is not one this reads (its magic or length): npyz then names the
/// problem. A readable header must write every shape as numpy does, a tuple of decimal numbers,
/// and have no escapes (numpy writes none): npyz's parser also takes hexadecimal, `1_000`, sums
/// and escaped keys, which would hide a shape from this check.
fn header_shapes(bytes: &[u8]) -> Result<Vec<Vec<u64>>, Error> {
    let text = || -> Option<&str> {
        let rest = bytes.strip_prefix(b"\x93NUMPY")?;
        let (len, start): (usize, usize) = match rest.first()? {
            1 => (usize::from(u16::from_le_bytes([*rest.get(2)?, *rest.get(3)?])), 4),
            2 | 3 => (u32::from_le_bytes(rest.get(2..6)?.try_into().ok()?) as usize, 6),
            _ => return None,
        };
        std::str::from_utf8(rest.get(start..start.checked_add(len)?)?).ok()
    };
    let Some(text) = text() else { return Ok(Vec::new()) };
    let forged =
        |why: &str| Error::Input(format!("the header {why}: a damaged or forged header ({})", text.trim_end()));
    if text.contains('\\') {
        return Err(forged("has an escape, which numpy never writes"));
    }
    // (a field of a structured dtype may be named 'shape' too, but is not followed by ':')
    let mut found: Vec<(usize, Option<Vec<u64>>)> = ["'shape'", "\"shape\""]
        .iter()
        .flat_map(|key| {
            text.match_indices(key).filter_map(|(i, _)| {
                let after = text[i + key.len()..].trim_start().strip_prefix(':')?.trim_start();
                let dims = || {
                    let close = match after.chars().next()? {
                        '(' => ')',
                        '[' => ']',
                        _ => return None,
                    };
                    let inner = &after[1..after.find(close)?];
                    inner
                        .split(',')
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                        .map(|d| d.trim_end_matches(['L', 'l']))
                        .map(|d| d.bytes().all(|b| b.is_ascii_digit()).then(|| d.parse::<u64>().ok()).flatten())
                        .collect::<Option<Vec<u64>>>()
                };
                Some((i, dims()))
            })
        })
        .collect();
    found.sort_by_key(|(i, _)| *i);
    if found.is_empty() {
        return Err(forged("names no shape as numpy writes it"));
    }
    found
        .into_iter()
        .map(|(_, d)| d.ok_or_else(|| forged("writes a shape other than as a tuple of decimal numbers")))
        .collect()
}

/// Parses a `.npy` file: f16/f32/f64, signed and unsigned integers of every width, and bool.
/// The data must be exactly what the header's shape and dtype make.
pub fn read(bytes: &[u8]) -> Result<Array, Error> {
    // the element count, checked before npyz computes it (or anything allocates for it): of every
    // shape the header names
    let shapes = header_shapes(bytes)?;
    let mut count = None;
    for dims in &shapes {
        let from_left = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let from_right = dims.iter().rev().try_fold(1u64, |a, &d| a.checked_mul(d));
        match (from_left, from_right) {
            (Some(n), Some(_)) => count = Some(n),
            _ => {
                return Err(Error::Input(format!(
                    "shape {dims:?}: the product of the dimensions overflows 64 bits (a damaged or forged header)"
                )))
            }
        }
    }
    let npy = npyz::NpyFile::new(bytes).map_err(io)?;
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| Error::Input(format!("shape {:?} does not fit this machine's memory", npy.shape())))?;
    if npy.order() == npyz::Order::Fortran {
        return Err(Error::Input("Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into()));
    }
    let DType::Plain(ts) = npy.dtype() else {
        return Err(Error::Input("structured or array dtypes are not supported".into()));
    };
    let dtype = ts.to_string();
    let size = ts.size_field();
    let unsupported = || {
        let what = match (ts.type_char(), size) {
            // numpy's longdouble (x87 extended precision padded to 16 bytes, or a quad): its
            // size field reads like a float16's at a glance
            (TypeChar::Float, 16) => format!("dtype {dtype} (numpy longdouble, a 128-bit float)"),
            _ => format!("dtype {dtype}"),
        };
        Error::Input(format!("{what} is not supported (use float16/32/64, an integer type or bool)"))
    };
    let supported = matches!(
        (ts.type_char(), size),
        (TypeChar::Float, 2 | 4 | 8) | (TypeChar::Bool, 1) | (TypeChar::Int | TypeChar::Uint, 1 | 2 | 4 | 8)
    );
    if !supported {
        return Err(unsupported());
    }
    // the data must be the header's elements exactly: fewer fail npyz's reads late, after it
    // reserved memory for all of them; more are not part of the array
    // (the header read twice, here and by npyz: the same shape, or the header is not one file's)
    if let Some(last) = shapes.last().filter(|&s| s[..] != *npy.shape()) {
        return Err(Error::Input(format!(
            "the header's shape is ambiguous ({last:?} or {:?}): a damaged or forged header",
            npy.shape()
        )));
    }
    let n = count.unwrap_or(npy.len());
    let header = npy.header().clone();
    let data: &[u8] = npy.into_inner();
    let want = n.checked_mul(size).filter(|&b| usize::try_from(b).is_ok());
    match want {
        Some(b) if b == data.len() as u64 => {}
        Some(b) if b > data.len() as u64 => {
            return Err(Error::Input(format!(
                "shape {shape:?} of {dtype} needs {b} bytes of data, the file has {}",
                data.len()
            )))
        }
        Some(b) => {
            return Err(Error::Input(format!(
                "{} bytes after the data of shape {shape:?} of {dtype} (the data should end the file)",
                data.len() as u64 - b
            )))
        }
        None => return Err(Error::Input(format!("shape {shape:?} of {dtype} does not fit this machine's memory"))),
    }
    let npy = npyz::NpyFile::with_header(header, data);
    let ints = |v: Vec<i64>| (true, Values::Ints(v));
    let (integer, values) = match (ts.type_char(), size) {
        (TypeChar::Float, 2) => {
            (false, Values::Floats(npy.into_vec::<half::f16>().map_err(io)?.into_iter().map(f64::from).collect()))
        }
        (TypeChar::Float, 4) => {
            (false, Values::Floats(npy.into_vec::<f32>().map_err(io)?.into_iter().map(f64::from).collect()))
        }
        (TypeChar::Float, 8) => (false, Values::Floats(npy.into_vec::<f64>().map_err(io)?)),
        (TypeChar::Bool, 1) => ints(npy.into_vec::<bool>().map_err(io)?.into_iter().map(i64::from).collect()),
        (TypeChar::Int, 1) => ints(npy.into_vec::<i8>().map_err(io)?.into_iter().map(i64::from).collect()),
        (TypeChar::Int, 2) => ints(npy.into_vec::<i16>().map_err(io)?.into_iter().map(i64::from).collect()),
        (TypeChar::Int, 4) => ints(npy.into_vec::<i32>().map_err(io)?.into_iter().map(i64::from).collect()),
        (TypeChar::Int, 8) => ints(npy.into_vec::<i64>().map_err(io)?),
        (TypeChar::Uint, 1) => ints(npy.into_vec::<u8>().map_err(io)?.into_iter().map(i64::from).collect()),
        (TypeChar::Uint, 2) => ints(npy.into_vec::<u16>().map_err(io)?.into_iter().map(i64::from).collect()),
        (TypeChar::Uint, 4) => ints(npy.into_vec::<u32>().map_err(io)?.into_iter().map(i64::from).collect()),
        (TypeChar::Uint, 8) => (true, Values::U64(npy.into_vec::<u64>().map_err(io)?)),
        _ => return Err(unsupported()),
    };
    Ok(Array { shape, integer, dtype, values })
}

/// Serializes data of a shape as a `.npy` file (`f32` for logits and gradients, `i64` for labels).
pub fn to_bytes<T: npyz::AutoSerialize + Copy>(data: &[T], shape: &[usize]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let shape64: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(&shape64).writer(&mut out).begin_nd().map_err(io)?;
    w.extend(data.iter().copied()).map_err(io)?;
    w.finish().map_err(io)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 1.0 `.npy` file of this header dict's `descr` and `shape` texts and these data
    /// bytes, written by hand (headers numpy would not write).
    fn crafted(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        crafted_dict(&format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"), data)
    }

    /// A version 1.0 `.npy` file of this header dict text and these data bytes.
    fn crafted_dict(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut dict = dict.to_string();
        while !(10 + dict.len() + 1).is_multiple_of(64) {
            dict.push(' ');
        }
        dict.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((dict.len() as u16).to_le_bytes());
        out.extend(dict.as_bytes());
        out.extend(data);
        out
    }

    fn error_of(r: Result<impl std::fmt::Debug, Error>) -> String {
        match r {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// (review) npyz's parser takes shapes numpy never writes (hexadecimal, `1_000`, sums) and
    /// escaped keys, which hid the shape from the overflow check: a header of 2^32 x 2^32
    /// elements and no data was read as an array of that shape with no values.
    #[test]
    fn shapes_not_written_as_numpy_writes_them_are_refused() {
        for shape in ["(1, 1, 0x100000000, 0x100000000)", "(4294967296+0, 4294967296)", "(1_000, 2)", "(2.0,)"] {
            let e = error_of(read(&crafted("<f4", shape, &[])));
            assert!(e.contains("forged") && e.contains("decimal"), "{shape}: {e}");
        }
        let escaped = crafted_dict("{'descr': '<f4', 'fortran_order': False, 'sh\\x61pe': (2,), }", &[0; 8]);
        let e = error_of(read(&escaped));
        assert!(e.contains("escape"), "{e}");
        // a decoy inside another key's string beside the real shape in hexadecimal
        let e = error_of(read(&crafted("<f4\"'shape': (1,)\"", "(0x100000000,)", &[])));
        assert!(e.contains("forged"), "{e}");
    }

    #[test]
    fn crafted_headers_read_as_numpy_writes_them() {
        let a = read(&crafted("<f4", "(2,)", le_bytes(&[1.5, -2.0]).as_slice())).unwrap();
        assert_eq!((a.shape.clone(), a.to_f32().unwrap()), (vec![2], vec![1.5, -2.0]));
        assert_eq!(header_shapes(&crafted("<f4", "(3, 4)", &[])).unwrap().pop(), Some(vec![3, 4]));
        assert_eq!(header_shapes(&crafted("<f4", "()", &[])).unwrap().pop(), Some(vec![]));
    }

    fn le_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Labels past i64 were clamped to i64::MAX: a float64 1e30 or a uint64 2^64 - 1 read as
    /// 9223372036854775807 (and matched an ignore index of that value).
    #[test]
    fn labels_outside_i64_are_errors_that_name_the_value() {
        let a = read(&to_bytes(&[3.0f64, 1e30], &[2]).unwrap()).unwrap();
        let e = error_of(a.to_i64());
        assert!(e.contains("element 1 = 1e30") && e.contains("64-bit"), "{e}");
        let a = read(&to_bytes(&[-1e19f64], &[1]).unwrap()).unwrap();
        assert!(error_of(a.to_i64()).contains("-1e19"));
        // the ends of i64 as float64: -2^63 fits, 2^63 does not
        let a = read(&to_bytes(&[-TWO_63], &[1]).unwrap()).unwrap();
        assert_eq!(a.to_i64().unwrap(), vec![i64::MIN]);
        let a = read(&to_bytes(&[TWO_63], &[1]).unwrap()).unwrap();
        assert!(error_of(a.to_i64()).contains("9.223372036854776e18"));
        let a = read(&to_bytes(&[7u64, u64::MAX], &[2]).unwrap()).unwrap();
        let e = error_of(a.to_i64());
        assert!(e.contains("element 1 = 18446744073709551615"), "{e}");
        assert!(!e.contains("9223372036854775807 ") && e.contains("to 9223372036854775807"), "{e}");
        // as a float target the value is itself, not i64::MAX
        assert_eq!(a.to_f32().unwrap()[1], u64::MAX as f32);
        let a = read(&to_bytes(&[7u64, i64::MAX as u64], &[2]).unwrap()).unwrap();
        assert_eq!(a.to_i64().unwrap(), vec![7, i64::MAX]);
    }

    /// npyz multiplies the header's dimensions unchecked: a wrapped product read a shape of
    /// 2^64 elements as an empty array (release), or panicked inside npyz (debug).
    #[test]
    fn a_shape_whose_element_count_overflows_is_refused() {
        for shape in ["(4294967296, 4294967296)", "(4294967296, 4294967296, 16)", "(0, 4294967296, 4294967296)"] {
            let e = error_of(read(&crafted("<f4", shape, &[0; 16])));
            assert!(e.contains("overflows"), "{shape}: {e}");
        }
    }

    /// A header with the key 'shape' twice: Python (and npyz) take the last, and the element
    /// count was taken from the first, so the array's shape did not match its data (four values
    /// as [4294967296, 4294967296, 4]; or four of eight read and the rest dropped).
    #[test]
    fn a_repeated_shape_key_reads_the_last_one() {
        let twice = |first: &str, last: &str, data: &[u8]| crafted("<f4", &format!("{first}, 'shape': {last}"), data);
        let a = read(&twice("(1, 1, 8)", "(1, 1, 2)", &le_bytes(&[1.0, 2.0]))).unwrap();
        assert_eq!((a.shape.clone(), a.to_f32().unwrap()), (vec![1, 1, 2], vec![1.0, 2.0]));
        let e = error_of(read(&twice("(1, 1, 8)", "(1, 1, 4)", &[0; 32])));
        assert!(e.contains("16 bytes after the data"), "{e}");
        let e = error_of(read(&twice("(1, 1, 4)", "(4294967296, 4294967296, 4)", &[0; 16])));
        assert!(e.contains("overflows") || e.contains("needs"), "{e}");
        // a huge shape followed by a small one inside another key's string (npyz takes extra
        // keys): refused before npyz multiplies the huge one (a panic in a debug build)
        let forged = crafted("<f4", "(4294967296, 4294967296, 16), 'note': \"'shape': (1,)\"", &[0; 4]);
        assert!(error_of(read(&forged)).contains("overflows"));
    }

    #[test]
    fn data_shorter_or_longer_than_the_shape_is_refused() {
        let e = error_of(read(&crafted("<f4", "(1000,)", &[0; 8])));
        assert!(e.contains("needs 4000 bytes") && e.contains("has 8"), "{e}");
        let mut bytes = to_bytes(&[1.0f32, 2.0], &[2]).unwrap();
        bytes.extend([0u8; 4]);
        let e = error_of(read(&bytes));
        assert!(e.contains("4 bytes after the data"), "{e}");
    }

    /// numpy's longdouble (`<f16` on x86-64 Linux) read as "dtype <f16", which looks like a
    /// float16.
    #[test]
    fn longdouble_is_named_as_such() {
        let e = error_of(read(&crafted("<f16", "(1,)", &[0; 16])));
        assert!(e.contains("longdouble") && e.contains("128-bit float"), "{e}");
        // other unsupported dtypes keep the plain message
        let e = error_of(read(&crafted("<c8", "(1,)", &[0; 8])));
        assert!(e.contains("dtype <c8 is not supported"), "{e}");
    }
}
