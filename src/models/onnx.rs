//! ONNX models run in the process by [tract](https://github.com/sonos/tract)
//! (pure Rust: nothing is downloaded at run time), behind the `onnx` cargo
//! feature.
//!
//! An [`OnnxModel`] is a [`Model`]: the `.onnx` file is read, optimised and
//! checked in the model's load step (its `model.load` span,
//! `ml_model_loaded`, `/ready`), and each run turns the input into tensors,
//! runs the optimised plan and turns the outputs into a [`Prediction`].
//!
//! ```no_run
//! use pipelens::models::onnx::{OnnxModel, Tensor};
//!
//! let model: OnnxModel<Vec<f32>, &'static str> =
//!     OnnxModel::new("sentiment_onnx", "1.0.0", "models/sentiment/model.onnx")
//!         .input("features", |row: &Vec<f32>| Ok(Tensor::f32(vec![1, row.len()], row.clone())))
//!         .classifier("probabilities", vec!["positive", "negative", "neutral"]);
//! # drop(model);
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tract_onnx::prelude::{
    DatumType, Framework as _, InferenceFact, InferenceModelExt as _, IntoTValue as _, TDim,
    TValue, TVec, Tensor as TractTensor, TypedRunnableModel,
};
use tract_onnx::tract_hir::infer::Factoid as _;
use tract_onnx::tract_hir::internal::DimLike as _;

use crate::pipeline::{Model, ModelError, Prediction};

/// Why an ONNX model could not load or run. Converted into the runner's
/// [`ModelError`]: load errors become [`ModelError::NotLoaded`], input
/// errors [`ModelError::InvalidInput`], the rest
/// [`ModelError::Computation`]. Every message names the model's file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// The file could not be read.
    #[error("cannot read ONNX model {path}: {source}")]
    Read {
        /// The model's file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a model tract can load and optimise (truncated,
    /// not ONNX, an operator tract lacks).
    #[error("invalid ONNX model {path}: {reason}")]
    Invalid {
        /// The model's file.
        path: PathBuf,
        /// What tract reported.
        reason: String,
    },
    /// The inputs declared with [`OnnxModel::input`] are not the model's.
    #[error("ONNX model {path} has inputs {found:?}, but {declared:?} were declared")]
    Inputs {
        /// The model's file.
        path: PathBuf,
        /// The input names the model has, in its order.
        found: Vec<String>,
        /// The input names declared.
        declared: Vec<String>,
    },
    /// No output conversion was declared ([`OnnxModel::outputs`] or
    /// [`OnnxModel::classifier`]).
    #[error("ONNX model {path}: no output conversion declared (call `outputs` or `classifier`)")]
    NoOutputs {
        /// The model's file.
        path: PathBuf,
    },
    /// An input tensor does not fit the model's declared input.
    #[error("input `{input}` of ONNX model {path}: {reason}")]
    InputShape {
        /// The model's file.
        path: PathBuf,
        /// The input's name.
        input: String,
        /// What does not fit.
        reason: String,
    },
    /// tract failed while running the model.
    #[error("ONNX model {path} failed: {reason}")]
    Run {
        /// The model's file.
        path: PathBuf,
        /// What tract reported.
        reason: String,
    },
}

impl From<OnnxError> for ModelError {
    fn from(error: OnnxError) -> Self {
        match error {
            OnnxError::Read { .. }
            | OnnxError::Invalid { .. }
            | OnnxError::Inputs { .. }
            | OnnxError::NoOutputs { .. } => ModelError::NotLoaded(error.to_string()),
            OnnxError::InputShape { .. } => ModelError::InvalidInput(error.to_string()),
            OnnxError::Run { .. } => ModelError::Computation(error.to_string()),
        }
    }
}

/// The elements of a [`Tensor`], by element type.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TensorData {
    /// `float32` elements.
    F32(Vec<f32>),
    /// `float64` elements.
    F64(Vec<f64>),
    /// `int64` elements.
    I64(Vec<i64>),
    /// `int32` elements.
    I32(Vec<i32>),
}

