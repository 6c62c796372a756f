//! Handles, creation, read-back and casts.

use super::*;

pub(super) extern "C" fn release_<B: AutodiffBackend>(x: TensorId) {
    let _ = with::<B, _>(|s| s.remove(x));
}

pub(super) extern "C" fn clone_<B: AutodiffBackend>(x: TensorId) -> AbiResult<TensorId> {
    run("clone", || with::<B, _>(|s| s.get(x).map(|v| s.insert(v)))?)
}

pub(super) extern "C" fn shape_<B: AutodiffBackend>(x: TensorId) -> AbiResult<RVec<usize>> {
    run("shape", || {
        with::<B, _>(|s| s.get(x).map(|v| v.shape().into()))?
    })
}

pub(super) extern "C" fn dtype_<B: AutodiffBackend>(x: TensorId) -> AbiResult<DType> {
    run("dtype", || with::<B, _>(|s| s.get(x).map(|v| v.dtype()))?)
}

pub(super) extern "C" fn device_<B: AutodiffBackend>(x: TensorId) -> AbiResult<RString> {
    run("device", || {
        with::<B, _>(|s| {
            s.get(x)
                .map(|_| RString::from(format!("{:?}", s.device).to_lowercase()))
        })?
    })
}

pub(super) extern "C" fn from_f32_<B: AutodiffBackend>(
    data: RSlice<'_, f32>,
    shape: RSlice<'_, usize>,
) -> AbiResult<TensorId> {
    run("from_f32", || {
        check_len(data.len(), &shape)?;
        with::<B, _>(|s| {
            let t = float_data::<B>(s, data.to_vec(), &shape);
            s.insert(Stored::Float(t))
        })
    })
}

pub(super) extern "C" fn from_i64_<B: AutodiffBackend>(
    data: RSlice<'_, i64>,
    shape: RSlice<'_, usize>,
) -> AbiResult<TensorId> {
    run("from_i64", || {
        check_len(data.len(), &shape)?;
        with::<B, _>(|s| {
            let d = TensorData::new(data.to_vec(), shape.to_vec())
                .convert_dtype(BurnDType::from(s.settings.int_dtype));
            let t = B::int_from_data(d, &s.device);
            s.insert(Stored::Int(t))
        })
    })
}

fn read<B: AutodiffBackend>(x: TensorId) -> Result<TensorData, AbiError> {
    let v = with::<B, _>(|s| s.get(x))??;
    let data = match v {
        Stored::Float(t) => read_sync(B::float_into_data(t)),
        Stored::Int(t) => read_sync(B::int_into_data(t)),
        Stored::Bool(t) => read_sync(B::bool_into_data(t)),
    };
    data.map_err(|e| AbiError::other(format!("reading tensor data failed: {e:?}")))
}

pub(super) extern "C" fn to_f32_<B: AutodiffBackend>(x: TensorId) -> AbiResult<RVec<f32>> {
    run("to_f32", || {
        let d = read::<B>(x)?;
        Ok(match d.dtype {
            BurnDType::Bool(_) => d.iter::<bool>().map(|b| b as u8 as f32).collect(),
            _ => d.iter::<f32>().collect(),
        })
    })
}

pub(super) extern "C" fn to_i64_<B: AutodiffBackend>(x: TensorId) -> AbiResult<RVec<i64>> {
    run("to_i64", || {
        let d = read::<B>(x)?;
        Ok(match d.dtype {
            BurnDType::Bool(_) => d.iter::<bool>().map(|b| b as i64).collect(),
            _ => d.iter::<i64>().collect(),
        })
    })
}

pub(super) extern "C" fn full_<B: AutodiffBackend>(
    shape: RSlice<'_, usize>,
    value: f64,
    dtype: DType,
) -> AbiResult<TensorId> {
    run("full", || {
        let n = alloc(&shape)?;
        with::<B, _>(|s| {
            let stored = match dtype {
                DType::F32 => Stored::Float(float_data::<B>(s, vec![value as f32; n], &shape)),
                DType::I64 => {
                    let d = TensorData::new(vec![value as i64; n], shape.to_vec())
                        .convert_dtype(BurnDType::from(s.settings.int_dtype));
                    Stored::Int(B::int_from_data(d, &s.device))
                }
                DType::Bool => {
                    let d = TensorData::new(vec![value != 0.0; n], shape.to_vec())
                        .convert_dtype(BurnDType::from(s.settings.bool_dtype));
                    Stored::Bool(B::bool_from_data(d, &s.device))
                }
            };
            s.insert(stored)
        })
    })
}

pub(super) extern "C" fn random_<B: AutodiffBackend>(
    shape: RSlice<'_, usize>,
    dist: Distribution,
    a: f32,
    b: f32,
) -> AbiResult<TensorId> {
    run("random", || {
        let n = alloc(&shape)?;
        with::<B, _>(|s| {
            let values: Vec<f32> = match dist {
                Distribution::NORMAL => {
                    let d =
                        Normal::new(a, b.max(0.0)).map_err(|e| AbiError::other(e.to_string()))?;
                    (0..n).map(|_| d.sample(&mut s.rng)).collect()
                }
                Distribution::UNIFORM => {
                    let d = Uniform::new(a, b)
                        .map_err(|e| AbiError::other(format!("uniform({a}, {b}): {e}")))?;
                    (0..n).map(|_| d.sample(&mut s.rng)).collect()
                }
                other => return Err(unknown("distribution", other.0)),
            };
            let t = float_data::<B>(s, values, &shape);
            Ok(s.insert(Stored::Float(t)))
        })?
    })
}

pub(super) extern "C" fn cast_<B: AutodiffBackend>(
    x: TensorId,
    dtype: DType,
) -> AbiResult<TensorId> {
    run("cast", || {
        with::<B, _>(|s| {
            let st = &s.settings;
            let v = s.get(x)?;
            let casted = match (v, dtype) {
                (v @ Stored::Float(_), DType::F32)
                | (v @ Stored::Int(_), DType::I64)
                | (v @ Stored::Bool(_), DType::Bool) => v,
                (Stored::Float(t), DType::I64) => Stored::Int(B::float_into_int(t, st.int_dtype)),
                (Stored::Float(t), DType::Bool) => Stored::Bool(B::float_not_equal_elem(
                    t,
                    Scalar::from(0.0f32),
                    st.bool_dtype,
                )),
                (Stored::Int(t), DType::F32) => Stored::Float(B::int_into_float(t, st.float_dtype)),
                (Stored::Int(t), DType::Bool) => {
                    Stored::Bool(B::int_not_equal_elem(t, Scalar::from(0i64), st.bool_dtype))
                }
                (Stored::Bool(t), DType::F32) => {
                    Stored::Float(B::bool_into_float(t, st.float_dtype))
                }
                (Stored::Bool(t), DType::I64) => Stored::Int(B::bool_into_int(t, st.int_dtype)),
            };
            Ok(s.insert(casted))
        })?
    })
}
