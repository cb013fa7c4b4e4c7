//! Adapters for models in the formats of the field, each behind its cargo
//! feature: [`onnx`] (an ONNX file run in the process by tract).

#[cfg(feature = "onnx")]
pub mod onnx;
