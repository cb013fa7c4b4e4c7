//! Adapters for models in the formats of the field, each behind its cargo
//! feature: [`onnx`] (an ONNX file run in the process by tract) and
//! [`open_inference`] (a model behind an Open Inference Protocol server).

#[cfg(feature = "onnx")]
pub mod onnx;
#[cfg(feature = "open-inference")]
pub mod open_inference;
