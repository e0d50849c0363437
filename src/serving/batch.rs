//! Dynamic batching's tensor work, shared by the compute pool ([`super::executor`]) and the
//! shadow runner ([`super::shadow`]): which requests can share a call, stacking their inputs
//! along the leading (batch) dimension, and splitting the call's outputs back by rows.

use tract_onnx::prelude::{TValue, TVec, Tensor, TractResult};

/// The rows of a request: the first dimension of its first input (0 for a scalar input, which
/// never batches).
pub fn rows(inputs: &[TValue]) -> usize {
    inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(0)
}

/// Whether two requests' inputs can be stacked: as many inputs, each of the same shape past the
/// leading dimension.
pub fn same_trailing_shapes(a: &[TValue], b: &[TValue]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.shape().get(1..) == y.shape().get(1..))
}

/// The requests' inputs stacked input by input along the leading dimension, in order.
///
/// # Errors
/// tract's, when the inputs do not stack (another type or trailing shape).
pub fn stack(requests: &[&[TValue]]) -> TractResult<TVec<TValue>> {
    (0..requests.first().map_or(0, |r| r.len()))
        .map(|i| {
            let parts: Vec<&Tensor> = requests.iter().map(|r| &*r[i]).collect();
            Tensor::stack_tensors(0, &parts).map(TValue::from)
        })
        .collect()
}

/// A batched call's `outputs` split back into each request's share: `rows[k]` rows for the
/// k-th request, in order.
///
/// # Errors
/// tract's, when an output has fewer rows than the requests together.
pub fn split(outputs: &[TValue], rows: &[usize]) -> TractResult<Vec<TVec<TValue>>> {
    let mut parts: Vec<TVec<TValue>> = rows.iter().map(|_| TVec::new()).collect();
    for output in outputs {
        let mut start = 0;
        for (&n, part) in rows.iter().zip(parts.iter_mut()) {
            part.push(TValue::from(output.slice(0, start, start + n)?));
            start += n;
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: usize, cols: usize, first: f32) -> TValue {
        let values: Vec<f32> = (0..rows * cols).map(|v| first + v as f32).collect();
        TValue::from(Tensor::from_shape(&[rows, cols], &values).unwrap())
    }

    #[test]
    fn stacked_requests_split_back_into_their_own_rows() {
        let (a, b) = (tvec_of(t(1, 3, 0.0)), tvec_of(t(2, 3, 10.0)));
        assert!(same_trailing_shapes(&a, &b));
        assert!(!same_trailing_shapes(&a, &tvec_of(t(1, 4, 0.0))));
        assert_eq!((rows(&a), rows(&b), rows(&[])), (1, 2, 0));
        let stacked = stack(&[&a, &b]).unwrap();
        assert_eq!(stacked[0].shape(), &[3, 3]);
        let parts = split(&stacked, &[1, 2]).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0][0], a[0]);
        assert_eq!(parts[1][0], b[0]);
        assert!(split(&stacked, &[2, 2]).is_err(), "more rows than the output has");
        assert!(stack(&[&a, &tvec_of(t(1, 4, 0.0))]).is_err());
    }

    fn tvec_of(v: TValue) -> TVec<TValue> {
        std::iter::once(v).collect()
    }
}
