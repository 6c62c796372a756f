//! Reshapes, slices, concatenation, indexing.

use super::*;

fn resolve_shape(numel: usize, shape: &[i64], from: &[usize]) -> Result<Vec<usize>, AbiError> {
    let bad = || {
        shape_err(format!(
            "cannot reshape {from:?} ({numel} elements) to {shape:?}"
        ))
    };
    let known: i64 = shape.iter().filter(|&&d| d != -1).product();
    let holes = shape.iter().filter(|&&d| d == -1).count();
    if holes > 1 || shape.iter().any(|&d| d < -1) {
        return Err(bad());
    }
    let resolved: Vec<usize> = shape
        .iter()
        .map(|&d| {
            if d == -1 {
                if known == 0 {
                    0
                } else {
                    numel / known as usize
                }
            } else {
                d as usize
            }
        })
        .collect();
    if resolved.iter().product::<usize>() != numel {
        return Err(bad());
    }
    Ok(resolved)
}

pub(super) extern "C" fn reshape_<B: AutodiffBackend>(
    x: TensorId,
    shape: RSlice<'_, i64>,
) -> AbiResult<TensorId> {
    run("reshape", || {
        let v = with::<B, _>(|s| s.get(x))??;
        let from = v.shape();
        let target = Shape::from(resolve_shape(from.iter().product(), &shape, &from)?);
        let r = match v {
            Stored::Float(t) => Stored::Float(B::float_reshape(t, target)),
            Stored::Int(t) => Stored::Int(B::int_reshape(t, target)),
            Stored::Bool(t) => Stored::Bool(B::bool_reshape(t, target)),
        };
        with::<B, _>(|s| s.insert(r))
    })
}

pub(super) extern "C" fn permute_<B: AutodiffBackend>(
    x: TensorId,
    axes: RSlice<'_, usize>,
) -> AbiResult<TensorId> {
    run("permute", || {
        let t = float::<B>(x)?;
        let rank = t.shape().num_dims();
        let mut seen = axes.to_vec();
        seen.sort_unstable();
        if seen != (0..rank).collect::<Vec<_>>() {
            return Err(shape_err(format!(
                "permute axes {:?} are not a permutation of 0..{rank}",
                axes.as_slice()
            )));
        }
        out::<B>(B::float_permute(t, &axes))
    })
}

pub(super) extern "C" fn transpose_<B: AutodiffBackend>(
    x: TensorId,
    d0: usize,
    d1: usize,
) -> AbiResult<TensorId> {
    run("transpose", || {
        out::<B>(B::float_swap_dims(float::<B>(x)?, d0, d1))
    })
}

pub(super) extern "C" fn slice_<B: AutodiffBackend>(
    x: TensorId,
    ranges: RSlice<'_, SliceRange>,
) -> AbiResult<TensorId> {
    run("slice", || {
        let v = with::<B, _>(|s| s.get(x))??;
        let slices: Vec<Slice> = ranges
            .iter()
            .map(|r| Slice {
                start: r.start as isize,
                end: if r.end == i64::MAX {
                    None
                } else {
                    Some(r.end as isize)
                },
                step: r.step as isize,
            })
            .collect();
        let r = match v {
            Stored::Float(t) => Stored::Float(B::float_slice(t, &slices)),
            Stored::Int(t) => Stored::Int(B::int_slice(t, &slices)),
            Stored::Bool(t) => Stored::Bool(B::bool_slice(t, &slices)),
        };
        with::<B, _>(|s| s.insert(r))
    })
}

fn gather_all<B: AutodiffBackend>(xs: RSlice<'_, TensorId>) -> Result<Vec<Stored<B>>, AbiError> {
    if xs.is_empty() {
        return Err(shape_err("no tensors given"));
    }
    with::<B, _>(|s| xs.iter().map(|&id| s.get(id)).collect())?
}

fn concat<B: AutodiffBackend>(items: Vec<Stored<B>>, dim: usize) -> Result<Stored<B>, AbiError> {
    let mut floats = Vec::new();
    let mut ints = Vec::new();
    for item in items {
        match item {
            Stored::Float(t) => floats.push(t),
            Stored::Int(t) => ints.push(t),
            Stored::Bool(_) => return Err(shape_err("cat/stack of bool tensors is not supported")),
        }
    }
    match (floats.is_empty(), ints.is_empty()) {
        (false, true) => Ok(Stored::Float(B::float_cat(floats, dim))),
        (true, false) => Ok(Stored::Int(B::int_cat(ints, dim))),
        _ => Err(shape_err("cat/stack of tensors with different dtypes")),
    }
}

pub(super) extern "C" fn cat_<B: AutodiffBackend>(
    xs: RSlice<'_, TensorId>,
    dim: usize,
) -> AbiResult<TensorId> {
    run("cat", || {
        let r = concat::<B>(gather_all::<B>(xs)?, dim)?;
        with::<B, _>(|s| s.insert(r))
    })
}

pub(super) extern "C" fn stack_<B: AutodiffBackend>(
    xs: RSlice<'_, TensorId>,
    dim: usize,
) -> AbiResult<TensorId> {
    run("stack", || {
        let items = gather_all::<B>(xs)?
            .into_iter()
            .map(|v| {
                let mut shape = v.shape();
                shape.insert(dim.min(shape.len()), 1);
                let shape = Shape::from(shape);
                match v {
                    Stored::Float(t) => Stored::Float(B::float_reshape(t, shape)),
                    Stored::Int(t) => Stored::Int(B::int_reshape(t, shape)),
                    Stored::Bool(t) => Stored::Bool(B::bool_reshape(t, shape)),
                }
            })
            .collect();
        let r = concat::<B>(items, dim)?;
        with::<B, _>(|s| s.insert(r))
    })
}

pub(super) extern "C" fn expand_<B: AutodiffBackend>(
    x: TensorId,
    shape: RSlice<'_, usize>,
) -> AbiResult<TensorId> {
    run("expand", || {
        let t = float::<B>(x)?;
        let target = shape.to_vec();
        alloc(&target)?;
        if broadcast_shape(&t.shape(), &target)? != target {
            return Err(shape_err(format!(
                "cannot expand {:?} to {target:?}",
                t.shape().to_vec()
            )));
        }
        out::<B>(B::float_expand(
            lift::<B>(t, target.len()),
            Shape::from(target),
        ))
    })
}

pub(super) extern "C" fn index_select_<B: AutodiffBackend>(
    x: TensorId,
    dim: usize,
    index: TensorId,
) -> AbiResult<TensorId> {
    run("index_select", || {
        let (v, i) = with::<B, _>(|s| Ok::<_, AbiError>((s.get(x)?, s.int(index)?)))??;
        let r = match v {
            Stored::Float(t) => Stored::Float(B::float_select(t, dim, i)),
            Stored::Int(t) => Stored::Int(B::int_select(t, dim, i)),
            Stored::Bool(_) => return Err(AbiError::other("index_select of a bool tensor")),
        };
        with::<B, _>(|s| s.insert(r))
    })
}

pub(super) extern "C" fn gather_<B: AutodiffBackend>(
    x: TensorId,
    dim: usize,
    index: TensorId,
) -> AbiResult<TensorId> {
    run("gather", || {
        let (t, i) = (float::<B>(x)?, with::<B, _>(|s| s.int(index))??);
        out::<B>(B::float_gather(dim, t, i))
    })
}
