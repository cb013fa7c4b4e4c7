//! Adapters for models in the formats of the field, each behind its cargo
//! feature: [`onnx`] (an ONNX file run in the process by tract) and
//! [`open_inference`] (a model behind an Open Inference Protocol server).

#[cfg(feature = "onnx")]
pub mod onnx;
#[cfg(feature = "open-inference")]
pub mod open_inference;

/// The classifier default of both adapters: `probabilities` (one per
/// class, from `output` of `shape`) become the most probable class (the
/// first on ties) with its probability as the confidence.
#[cfg(any(feature = "onnx", feature = "open-inference"))]
fn most_probable<Out: Clone>(
    output: &str,
    shape: &[usize],
    probabilities: impl ExactSizeIterator<Item = f64>,
    classes: &[Out],
) -> Result<crate::pipeline::Prediction<Out>, crate::pipeline::ModelError> {
    if probabilities.len() != classes.len() {
        return Err(crate::pipeline::ModelError::Computation(format!(
            "output `{output}` has shape {shape:?}, expected {} class probabilities",
            classes.len()
        )));
    }
    let (best, p) = probabilities
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bi, bp), (i, p)| {
            if p > bp {
                (i, p)
            } else {
                (bi, bp)
            }
        });
    Ok(crate::pipeline::Prediction::new(classes[best].clone(), p))
}
