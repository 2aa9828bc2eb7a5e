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

/// The data of one `.npy` file, widened to f64 (floats) or i64 (integers and bools).
#[derive(Clone, Debug)]
pub struct Array {
    /// The array's shape.
    pub shape: Vec<usize>,
    /// Whether the dtype was an integer or bool type.
    pub integer: bool,
    /// The dtype as numpy writes it (`<f4`, `|u1`, ...).
    pub dtype: String,
    floats: Vec<f64>,
    ints: Vec<i64>,
}

impl Array {
    /// The values as f32 (integers and bools converted).
    pub fn to_f32(&self) -> Result<Vec<f32>, Error> {
        if self.integer {
            return Ok(self.ints.iter().map(|&v| v as f32).collect());
        }
        // a finite float64 past float32's range would become an infinity: named as it was
        self.floats
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

    /// The values as i64; floats must be whole numbers.
    pub fn to_i64(&self) -> Result<Vec<i64>, Error> {
        if self.integer {
            return Ok(self.ints.clone());
        }
        self.floats
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if v.fract() == 0.0 && v.is_finite() {
                    Ok(v as i64)
                } else {
                    Err(Error::Input(format!("element {i} = {v} is not a whole number")))
                }
            })
            .collect()
    }
}

fn io(e: std::io::Error) -> Error {
    Error::Input(format!("not a readable .npy file: {e}"))
}

/// Parses a `.npy` file: f16/f32/f64, signed and unsigned integers of every width, and bool.
pub fn read(bytes: &[u8]) -> Result<Array, Error> {
    let npy = npyz::NpyFile::new(bytes).map_err(io)?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if npy.order() == npyz::Order::Fortran {
        return Err(Error::Input("Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into()));
    }
    let DType::Plain(ts) = npy.dtype() else {
        return Err(Error::Input("structured or array dtypes are not supported".into()));
    };
    let dtype = ts.to_string();
    let size = ts.size_field();
    let unsupported =
        || Error::Input(format!("dtype {dtype} is not supported (use float16/32/64, an integer type or bool)"));
    let (integer, floats, ints) = match (ts.type_char(), size) {
        (TypeChar::Float, 2) => {
            (false, npy.into_vec::<half::f16>().map_err(io)?.into_iter().map(f64::from).collect(), vec![])
        }
        (TypeChar::Float, 4) => {
            (false, npy.into_vec::<f32>().map_err(io)?.into_iter().map(f64::from).collect(), vec![])
        }
        (TypeChar::Float, 8) => (false, npy.into_vec::<f64>().map_err(io)?, vec![]),
        (TypeChar::Bool, 1) => (true, vec![], npy.into_vec::<bool>().map_err(io)?.into_iter().map(i64::from).collect()),
        (TypeChar::Int, 1) => (true, vec![], npy.into_vec::<i8>().map_err(io)?.into_iter().map(i64::from).collect()),
        (TypeChar::Int, 2) => (true, vec![], npy.into_vec::<i16>().map_err(io)?.into_iter().map(i64::from).collect()),
        (TypeChar::Int, 4) => (true, vec![], npy.into_vec::<i32>().map_err(io)?.into_iter().map(i64::from).collect()),
        (TypeChar::Int, 8) => (true, vec![], npy.into_vec::<i64>().map_err(io)?),
        (TypeChar::Uint, 1) => (true, vec![], npy.into_vec::<u8>().map_err(io)?.into_iter().map(i64::from).collect()),
        (TypeChar::Uint, 2) => (true, vec![], npy.into_vec::<u16>().map_err(io)?.into_iter().map(i64::from).collect()),
        (TypeChar::Uint, 4) => (true, vec![], npy.into_vec::<u32>().map_err(io)?.into_iter().map(i64::from).collect()),
        (TypeChar::Uint, 8) => {
            let v = npy.into_vec::<u64>().map_err(io)?;
            (true, vec![], v.into_iter().map(|x| x.min(i64::MAX as u64) as i64).collect())
        }
        _ => return Err(unsupported()),
    };
    Ok(Array { shape, integer, dtype, floats, ints })
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