/// An input tensor: a shape and its elements in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// A `float32` tensor of `shape` (row-major `data`).
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self {
            shape,
            data: TensorData::F32(data),
        }
    }

    /// A `float64` tensor of `shape` (row-major `data`).
    pub fn f64(shape: Vec<usize>, data: Vec<f64>) -> Self {
        Self {
            shape,
            data: TensorData::F64(data),
        }
    }

    /// An `int64` tensor of `shape` (row-major `data`).
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Self {
        Self {
            shape,
            data: TensorData::I64(data),
        }
    }

    /// An `int32` tensor of `shape` (row-major `data`).
    pub fn i32(shape: Vec<usize>, data: Vec<i32>) -> Self {
        Self {
            shape,
            data: TensorData::I32(data),
        }
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The tensor's elements.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    fn datum_type(&self) -> DatumType {
        match self.data {
            TensorData::F32(_) => DatumType::F32,
            TensorData::F64(_) => DatumType::F64,
            TensorData::I64(_) => DatumType::I64,
            TensorData::I32(_) => DatumType::I32,
        }
    }

    fn into_tract(self) -> Result<TractTensor, String> {
        let shape = self.shape;
        let result = match &self.data {
            TensorData::F32(v) => TractTensor::from_shape(&shape, v),
            TensorData::F64(v) => TractTensor::from_shape(&shape, v),
            TensorData::I64(v) => TractTensor::from_shape(&shape, v),
            TensorData::I32(v) => TractTensor::from_shape(&shape, v),
        };
        result.map_err(|e| {
            format!(
                "{} elements do not make shape {shape:?}: {e}",
                len(&self.data)
            )
        })
    }
}

fn len(data: &TensorData) -> usize {
    match data {
        TensorData::F32(v) => v.len(),
        TensorData::F64(v) => v.len(),
        TensorData::I64(v) => v.len(),
        TensorData::I32(v) => v.len(),
    }
}

/// The outputs of one run, by the names the ONNX file gives them.
pub struct Outputs<'a> {
    path: &'a Path,
    names: &'a [String],
    values: TVec<TValue>,
}

impl fmt::Debug for Outputs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outputs")
            .field("names", &self.names)
            .finish()
    }
}

/// One output tensor, borrowed: its shape and row-major elements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutputView<'a, T> {
    /// The tensor's shape.
    pub shape: &'a [usize],
    /// Its elements, row-major.
    pub data: &'a [T],
}

impl Outputs<'_> {
    /// The output names, in the model's order.
    pub fn names(&self) -> &[String] {
        self.names
    }

    /// The `float32` output `name`.
    pub fn f32(&self, name: &str) -> Result<OutputView<'_, f32>, ModelError> {
        self.view(name)
    }

    /// The `int64` output `name`.
    pub fn i64(&self, name: &str) -> Result<OutputView<'_, i64>, ModelError> {
        self.view(name)
    }

    /// The `float64` output `name`.
    pub fn f64(&self, name: &str) -> Result<OutputView<'_, f64>, ModelError> {
        self.view(name)
    }

    fn view<T: tract_onnx::prelude::Datum>(
        &self,
        name: &str,
    ) -> Result<OutputView<'_, T>, ModelError> {
        let ix = self.names.iter().position(|n| n == name).ok_or_else(|| {
            ModelError::Computation(format!(
                "ONNX model {} has no output `{name}` (it has {:?})",
                self.path.display(),
                self.names
            ))
        })?;
        let value = &self.values[ix];
        let data = value
            .try_as_plain_ram()
            .and_then(|plain| plain.as_slice::<T>())
            .map_err(|e| {
                ModelError::Computation(format!(
                    "output `{name}` of ONNX model {} is {:?}, not {:?}: {e}",
                    self.path.display(),
                    value.datum_type(),
                    T::datum_type()
                ))
            })?;
        Ok(OutputView {
            shape: value.shape(),
            data,
        })
    }
}

type ToTensor<In> = Box<dyn Fn(&In) -> Result<Tensor, ModelError> + Send + Sync>;
type ToPrediction<Out> =
    Box<dyn Fn(&Outputs<'_>) -> Result<Prediction<Out>, ModelError> + Send + Sync>;

/// A model input as the file declares it: element type and shape (`None`
/// for a symbolic dimension such as the batch size).
#[derive(Debug, Clone)]
struct InputFact {
    name: String,
    datum: DatumType,
    shape: Vec<Option<usize>>,
}

/// What the load step made: the optimised plan and what runs check.
struct Loaded {
    plan: Arc<TypedRunnableModel>,
    /// For each model input, in the model's order, the declared conversion's
    /// index.
    order: Vec<usize>,
    inputs: Vec<InputFact>,
    outputs: Vec<String>,
}

/// An ONNX model run in the process by tract: a [`Model<In, Out>`] built
/// from a `.onnx` file, the conversion of `In` into its input tensors
/// ([`OnnxModel::input`], one per model input) and the conversion of its
/// outputs into a [`Prediction<Out>`] ([`OnnxModel::classifier`], the
/// documented default for a classifier, or [`OnnxModel::outputs`]).
///
/// Nothing is read until the load step, which reads the file, optimises it,
/// checks the declared inputs against the model's and fails with an error
/// naming the file (never a panic). The optimised plan is shared by every
/// run: the model is safe to run from many threads at once.
pub struct OnnxModel<In, Out> {
    name: String,
    version: String,
    path: PathBuf,
    inputs: Vec<(String, ToTensor<In>)>,
    outputs: Option<ToPrediction<Out>>,
    loaded: OnceLock<Loaded>,
    _types: PhantomData<fn(&In) -> Out>,
}

impl<In, Out> fmt::Debug for OnnxModel<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxModel")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("path", &self.path)
            .field("loaded", &self.loaded.get().is_some())
            .finish()
    }
}

