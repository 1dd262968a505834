use std::collections::BTreeMap;
use std::sync::Arc;

/// The stage serving a request: its name, the deployment that serves it (the stable one or a
/// canary) and its stage variables.
///
/// Inserted into the request's extensions by the stage router; later layers and handlers read
/// it from there. Cheap to clone.
///
/// ```
/// use tollgate_core::Stage;
///
/// let stage = Stage::new("prod")
///     .with_deployment("prod-canary")
///     .with_variable("backend", "https://orders-v2.internal");
/// assert_eq!(stage.name(), "prod");
/// assert_eq!(stage.deployment(), "prod-canary");
/// assert_eq!(stage.variable("backend"), Some("https://orders-v2.internal"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage(Arc<StageInner>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct StageInner {
    name: Arc<str>,
    deployment: Arc<str>,
    variables: BTreeMap<String, String>,
}

impl Stage {
    /// A stage whose deployment has the stage's own name and which has no variables.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        let name = name.into();
        Self(Arc::new(StageInner {
            deployment: name.clone(),
            name,
            variables: BTreeMap::new(),
        }))
    }

    /// Sets the deployment served (for example `prod-canary`).
    #[must_use]
    pub fn with_deployment(mut self, deployment: impl Into<Arc<str>>) -> Self {
        Arc::make_mut(&mut self.0).deployment = deployment.into();
        self
    }

    /// Sets one stage variable.
    #[must_use]
    pub fn with_variable(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.0)
            .variables
            .insert(name.into(), value.into());
        self
    }

    /// The stage's name (`prod`, `v2`, …).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The deployment that serves this request: the stage's own, or its canary.
    pub fn deployment(&self) -> &str {
        &self.0.deployment
    }

    /// One stage variable.
    pub fn variable(&self, name: &str) -> Option<&str> {
        self.0.variables.get(name).map(String::as_str)
    }

    /// All stage variables, sorted by name.
    pub fn variables(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .variables
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}
