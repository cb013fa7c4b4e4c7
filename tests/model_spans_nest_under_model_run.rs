//! A model's own spans, sync or async, offloaded or inline, are children of
//! its `model.run` span, which sits under `stage.run` and `pipeline.run`.
//!
//! Alone in its own test binary: tracing caches each callsite's interest
//! process-wide, and a test running beside it on another thread with no
//! subscriber can make it cache "never" for the runner's spans.

use std::time::Duration;

use pipelens::{AsyncModel, Execution, Model, ModelError, Pipeline, Prediction, Stage};
use tracing::Instrument as _;

/// Input and output of the test pipeline.
type Words = Vec<String>;

/// A span's name and its parent's name.
type NameAndParent = (String, Option<String>);

/// Collects, for every span, its name and its parent's name.
#[derive(Clone, Default)]
struct Parents(std::sync::Arc<std::sync::Mutex<Vec<NameAndParent>>>);

impl<S> tracing_subscriber::Layer<S> for Parents
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.name().to_owned());
        self.0
            .lock()
            .unwrap()
            .push((attrs.metadata().name().to_owned(), parent));
    }
}

/// A sync model and an async model that open spans of their own.
struct Chatty;

impl Model<Words, Words> for Chatty {
    fn name(&self) -> &str {
        "chatty_sync"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn run(&self, input: &Words) -> Result<Prediction<Words>, ModelError> {
        let _inner = tracing::info_span!("sync.inner").entered();
        Ok(Prediction::new(input.clone(), 0.5))
    }
}

impl AsyncModel<Words, Words> for Chatty {
    fn name(&self) -> &str {
        "chatty_async"
    }
    fn version(&self) -> &str {
        "1"
    }
    async fn run(&self, input: &Words) -> Result<Prediction<Words>, ModelError> {
        async { tokio::task::yield_now().await }
            .instrument(tracing::info_span!("async.inner"))
            .await;
        Ok(Prediction::new(input.clone(), 0.5))
    }
}

#[test]
fn a_models_own_spans_are_children_of_its_model_run_span() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let parents = Parents::default();
    let subscriber = tracing_subscriber::registry().with(parents.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    for execution in [Execution::Offload, Execution::Inline] {
        // A current-thread runtime keeps the subscriber (a thread default)
        // on the polling thread; offloaded models run on the blocking pool,
        // where the span carries its own dispatcher.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pipeline = Pipeline::builder("spans")
            .execution(execution)
            .stage(
                Stage::parallel("both")
                    .model(Chatty)
                    .async_model(Chatty)
                    .timeout(Duration::from_secs(5)),
            )
            .build()
            .unwrap();
        runtime.block_on(pipeline.run(Vec::new())).unwrap();
        let seen = parents.0.lock().unwrap().clone();
        for (inner, expected) in [
            ("sync.inner", Some("model.run")),
            ("async.inner", Some("model.run")),
            ("model.run", Some("stage.run")),
            ("stage.run", Some("pipeline.run")),
        ] {
            let found = seen.iter().find(|(n, _)| n == inner);
            assert_eq!(
                found.map(|(_, p)| p.as_deref()),
                Some(expected),
                "{execution:?}: {seen:?}"
            );
        }
        parents.0.lock().unwrap().clear();
    }
}