impl<In: 'static, Out: 'static> OnnxModel<In, Out> {
    /// A model named `name` (its `model_name` label) at `version`, from the
    /// ONNX file at `path`, read in the load step.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            path: path.into(),
            inputs: Vec::new(),
            outputs: None,
            loaded: OnceLock::new(),
            _types: PhantomData,
        }
    }

    /// Declares the model input `name` and how `In` becomes its tensor.
    /// Declare every input of the model; the load step checks the names.
    /// An error returned by `to_tensor` is the run's outcome.
    #[must_use]
    pub fn input(
        mut self,
        name: impl Into<String>,
        to_tensor: impl Fn(&In) -> Result<Tensor, ModelError> + Send + Sync + 'static,
    ) -> Self {
        self.inputs.push((name.into(), Box::new(to_tensor)));
        self
    }

    /// How the outputs become the prediction, for any model.
    #[must_use]
    pub fn outputs(
        mut self,
        to_prediction: impl Fn(&Outputs<'_>) -> Result<Prediction<Out>, ModelError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.outputs = Some(Box::new(to_prediction));
        self
    }

    /// The default for a classifier: the `float32` output `probabilities`
    /// holds one probability per class (shape `[1, classes.len()]` or
    /// `[classes.len()]`); the prediction is the most probable class (the
    /// first on ties), with its probability as the confidence.
    #[must_use]
    pub fn classifier(self, probabilities: impl Into<String>, classes: Vec<Out>) -> Self
    where
        Out: Clone + Send + Sync,
    {
        let output = probabilities.into();
        self.outputs(move |outputs| {
            let view = outputs.f32(&output)?;
            super::most_probable(
                &output,
                view.shape,
                view.data.iter().map(|&p| f64::from(p)),
                &classes,
            )
        })
    }

    /// The ONNX file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load_plan(&self) -> Result<Loaded, OnnxError> {
        let path = &self.path;
        let invalid = |e: &dyn fmt::Display| OnnxError::Invalid {
            path: path.clone(),
            reason: format!("{e:#}"),
        };
        if self.outputs.is_none() {
            return Err(OnnxError::NoOutputs { path: path.clone() });
        }
        let bytes = std::fs::read(path).map_err(|source| OnnxError::Read {
            path: path.clone(),
            source,
        })?;
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut bytes.as_slice())
            .map_err(|e| invalid(&e))?;
        let mut facts = Vec::new();
        let outlets = model.input_outlets().map_err(|e| invalid(&e))?.to_vec();
        for (ix, outlet) in outlets.iter().enumerate() {
            let fact = model.input_fact(ix).map_err(|e| invalid(&e))?.clone();
            let datum = fact
                .datum_type
                .concretize()
                .ok_or_else(|| OnnxError::Invalid {
                    path: path.clone(),
                    reason: format!("input {ix} has no element type"),
                })?;
            let dims: Vec<Option<TDim>> = fact.shape.dims().map(|d| d.concretize()).collect();
            // Unknown and named dimensions (such as the batch size) become
            // symbols, so one optimised plan runs any size.
            let symbolic: Vec<TDim> = dims
                .iter()
                .enumerate()
                .map(|(d, dim)| match dim {
                    Some(dim) if dim.to_usize().is_ok() => dim.clone(),
                    _ => model.sym(&format!("in{ix}_d{d}")).into(),
                })
                .collect();
            model
                .set_input_fact(ix, InferenceFact::dt_shape(datum, symbolic))
                .map_err(|e| invalid(&e))?;
            facts.push(InputFact {
                name: model.node(outlet.node).name.clone(),
                datum,
                shape: dims
                    .iter()
                    .map(|d| d.as_ref().and_then(|d| d.to_usize().ok()))
                    .collect(),
            });
        }
        let declared: Vec<String> = self.inputs.iter().map(|(n, _)| n.clone()).collect();
        let order: Option<Vec<usize>> = facts
            .iter()
            .map(|f| declared.iter().position(|d| *d == f.name))
            .collect();
        let order = match order {
            Some(order) if declared.len() == facts.len() => order,
            _ => {
                return Err(OnnxError::Inputs {
                    path: path.clone(),
                    found: facts.iter().map(|f| f.name.clone()).collect(),
                    declared,
                })
            }
        };
        let outputs = model
            .output_outlets()
            .map_err(|e| invalid(&e))?
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(str::to_owned)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        let plan = model
            .into_optimized()
            .and_then(tract_onnx::prelude::IntoRunnable::into_runnable)
            .map_err(|e| invalid(&e))?;
        Ok(Loaded {
            plan,
            order,
            inputs: facts,
            outputs,
        })
    }

    fn run_loaded(&self, loaded: &Loaded, input: &In) -> Result<Prediction<Out>, ModelError> {
        let mut values = TVec::new();
        for (fact, &ix) in loaded.inputs.iter().zip(&loaded.order) {
            let tensor = (self.inputs[ix].1)(input)?;
            self.check(fact, &tensor)?;
            let tensor = tensor
                .into_tract()
                .map_err(|reason| OnnxError::InputShape {
                    path: self.path.clone(),
                    input: fact.name.clone(),
                    reason,
                })?;
            values.push(tensor.into_tvalue());
        }
        let values = loaded.plan.run(values).map_err(|e| OnnxError::Run {
            path: self.path.clone(),
            reason: format!("{e:#}"),
        })?;
        let outputs = Outputs {
            path: &self.path,
            names: &loaded.outputs,
            values,
        };
        let to_prediction = self.outputs.as_ref().ok_or_else(|| OnnxError::NoOutputs {
            path: self.path.clone(),
        })?;
        to_prediction(&outputs)
    }

    fn check(&self, fact: &InputFact, tensor: &Tensor) -> Result<(), OnnxError> {
        let fits = tensor.datum_type() == fact.datum
            && tensor.shape.len() == fact.shape.len()
            && fact
                .shape
                .iter()
                .zip(&tensor.shape)
                .all(|(want, got)| want.is_none_or(|w| w == *got));
        if fits {
            return Ok(());
        }
        let want: Vec<String> = fact
            .shape
            .iter()
            .map(|d| d.map_or_else(|| "?".to_owned(), |d| d.to_string()))
            .collect();
        Err(OnnxError::InputShape {
            path: self.path.clone(),
            input: fact.name.clone(),
            reason: format!(
                "got {:?} of shape {:?}, the model takes {:?} of shape [{}]",
                tensor.datum_type(),
                tensor.shape,
                fact.datum,
                want.join(", ")
            ),
        })
    }
}

impl<In: 'static, Out: 'static> Model<In, Out> for OnnxModel<In, Out> {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn load(&self) -> Result<(), ModelError> {
        if self.loaded.get().is_some() {
            return Ok(());
        }
        let loaded = self.load_plan()?;
        // Loads are serialised by the runner; a lost race keeps the first.
        let _ = self.loaded.set(loaded);
        Ok(())
    }

    fn run(&self, input: &In) -> Result<Prediction<Out>, ModelError> {
        let loaded = self.loaded.get().ok_or_else(|| {
            ModelError::NotLoaded(format!("ONNX model {} has not loaded", self.path.display()))
        })?;
        self.run_loaded(loaded, input)
    }
}

#[cfg(test)]
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/support/python.rs"]
mod test_python;
#[cfg(test)]
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/support/sentiment_features.rs"]
mod test_sentiment_features;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    use super::test_python::{reference, texts};
    use super::test_sentiment_features::Features;

    const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/sentiment/model.onnx");
    const CLASSES: [&str; 3] = ["positive", "negative", "neutral"];

    fn features_model(features: Arc<Features>) -> OnnxModel<String, Vec<f32>> {
        OnnxModel::new("sentiment_onnx", "1.0.0", MODEL)
            .input("features", move |text: &String| {
                let row = features.row(text);
                Ok(Tensor::f32(vec![1, row.len()], row))
            })
            .outputs(|outputs| {
                let p = outputs.f32("probabilities")?;
                assert_eq!(p.shape, &[1, 3]);
                Ok(Prediction::new(p.data.to_vec(), 1.0))
            })
    }

    #[test]
    fn outputs_equal_onnxruntime_on_the_same_texts() {
        let texts = texts();
        assert!(texts.len() >= 50, "{} texts", texts.len());
        let (labels, expected) = reference("onnx", &texts);
        let features = Arc::new(Features::load());
        let model = features_model(features.clone());
        model.load().unwrap();
        let classifier: OnnxModel<String, &str> = OnnxModel::new("c", "1", MODEL)
            .input("features", move |text: &String| {
                let row = features.row(text);
                Ok(Tensor::f32(vec![1, row.len()], row))
            })
            .classifier("probabilities", CLASSES.to_vec());
        classifier.load().unwrap();
        let mut classes = HashSet::new();
        for ((text, want), label) in texts.iter().zip(&expected).zip(&labels) {
            let got = model.run(text).unwrap().output;
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (f64::from(*g) - w).abs() <= 1e-5,
                    "{text:?}: {got:?} vs onnxruntime {want:?}"
                );
            }
            let predicted = classifier.run(text).unwrap();
            assert_eq!(predicted.output, CLASSES[*label as usize], "{text:?}");
            let p = want[*label as usize];
            assert!((predicted.confidence - p).abs() <= 1e-5, "{text:?}");
            classes.insert(predicted.output);
        }
        assert_eq!(classes.len(), 3, "every class is predicted on some text");
    }

    #[test]
    fn a_truncated_file_fails_to_load_naming_the_file() {
        let bytes = std::fs::read(MODEL).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("truncated.onnx");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let model: OnnxModel<String, &str> = OnnxModel::new("m", "1", &path)
            .input("features", |_: &String| Ok(Tensor::f32(vec![1], vec![0.0])))
            .classifier("probabilities", CLASSES.to_vec());
        let error = model.load().unwrap_err();
        let ModelError::NotLoaded(message) = &error else {
            panic!("{error:?}")
        };
        assert!(
            message.contains("invalid ONNX model") && message.contains("truncated.onnx"),
            "{message}"
        );
        assert!(matches!(
            model.run(&String::new()),
            Err(ModelError::NotLoaded(_))
        ));

        let missing: OnnxModel<String, &str> =
            OnnxModel::new("m", "1", dir.path().join("absent.onnx"))
                .input("features", |_: &String| Ok(Tensor::f32(vec![1], vec![0.0])))
                .classifier("probabilities", CLASSES.to_vec());
        let message = missing.load().unwrap_err().to_string();
        assert!(
            message.contains("cannot read ONNX model") && message.contains("absent.onnx"),
            "{message}"
        );
    }

    #[test]
    fn a_wrong_input_name_fails_to_load_naming_both() {
        let model: OnnxModel<String, &str> = OnnxModel::new("m", "1", MODEL)
            .input("text", |_: &String| Ok(Tensor::f32(vec![1], vec![0.0])))
            .classifier("probabilities", CLASSES.to_vec());
        let message = model.load().unwrap_err().to_string();
        assert!(
            message.contains("model.onnx")
                && message.contains("[\"features\"]")
                && message.contains("[\"text\"]"),
            "{message}"
        );
    }

    #[test]
    fn a_wrong_shape_or_type_at_run_time_is_invalid_input() {
        let model: OnnxModel<Tensor, &str> = OnnxModel::new("m", "1", MODEL)
            .input("features", |t: &Tensor| Ok(t.clone()))
            .classifier("probabilities", CLASSES.to_vec());
        model.load().unwrap();
        let width = Features::load().width();
        assert!(model
            .run(&Tensor::f32(vec![1, width], vec![0.0; width]))
            .is_ok());
        for bad in [
            Tensor::f32(vec![1, width + 1], vec![0.0; width + 1]),
            Tensor::f32(vec![width], vec![0.0; width]),
            Tensor::f64(vec![1, width], vec![0.0; width]),
            Tensor::f32(vec![1, width], vec![0.0; 3]),
        ] {
            let error = model.run(&bad).unwrap_err();
            assert_eq!(error.error_type(), "invalid_input", "{bad:?}: {error}");
            assert!(error.to_string().contains("features"), "{error}");
        }
    }

    #[test]
    fn one_model_runs_from_many_threads() {
        let features = Arc::new(Features::load());
        let model = Arc::new(features_model(features));
        model.load().unwrap();
        let texts = texts();
        let expected: Vec<Vec<f32>> = texts.iter().map(|t| model.run(t).unwrap().output).collect();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for (text, want) in texts.iter().zip(&expected) {
                        assert_eq!(&model.run(text).unwrap().output, want);
                    }
                });
            }
        });
    }
}
